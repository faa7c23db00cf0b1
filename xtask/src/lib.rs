//! Library half of `cargo xtask`, so that integration tests can drive the tasks.

pub mod download;
pub mod train;
