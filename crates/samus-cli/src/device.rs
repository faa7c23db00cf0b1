//! The `--device` choice: opened once at start-up, then read by every command that
//! builds a model.

use std::sync::OnceLock;

use anyhow::Result;
use candle_core::Device;

use crate::ComputeDevice;

static SELECTED: OnceLock<Device> = OnceLock::new();

/// Opens the device chosen with `--device`; fails for `cuda[:N]` in a build without
/// the `cuda` feature or where the GPU cannot be opened.
pub fn select(choice: ComputeDevice) -> Result<()> {
    let device = match choice {
        ComputeDevice::Cpu => Device::Cpu,
        ComputeDevice::Cuda(n) => open_cuda(n)?,
    };
    // A second call (tests) keeps the first device.
    let _ = SELECTED.set(device);
    Ok(())
}

/// The device chosen with `--device` (the CPU before [`select`] has run).
pub fn selected() -> Device {
    SELECTED.get().cloned().unwrap_or(Device::Cpu)
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
