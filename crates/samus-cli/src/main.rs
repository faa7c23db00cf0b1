//! `samus`: segment ultrasound images with SAMUS from the command line.

#[macro_use]
mod support;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cmd::*;
use support::device::{parse_device, ComputeDevice};
use support::RunContext;

/// Segment ultrasound images with SAMUS (SAM adapted to ultrasound).
#[derive(Debug, Parser)]
#[command(name = "samus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads for the tensor kernels and data loading (default: every core;
    /// RAYON_NUM_THREADS is honoured as well).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Compute device: `cpu`, or `cuda[:N]` in a build with CUDA support.
    #[arg(long, global = true, value_name = "cpu|cuda[:N]", default_value = "cpu", value_parser = parse_device)]
    device: ComputeDevice,
}

/// `--threads` above this many per core is refused: the kernels split their work
/// per thread, and 256 threads on 2 cores made one image take 8 s instead of 0.7 s.
const MAX_THREADS_PER_CORE: usize = 4;

/// Applies `--threads` and opens `--device` before any work starts: the context
/// every command runs in.
fn configure(cli: &Cli) -> anyhow::Result<RunContext> {
    // A `SAMUS_ISA` that names no instruction set, or one this CPU lacks, is an
    // error here rather than silently ignored by the kernels.
    samus_core::cpu::Isa::from_env()?;
    let device = support::device::open(cli.device)?;
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let limit = MAX_THREADS_PER_CORE * cores;
        if usize::from(n) > limit {
            anyhow::bail!(
                "--threads {n}: at most {limit} here ({MAX_THREADS_PER_CORE} per core, {cores} cores); \
                 more threads than cores only slow the kernels down"
            );
        }
        // Read by rayon's global pool and by candle's matrix products when they first
        // run; no thread exists yet. (candle's element-wise pool stays as
        // `candle_on_the_calling_thread` left it.)
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    Ok(RunContext { device })
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything offline in a few minutes: generate synthetic data, train the tiny
    /// model, evaluate it and draw overlays.
    #[command(after_help = demo::EXAMPLES)]
    Demo(demo::DemoArgs),
    /// Segment one image from point and/or box prompts.
    #[command(after_help = segment::EXAMPLES)]
    Segment(segment::SegmentArgs),
    /// Segment images without prompts with AutoSAMUS (batched, with a progress bar).
    #[command(after_help = auto::EXAMPLES)]
    Auto(auto::AutoArgs),
    /// Follow a structure through a cine loop (multi-frame DICOM, video, frame
    /// folder): masks, an animated overlay, areas over time.
    #[command(after_help = track::EXAMPLES)]
    Track(track::TrackArgs),
    /// Click-to-segment in the browser: label a folder of scans, saved in the US30K layout.
    #[command(after_help = serve::EXAMPLES)]
    Serve(serve::ServeArgs),
    /// Import public ultrasound releases or folders into the US30K layout, and check it.
    #[command(after_help = data::EXAMPLES)]
    Data(data::DataArgs),
    /// Score a folder of predicted masks against ground truth (Dice, IoU, accuracy,
    /// sensitivity, specificity, HD, HD95).
    #[command(after_help = metrics::EXAMPLES)]
    Metrics(metrics::MetricsArgs),
    /// Write a synthetic ultrasound dataset (breast, thyroid, echocardiography) in the
    /// US30K layout: the offline test bed for training and evaluation.
    #[command(after_help = synth::EXAMPLES)]
    Synth(synth::SynthArgs),
    /// Train SAMUS or AutoSAMUS on a dataset in the US30K layout.
    #[command(after_help = train::EXAMPLES)]
    Train(train::TrainArgs),
    /// Evaluate a checkpoint on a split: per-dataset Dice, IoU, accuracy, SE, SP, HD, HD95.
    #[command(after_help = eval::EXAMPLES)]
    Eval(eval::EvalArgs),
    /// Convert a SAM or SAMUS checkpoint (.pth or safetensors) to a SAMUS safetensors file.
    #[command(after_help = convert::EXAMPLES)]
    Convert(convert::ConvertArgs),
    /// Describe a checkpoint: kind, configuration, parameter counts, missing and
    /// unexpected tensors.
    #[command(after_help = info::EXAMPLES)]
    Info(info::InfoArgs),
    /// Time SAMUS here: encoder, decoder per prompt, images/s, peak memory.
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = completions::EXAMPLES)]
    Completions(completions::CompletionsArgs),
}

