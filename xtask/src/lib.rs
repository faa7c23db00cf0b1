//! Library half of `cargo xtask`, so that integration tests can drive the tasks.

pub mod bench_compare;
pub mod bench_serve;
pub mod bench_train;
pub mod browser;
pub mod download;
pub mod serve_process;
pub mod train;

/// `cargo run --release --quiet -p samus-cli --bin samus --`, ready for the `samus`
/// arguments (with the cargo that runs xtask), and how to name it in errors.
pub fn samus_command() -> (std::process::Command, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = std::process::Command::new(&cargo);
    command.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "samus-cli",
        "--bin",
        "samus",
        "--",
    ]);
    (command, format!("`{cargo} run -p samus-cli`"))
}
