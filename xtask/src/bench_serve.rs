//! `cargo xtask bench-serve`: `samus serve` under load, beside its unloaded self.
//!
//! 1. Builds `samus`, writes random weights of the configuration (ViT-B by default)
//!    unless `--checkpoint` is given, and starts `samus serve` on a loopback port.
//! 2. Embeds one image per client and waits until nothing is computing.
//! 3. The peer: one client alone sends `--requests` predicts (the unloaded latency).
//! 4. The load: `--clients` clients at once, `--requests` predicts each, on cached
//!    embeddings. Every request is timed; any answer but 200 is an error.
//! 5. With `--browser-clicks N`, headless Chromium clicks N times on the page and
//!    reports click-to-mask times as the page measures them (click to the frame
//!    with the mask painted); `--screenshot` keeps the last view.
//!
//! It prints p50/p99 latencies, errors, the server's decoder time and the server's
//! peak resident memory (VmHWM), with the CPU it ran on. It stops by itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::browser::{find_chromedriver, Browser, Driver};
use crate::serve_process::ServeProcess;

/// Arguments of `cargo xtask bench-serve`.
#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Model configuration for the random weights (a preset: vit_b, tiny, ...).
    #[arg(long, default_value = "vit_b")]
    pub config: String,
    /// A checkpoint to serve instead of random weights.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Folder of scans (default: ../shared/realdata/BUSBRA/Images or $SAMUS_REALDATA).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
    /// Predicts per client.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub requests: u32,
    /// Clicks in headless Chromium after the load (0: no browser).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub browser_clicks: u32,
    /// Where to save a screenshot of the page after the clicks.
    #[arg(long, value_name = "PNG", requires = "browser_clicks")]
    pub screenshot: Option<PathBuf>,
    /// For the screenshot: one click at this point of the first image (in its
    /// pixels), e.g. on a lesion.
    #[arg(long, value_name = "X,Y", requires = "screenshot", value_parser = parse_point)]
    pub screenshot_point: Option<(f64, f64)>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_point(text: &str) -> Result<(f64, f64), String> {
    let parsed = text
        .split_once(',')
        .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)));
    parsed.ok_or_else(|| format!("`{text}`: give X,Y in image pixels, e.g. 152,128"))
}

/// Percentile `q` (0 to 1) of `values`, nearest rank.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A small deterministic generator for click positions.
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one run of clients measured.
#[derive(Debug, Default)]
struct Latencies {
    round_trip_ms: Vec<f64>,
    decode_ms: Vec<f64>,
    errors: usize,
    wall_s: f64,
}

impl Latencies {
    fn summary(&self) -> Value {
        json!({
            "requests": self.round_trip_ms.len() + self.errors,
            "errors": self.errors,
            "p50_ms": percentile(&self.round_trip_ms, 0.5),
            "p99_ms": percentile(&self.round_trip_ms, 0.99),
            "max_ms": percentile(&self.round_trip_ms, 1.0),
            "decode_p50_ms": percentile(&self.decode_ms, 0.5),
            "decode_p99_ms": percentile(&self.decode_ms, 0.99),
            "requests_per_s": self.round_trip_ms.len() as f64 / self.wall_s,
        })
    }
}

/// `clients` clients at once, `requests` predicts each, client `c` on image `c`.
fn load(
    server: &ServeProcess,
    images: &[(usize, f64, f64)],
    clients: u32,
    requests: u32,
) -> Latencies {
    let start = Instant::now();
    let per_client: Vec<Latencies> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..clients as usize)
            .map(|c| {
                s.spawn(move || {
                    let (id, w, h) = images[c % images.len()];
                    let mut rng = Lcg(c as u64 + 1);
                    let mut out = Latencies::default();
                    for _ in 0..requests {
                        let (x, y) = (w * (0.2 + 0.6 * rng.unit()), h * (0.2 + 0.6 * rng.unit()));
                        let body = json!({"points": [[x, y, 1]], "box": null, "multimask": false});
                        let t = Instant::now();
                        let reply =
                            server.send("POST", &format!("/api/images/{id}/predict"), Some(&body));
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        match reply {
                            Ok((200, answer)) => {
                                out.round_trip_ms.push(ms);
                                out.decode_ms
                                    .push(answer["decode_ms"].as_f64().unwrap_or(f64::NAN));
                            }
                            _ => out.errors += 1,
                        }
                    }
                    out
                })
            })
            .collect();
        tasks
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let mut all = Latencies {
        wall_s: start.elapsed().as_secs_f64(),
        ..Latencies::default()
    };
    for c in per_client {
        all.round_trip_ms.extend(c.round_trip_ms);
        all.decode_ms.extend(c.decode_ms);
        all.errors += c.errors;
    }
    all
}

