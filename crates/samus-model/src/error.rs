//! The error type of `samus-model`.

use std::path::PathBuf;

/// Everything that can go wrong when configuring, loading or running SAMUS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing, of the wrong type or out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A checkpoint is unreadable, incomplete or of the wrong model.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An image could not be decoded or has an unsupported format.
    #[error("image {}: {message}", path.display())]
    Image {
        /// The image file (empty for in-memory images).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A prompt does not fit the image or the model.
    #[error("invalid prompt: {0}")]
    Prompt(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