/// Keeps tensor buffers in the heap instead of mapping fresh pages for each: glibc
/// maps every allocation above its threshold anew, and the page faults on those
/// fresh pages dominated a training step's backward pass. No allocation is mapped on
/// its own (raising the threshold to its maximum, 32 MiB, as this did before, still
/// left the CNN branch's 33 to 67 MB maps of a training batch to fresh pages at
/// every step: a tiny training step took 2.25 to 2.38 s that way, 1.95 to 2.05 s
/// with no maps, alternating on the same machine), and freed memory is not trimmed
/// back to the system while the process runs, so a freed buffer is reused by the
/// next one. Peak memory did not change (`samus segment` and `samus bench` on
/// ViT-B: 727 MiB both ways). All threads share the main heap (one arena): the
/// worker threads' own arenas returned freed buffers to the system and faulted them
/// in again, some 7,000 page faults per ViT-B image in `samus bench`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes glibc allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// The environment variable that sizes candle's pool for element-wise operations.
const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// Runs candle's element-wise operations on the calling thread alone, unless the
/// environment sets [`CANDLE_THREADS_VAR`]: candle then starts no pool of its own.
///
/// Its pool's workers spin for 25,000 pauses after every operation before they
/// sleep, and between candle's operations our kernels run on rayon's threads, one
/// per core: the spinning worker took a core from them. A tiny training step of 2
/// images spent 14% of its CPU time in that spin (`perf record`); alternating on
/// the same machine, the step took 0.87 to 0.93 s with one thread against 0.89 to
/// 1.03 s with the pool, and a ViT-B prompt 9.2 to 10.0 ms against 11.6 to 13.3 ms;
/// the ViT-B encoder did not change. The heavy element-wise work runs in
/// `samus_core`'s fused kernels on rayon's pool, which `--threads` sizes.
fn candle_on_the_calling_thread() {
    if std::env::var_os(CANDLE_THREADS_VAR).is_none() {
        // No other thread exists yet; candle reads the variable when its pool first
        // starts.
        std::env::set_var(CANDLE_THREADS_VAR, "1");
    }
}

/// Exit status of a command line that does not parse (as clap uses).
const USAGE_EXIT: u8 = 2;

/// Prints a command-line error as one line (clap's message, the usage dropped; the
/// hint to `--help` kept short); `--help` and `--version` print as usual.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.use_stderr() {
            ExitCode::from(USAGE_EXIT)
        } else {
            ExitCode::SUCCESS
        };
    }
    eprintln!("{} (see --help)", one_line_usage_error(&error.to_string()));
    ExitCode::from(USAGE_EXIT)
}

/// clap's error text without the usage block, on one line.
fn one_line_usage_error(text: &str) -> String {
    let head = text.split("\n\nUsage:").next().unwrap_or(text);
    let head = head
        .split("\n\nFor more information")
        .next()
        .unwrap_or(head);
    head.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    tune_allocator();
    candle_on_the_calling_thread();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = configure(&cli).and_then(|ctx| match cli.command {
        Command::Demo(args) => demo::run(args, &ctx),
        Command::Segment(args) => segment::run(args, &ctx),
        Command::Auto(args) => auto::run(args, &ctx),
        Command::Track(args) => track::run(args, &ctx),
        Command::Serve(args) => serve::run(args, &ctx),
        Command::Data(args) => data::run(args),
        Command::Metrics(args) => metrics::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Train(args) => train::run(args, &ctx),
        Command::Eval(args) => eval::run(args, &ctx),
        Command::Convert(args) => convert::run(args),
        Command::Bench(args) => bench::run(args, &ctx),
        Command::Info(args) => info::run(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            completions::run(args, &mut Cli::command())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`samus info ck | head -1`) ends quietly, as ripgrep does.
        Err(e) if e.downcast_ref::<support::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, outermost first. Only the first line of each
/// is kept: candle appends a backtrace to its messages when `RUST_BACKTRACE` is set.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or_default().trim().to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}
