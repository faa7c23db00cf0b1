//! What the subcommands share: reading images and writing results, loading models,
//! the compute device, HTML reports.

pub mod archive;
pub mod calibration;
pub mod device;
pub mod images;
pub mod model;
pub mod output;
pub mod report;

use candle_core::Device;

/// What every command receives from the global options (`--device`, `--threads`),
/// set up once before the command runs.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The compute device models are loaded onto.
    pub device: Device,
}

/// Prints one line to standard output, like `println!`, but a closed pipe
/// (`samus info ck.safetensors | head -1`) becomes [`StdoutClosed`], which `main`
/// turns into a quiet exit with status 0, as ripgrep does.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::support::print_line(format_args!($($arg)*))
    };
}

/// The error [`outln!`] returns when standard output has been closed.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `text` to standard output as it is (see [`outln!`]).
pub fn print_text(text: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// The body of [`outln!`].
pub fn print_line(args: std::fmt::Arguments) -> anyhow::Result<()> {
    let mut line = args.to_string();
    line.push('\n');
    print_text(line.as_bytes())
}