/// Peak resident memory of process `pid` in MiB (Linux: VmHWM).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The CPU model, from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Builds the `samus` binary and returns its path.
fn build_samus(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "samus-cli",
            "--bin",
            "samus",
        ])
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("building samus failed");
    }
    Ok(root.join("target/release/samus"))
}

/// A left click at `(x, y)` in the image's pixels; waits for the page's `answers`-th
/// mask on screen.
fn click_and_wait(page: &Browser, (x, y): (f64, f64), answers: usize) -> Result<()> {
    let at = page.exec(
        "return window.samus.toScreen(arguments[0], arguments[1])",
        vec![json!(x), json!(y)],
    )?;
    page.click(
        at[0].as_f64().unwrap_or(0.0),
        at[1].as_f64().unwrap_or(0.0),
        0,
    )?;
    page.wait_until(&format!(
        "return window.samus.state.timings.length === {answers} && window.samus.ready()"
    ))?;
    Ok(())
}

/// Clicks `clicks` times on the first image in Chromium; the page's click-to-mask
/// times.
fn browser_clicks(
    server: &ServeProcess,
    clicks: u32,
    screenshot: Option<&Path>,
    screenshot_point: Option<(f64, f64)>,
) -> Result<Vec<f64>> {
    let Some(exe) = find_chromedriver() else {
        bail!("--browser-clicks needs chromedriver on PATH (Debian: apt-get install chromium chromium-driver)");
    };
    let driver = Driver::start(&exe)?;
    let page = Browser::open(&driver)?;
    page.goto(&format!("{}/", server.base))?;
    page.wait_until("return window.samus && window.samus.ready() && /embedding/.test(document.getElementById('status').textContent)")?;
    let size = page.exec("const im = window.samus.state.images[window.samus.state.index]; return [im.width, im.height]", vec![])?;
    let (w, h) = (
        size[0].as_f64().unwrap_or(1.0),
        size[1].as_f64().unwrap_or(1.0),
    );
    let mut rng = Lcg(99);
    for i in 0..clicks {
        // Each click starts over (Esc), so every request carries one point.
        page.keys("canvas", "\u{e00c}")?;
        let (x, y) = (w * (0.3 + 0.4 * rng.unit()), h * (0.3 + 0.4 * rng.unit()));
        click_and_wait(&page, (x, y), i as usize + 1)?;
    }
    let timings = page.exec("return window.samus.state.timings", vec![])?;
    if let Some((x, y)) = screenshot_point {
        page.keys("canvas", "\u{e00c}")?;
        click_and_wait(&page, (x, y), clicks as usize + 1)?;
    }
    if let Some(path) = screenshot {
        std::fs::write(path, page.screenshot()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(timings
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default())
}

/// Runs `cargo xtask bench-serve`.
pub fn run(args: &BenchServeArgs) -> Result<()> {
    let root = crate::bench_compare::workspace_root();
    let dir = root.join("target").join("bench-serve");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let samus = build_samus(&root)?;
    let checkpoint = match &args.checkpoint {
        Some(c) => c.clone(),
        None => {
            let weights = dir.join(format!("{}_random.safetensors", args.config));
            if !weights.exists() {
                eprintln!("writing random {} weights ...", args.config);
                let status = Command::new(&samus)
                    .args([
                        "bench",
                        "--random-weights",
                        "--iters",
                        "1",
                        "--config",
                        &args.config,
                    ])
                    .arg("--save-weights")
                    .arg(&weights)
                    .stdout(std::process::Stdio::null())
                    .status()?;
                if !status.success() {
                    bail!("samus bench --save-weights failed");
                }
            }
            weights
        }
    };
    let images = match &args.images {
        Some(d) => d.clone(),
        None => samus_core::fixtures::realdata_dir(env!("CARGO_MANIFEST_DIR"))
            .map(|d| d.join("BUSBRA/Images"))
            .context("no --images and no real data (set SAMUS_REALDATA or pass --images DIR)")?,
    };
    let server = ServeProcess::start(
        &samus,
        &[
            "--checkpoint",
            &checkpoint.to_string_lossy(),
            "--images",
            &images.to_string_lossy(),
        ],
    )?;
    let (_, list) = server.send("GET", "/api/images", None)?;
    let list = list.as_array().context("GET /api/images gave no list")?;
    let used: Vec<(usize, f64, f64)> = list
        .iter()
        .take(args.clients as usize)
        .filter_map(|im| {
            Some((
                im["id"].as_u64()? as usize,
                im["width"].as_f64()?,
                im["height"].as_f64()?,
            ))
        })
        .collect();
    if used.is_empty() {
        bail!("the server lists no images");
    }
    eprintln!("embedding {} images ...", used.len());
    let mut embed_ms = Vec::new();
    for (id, _, _) in &used {
        let (code, e) = server.send("POST", &format!("/api/images/{id}/embed"), None)?;
        if code != 200 {
            bail!("embedding image {id} failed: {e}");
        }
        embed_ms.push(e["embed_ms"].as_f64().unwrap_or(f64::NAN));
    }
    // The next image is embedded ahead in the background: let that finish first.
    loop {
        let (_, status) = server.send("GET", "/api/status", None)?;
        if status["embeddings"]["in_progress"].as_u64() == Some(0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("one client alone, {} predicts ...", args.requests);
    let alone = load(&server, &used, 1, args.requests);
    eprintln!("{} clients x {} predicts ...", args.clients, args.requests);
    let loaded = load(&server, &used, args.clients, args.requests);
    let clicks = if args.browser_clicks > 0 {
        eprintln!("{} clicks in Chromium ...", args.browser_clicks);
        browser_clicks(
            &server,
            args.browser_clicks,
            args.screenshot.as_deref(),
            args.screenshot_point,
        )?
    } else {
        Vec::new()
    };
    let rss = peak_rss_mib(server.pid());
    let report = json!({
        "cpu": cpu_model(),
        "threads": std::thread::available_parallelism().map_or(1, usize::from),
        "checkpoint": checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()),
        "images": used.len(),
        "embed_ms_p50": percentile(&embed_ms, 0.5),
        "alone": alone.summary(),
        "loaded": loaded.summary(),
        "clients": args.clients,
        "requests_per_client": args.requests,
        "p99_over_p50": percentile(&loaded.round_trip_ms, 0.99) / percentile(&loaded.round_trip_ms, 0.5),
        "browser_click_to_mask_ms": clicks,
        "browser_click_to_mask_p50_ms": percentile(&clicks, 0.5),
        "server_peak_rss_mib": rss,
    });
    if args.json {
        println!("{report}");
    } else {
        let row = |name: &str, v: &Value| {
            format!(
                "{name:<22} {:>6} req  {:>3} errors  p50 {:>8.1} ms  p99 {:>8.1} ms  decoder p50 {:>6.1} ms  {:>6.1} req/s",
                v["requests"], v["errors"], v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                v["p99_ms"].as_f64().unwrap_or(f64::NAN), v["decode_p50_ms"].as_f64().unwrap_or(f64::NAN),
                v["requests_per_s"].as_f64().unwrap_or(f64::NAN)
            )
        };
        println!(
            "samus serve on {} ({} threads), {}",
            report["cpu"], report["threads"], report["checkpoint"]
        );
        println!(
            "embedding p50 {:.0} ms",
            report["embed_ms_p50"].as_f64().unwrap_or(f64::NAN)
        );
        println!("{}", row("1 client", &report["alone"]));
        println!(
            "{}",
            row(&format!("{} clients", args.clients), &report["loaded"])
        );
        println!(
            "p99 / p50 under load: {:.2}",
            report["p99_over_p50"].as_f64().unwrap_or(f64::NAN)
        );
        if !clicks.is_empty() {
            println!(
                "browser click-to-mask: p50 {:.1} ms over {} clicks",
                percentile(&clicks, 0.5),
                clicks.len()
            );
        }
        if let Some(rss) = rss {
            println!("server peak RSS {rss:.0} MiB");
        }
    }
    if alone.errors + loaded.errors > 0 {
        bail!("{} requests failed", alone.errors + loaded.errors);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
