//! Library half of `cargo xtask`, so that integration tests can drive the tasks.

pub mod bench_compare;
pub mod download;
pub mod train;
