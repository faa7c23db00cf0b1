//! The `--device` choice: parsed from the command line and opened once at start-up
//! into the [`RunContext`](super::RunContext) that every command receives.

use anyhow::Result;
use candle_core::Device;

/// The `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDevice {
    /// The CPU.
    Cpu,
    /// NVIDIA GPU number N.
    Cuda(usize),
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<ComputeDevice, String> {
    match text {
        "cpu" => Ok(ComputeDevice::Cpu),
        "cuda" => Ok(ComputeDevice::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(ComputeDevice::Cuda(n)),
            _ => Err(format!("`{other}` is not `cpu`, `cuda` or `cuda:N`")),
        },
    }
}

/// Opens the device chosen with `--device`; fails for `cuda[:N]` in a build without
/// the `cuda` feature or where the GPU cannot be opened.
pub fn open(choice: ComputeDevice) -> Result<Device> {
    match choice {
        ComputeDevice::Cpu => Ok(Device::Cpu),
        ComputeDevice::Cuda(n) => open_cuda(n),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    use anyhow::Context;
    Device::new_cuda(n).with_context(|| {
        format!(
            "--device cuda:{n}: cannot open GPU {n} (an NVIDIA GPU and its driver are needed; \
             nvidia-smi lists the GPUs)"
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    anyhow::bail!(
        "--device cuda:{n}: this samus is built for the CPU only (CUDA kernels are not part \
         of this build; rebuild with `--features cuda`, see docs/CUDA.md); use --device cpu"
    )
}
