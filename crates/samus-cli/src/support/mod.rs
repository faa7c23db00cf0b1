//! What the subcommands share: reading images and writing results, loading models,
//! the compute device, HTML reports.

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
