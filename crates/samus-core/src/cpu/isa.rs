//! The instruction sets the CPU kernels are written for, which of them this CPU
//! has, and the one the kernels use: the best the CPU has, or the one named by the
//! `SAMUS_ISA` environment variable (`avx512`, `avx2` or `scalar`), read once per
//! process. Tests and benchmarks pick one explicitly instead (for example
//! [`crate::packed::PackedCache::for_isa`]), so that every kernel is tested on
//! every instruction set the machine has.

use std::sync::OnceLock;

/// The environment variable that chooses the kernels' instruction set.
pub const OVERRIDE_VAR: &str = "SAMUS_ISA";

/// An instruction set that the CPU kernels have a microkernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust that the compiler vectorises for the target (SSE2 on any
    /// x86-64, NEON on aarch64); every target has it.
    Scalar,
    /// x86-64 AVX2 with FMA (256-bit vectors, 16 registers).
    Avx2,
    /// x86-64 AVX-512F (512-bit vectors, 32 registers), with AVX2 and FMA.
    Avx512,
}

/// `SAMUS_ISA` names no instruction set, or one this CPU lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IsaError {
    /// The value is not `avx512`, `avx2` or `scalar`.
    #[error("{OVERRIDE_VAR}={value}: not an instruction set; give avx512, avx2 or scalar")]
    Unknown {
        /// The variable's value.
        value: String,
    },
    /// The CPU does not have the instruction set named.
    #[error("{OVERRIDE_VAR}={}: this CPU does not have it (it has {})", .isa.name(), names(&Isa::supported()))]
    Unsupported {
        /// The instruction set named.
        isa: Isa,
    },
}

fn names(isas: &[Isa]) -> String {
    isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

impl Isa {
    /// Every instruction set, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Scalar];

    /// The name `SAMUS_ISA` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the instruction set.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::is_x86_feature_detected!("avx512f") && Isa::Avx2.is_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The instruction sets this CPU can run, best first (always ends with
    /// [`Isa::Scalar`]).
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The best instruction set this CPU has.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Isa::ALL
                .into_iter()
                .find(|i| i.is_supported())
                .unwrap_or(Isa::Scalar)
        })
    }

    /// What `SAMUS_ISA` asks for, checked against this CPU: `Ok(None)` when it is
    /// not set (or empty). Programs call this at start to report a bad value; the
    /// kernels themselves use [`Isa::selected`].
    pub fn from_env() -> Result<Option<Isa>, IsaError> {
        let Some(value) = std::env::var_os(OVERRIDE_VAR) else {
            return Ok(None);
        };
        let value = value.to_string_lossy();
        if value.trim().is_empty() {
            return Ok(None);
        }
        let isa: Isa = value.parse()?;
        if isa.is_supported() {
            Ok(Some(isa))
        } else {
            Err(IsaError::Unsupported { isa })
        }
    }

    /// The instruction set `SAMUS_ISA` names, when it names one this CPU has; read
    /// once per process.
    pub fn forced() -> Option<Isa> {
        static FORCED: OnceLock<Option<Isa>> = OnceLock::new();
        *FORCED.get_or_init(|| Isa::from_env().ok().flatten())
    }

    /// The instruction set the kernels use: [`Isa::forced`], otherwise
    /// [`Isa::detected`].
    pub fn selected() -> Isa {
        Isa::forced().unwrap_or_else(Isa::detected)
    }

    /// The instruction set of the `gemm` crate's matrix products (candle's
    /// `matmul` and the products samus-core hands to gemm), which dispatches on its
    /// own: AVX-512 where the CPU has it and this build has samus-core's
    /// `gemm-avx512` feature (on by default), else AVX2 + FMA where the CPU has
    /// them, else portable code. `SAMUS_ISA` does not change it; benchmarks report
    /// it beside [`Isa::selected`] so that a figure says what ran.
    pub fn gemm() -> Isa {
        let best = Isa::detected();
        if best == Isa::Avx512 && !cfg!(feature = "gemm-avx512") {
            Isa::Avx2
        } else {
            best
        }
    }
}

impl std::str::FromStr for Isa {
    type Err = IsaError;

    /// `avx512`, `avx2` or `scalar` (any case).
    fn from_str(text: &str) -> Result<Self, IsaError> {
        let wanted = text.trim();
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| IsaError::Unknown {
                value: text.to_string(),
            })
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
            assert_eq!(isa.name().to_uppercase().parse::<Isa>().unwrap(), isa);
        }
        let err = "avx9".parse::<Isa>().unwrap_err().to_string();
        assert!(
            err.contains("SAMUS_ISA=avx9") && err.contains("avx2"),
            "{err}"
        );
    }

    #[test]
    fn the_detected_set_is_the_best_supported_one() {
        let supported = Isa::supported();
        assert_eq!(supported.last(), Some(&Isa::Scalar));
        assert_eq!(supported[0], Isa::detected());
        assert!(Isa::selected().is_supported());
        assert!(Isa::gemm().is_supported());
        assert!(Isa::gemm() <= Isa::detected());
        if !cfg!(feature = "gemm-avx512") {
            assert_ne!(Isa::gemm(), Isa::Avx512);
        }
        // AVX-512 implies AVX2 here: the AVX-512 path packs A with AVX2 too.
        if Isa::Avx512.is_supported() {
            assert!(Isa::Avx2.is_supported());
        }
    }
}
