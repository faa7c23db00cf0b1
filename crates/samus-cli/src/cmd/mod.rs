//! One module per subcommand, named as on the command line: each holds the
//! command's arguments, its `--help` examples and its `run`.

pub mod auto;
pub mod bench;
pub mod completions;
pub mod convert;
pub mod data;
pub mod demo;
pub mod eval;
pub mod info;
pub mod metrics;
pub mod segment;
pub mod serve;
pub mod synth;
pub mod track;
pub mod train;
