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
    samus_command_with(&[])
}

/// [`samus_command`] with more options for `cargo run` (before the `--`).
fn samus_command_with(cargo_options: &[&str]) -> (std::process::Command, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = std::process::Command::new(&cargo);
    command
        .args(["run", "--release", "--quiet", "-p", "samus-cli"])
        .args(cargo_options)
        .args(["--bin", "samus", "--"]);
    let options: String = cargo_options.iter().map(|o| format!(" {o}")).collect();
    (command, format!("`{cargo} run -p samus-cli{options}`"))
}

/// The instruction sets a benchmark lets both sides use (`--avx2` of `cargo xtask
/// bench-compare` and `bench-train`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeldTo {
    /// The best each side finds on this CPU.
    #[default]
    Best,
    /// AVX2 + FMA, as on a CPU without AVX-512 (most laptops, AMD before Zen 4):
    /// samus built without default features (so the gemm crate leaves out its
    /// AVX-512 kernels) and run with `SAMUS_ISA=avx2`; PyTorch run with ATen, MKL
    /// and oneDNN held to AVX2.
    Avx2,
}

/// The environment that holds PyTorch's ATen, MKL and oneDNN to AVX2.
pub const PYTORCH_AVX2_ENV: [(&str, &str); 3] = [
    ("ATEN_CPU_CAPABILITY", "avx2"),
    ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),
];

impl HeldTo {
    /// `Avx2` when the flag is given.
    pub fn from_flag(avx2: bool) -> Self {
        if avx2 {
            HeldTo::Avx2
        } else {
            HeldTo::Best
        }
    }

    /// [`samus_command`] for this choice: without default features and with
    /// `SAMUS_ISA=avx2` for [`HeldTo::Avx2`].
    pub fn samus_command(self) -> (std::process::Command, String) {
        match self {
            HeldTo::Best => samus_command(),
            HeldTo::Avx2 => {
                let (mut command, name) = samus_command_with(&["--no-default-features"]);
                command.env("SAMUS_ISA", "avx2");
                (command, name)
            }
        }
    }

    /// Holds the PyTorch peer's command to this choice.
    pub fn hold_peer(self, command: &mut std::process::Command) {
        if self == HeldTo::Avx2 {
            command.envs(PYTORCH_AVX2_ENV);
        }
    }

    /// Fails when a `samus bench --json` report says that our kernels or the gemm
    /// crate's (`isa`, `gemm_isa`) ran something else than asked.
    pub fn check_report(self, report: &serde_json::Value) -> anyhow::Result<()> {
        if self == HeldTo::Best {
            return Ok(());
        }
        for key in ["isa", "gemm_isa"] {
            let got = report.get(key).and_then(serde_json::Value::as_str);
            if got != Some("avx2") {
                anyhow::bail!(
                    "--avx2: samus bench reported {key} {}, not avx2",
                    got.unwrap_or("(missing)")
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn held_to_avx2_builds_without_default_features_and_holds_both_sides() {
        let (best, _) = HeldTo::Best.samus_command();
        let (avx2, name) = HeldTo::Avx2.samus_command();
        let args = |c: &std::process::Command| -> Vec<String> {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert!(!args(&best).contains(&"--no-default-features".to_string()));
        let a = args(&avx2);
        let flag = a.iter().position(|x| x == "--no-default-features").unwrap();
        let separator = a.iter().position(|x| x == "--").unwrap();
        assert!(flag < separator, "{a:?}");
        assert!(name.contains("--no-default-features"), "{name}");
        let env = |c: &std::process::Command, key: &str| {
            c.get_envs()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        };
        assert_eq!(env(&avx2, "SAMUS_ISA").as_deref(), Some("avx2"));
        assert_eq!(env(&best, "SAMUS_ISA"), None);
        let mut peer = std::process::Command::new("python3");
        HeldTo::Avx2.hold_peer(&mut peer);
        for (key, value) in PYTORCH_AVX2_ENV {
            assert_eq!(env(&peer, key).as_deref(), Some(value));
        }
    }

    #[test]
    fn a_report_of_other_kernels_fails_the_avx2_check() {
        let ran = |isa: &str, gemm: &str| json!({"isa": isa, "gemm_isa": gemm});
        assert!(HeldTo::Avx2.check_report(&ran("avx2", "avx2")).is_ok());
        let err = HeldTo::Avx2
            .check_report(&ran("avx2", "avx512"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gemm_isa avx512"), "{err}");
        assert!(HeldTo::Avx2.check_report(&json!({"isa": "avx2"})).is_err());
        assert!(HeldTo::Best.check_report(&ran("avx512", "avx512")).is_ok());
    }
}
