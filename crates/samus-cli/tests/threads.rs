//! Which threads `samus` starts: candle's pool for element-wise operations (whose
//! workers spin against our kernels' threads) only when the environment asks for it.

/// Runs a short training benchmark with `env` and returns the names of every thread
/// the process had while it ran (`/proc/PID/task/*/comm`, polled).
#[cfg(target_os = "linux")]
fn thread_names_of_a_training_step(env: &[(&str, &str)]) -> std::collections::BTreeSet<String> {
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_samus"));
    command
        .args([
            "bench",
            "--train",
            "--random-weights",
            "--batch-size",
            "1",
            "--iters",
            "1",
        ])
        .env_remove("CANDLE_NUM_THREADS")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the samus binary runs");
    let tasks = format!("/proc/{}/task", child.id());
    let mut names = std::collections::BTreeSet::new();
    loop {
        if let Ok(entries) = std::fs::read_dir(&tasks) {
            for entry in entries.flatten() {
                if let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) {
                    names.insert(name.trim().to_string());
                }
            }
        }
        if child.try_wait().expect("wait for samus").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.wait().expect("wait for samus").success());
    names
}

#[cfg(target_os = "linux")]
#[test]
fn candle_runs_on_the_calling_thread_unless_the_environment_says_otherwise() {
    let is_pool = |name: &String| name.starts_with("candle-bp");
    let default = thread_names_of_a_training_step(&[("RAYON_NUM_THREADS", "2")]);
    assert!(
        !default.iter().any(is_pool),
        "candle's pool started: {default:?}"
    );
    // The same probe sees the pool when the user asks for one (so the check above
    // can fail).
    let asked =
        thread_names_of_a_training_step(&[("RAYON_NUM_THREADS", "2"), ("CANDLE_NUM_THREADS", "2")]);
    assert!(asked.iter().any(is_pool), "no candle pool seen: {asked:?}");
}
