//! The CPU kernel layer: which instruction set the kernels use ([`isa`], detected
//! once, with the `SAMUS_ISA` override), and the packed matrix product
//! ([`packed`]) whose one blocked driver runs a microkernel per instruction set
//! (AVX-512, AVX2 with FMA, and a portable one that every target compiles).
//!
//! What each machine gets:
//!
//! | CPU | kernels |
//! | --- | --- |
//! | x86-64 with AVX-512F (Intel Xeon, Ice Lake and later laptops, AMD Zen 4 and 5) | AVX-512: 14 x 32 register tiles |
//! | x86-64 with AVX2 and FMA (most laptops and desktops: Intel Haswell to today's consumer parts, AMD Zen 1 to 3) | AVX2: 6 x 16 register tiles |
//! | anything else (older x86-64, aarch64 including Apple silicon, ...) | the portable 4 x 8 tile, which the compiler vectorises for the target (SSE2, NEON) |
//!
//! ```
//! use samus_core::cpu::Isa;
//!
//! // The instruction set the kernels run with on this machine (or `SAMUS_ISA`).
//! let isa = Isa::selected();
//! assert!(isa.is_supported());
//! assert!(Isa::supported().contains(&Isa::Scalar));
//! ```

pub mod isa;
pub mod packed;

pub use isa::{Isa, IsaError};

/// The dispatcher of the element-wise kernels written with `pulp` (softmax,
/// LayerNorm, GELU, the attention's exponentials, few-row products): `pulp`'s
/// best for this CPU (AVX-512 or AVX2 on x86-64, NEON on aarch64), AVX2 when
/// `SAMUS_ISA=avx2` holds the kernels to it (as on a CPU without AVX-512), or plain
/// scalar code when `SAMUS_ISA=scalar` asks for the portable kernels.
pub fn simd() -> pulp::Arch {
    match Isa::forced() {
        Some(Isa::Scalar) => pulp::Arch::Scalar,
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => pulp::x86::V3::try_new().map_or_else(pulp::Arch::new, pulp::Arch::V3),
        _ => pulp::Arch::new(),
    }
}
