//! The error type of `samus-model`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Everything that can go wrong when configuring, loading or running SAMUS.
///
/// Each variant carries what a caller needs to act on it: the file, the tensor's
/// name and shapes, the configuration field, the prompt's coordinates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid configuration: {message}")]
    Config {
        /// The offending field (`embed_dim`, `num_heads`, ...).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration (a JSON file, JSON text or a preset name) cannot be read.
    #[error("invalid configuration: {}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    ConfigSource {
        /// The JSON file, when the configuration came from one.
        path: Option<PathBuf>,
        /// What is wrong with it.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A checkpoint is unreadable, or is not a SAM or SAMUS checkpoint.
    #[error("checkpoint {}: {message}", Shown(path))]
    Checkpoint {
        /// The checkpoint file (`None` for tensors given in memory).
        path: Option<PathBuf>,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint lacks a tensor that the model needs.
    #[error(
        "checkpoint {}: missing tensor `{name}` (expected shape {expected:?}){}",
        Shown(path),
        Context(context)
    )]
    MissingTensor {
        /// The checkpoint file (`None` for tensors given in memory).
        path: Option<PathBuf>,
        /// The tensor's reference name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The model configuration it was checked against, in words.
        context: Option<Box<str>>,
    },
    /// A checkpoint tensor has another shape than the model expects.
    #[error(
        "checkpoint {}: tensor `{name}` has shape {found:?}, expected {expected:?}{}",
        Shown(path),
        Context(context)
    )]
    TensorShape {
        /// The checkpoint file (`None` for tensors given in memory).
        path: Option<PathBuf>,
        /// The tensor's reference name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
        /// The model configuration it was checked against, in words.
        context: Option<Box<str>>,
    },
    /// A checkpoint tensor declares more data than the file holds for it (a
    /// truncated or forged file); refused before anything is allocated.
    #[error("checkpoint {}: tensor `{name}` declares shape {shape:?} ({needed} bytes), but the file holds {available} bytes for it", Shown(path))]
    TensorData {
        /// The checkpoint file.
        path: Option<PathBuf>,
        /// The tensor's name.
        name: String,
        /// The declared shape.
        shape: Vec<usize>,
        /// Bytes the declared shape needs.
        needed: u64,
        /// Bytes the file holds for it.
        available: u64,
    },
    /// A checkpoint tensor holds NaN or infinite values: a model built from it
    /// would segment nothing and report NaN scores.
    #[error("checkpoint {}: tensor `{name}` holds {count} NaN or infinite values (of {total}); the checkpoint is damaged (retrain or re-export it)", Shown(path))]
    NonFinite {
        /// The checkpoint file (`None` for tensors given in memory).
        path: Option<PathBuf>,
        /// The tensor's name.
        name: String,
        /// How many values are not finite.
        count: usize,
        /// How many values it has.
        total: usize,
    },
    /// An image could not be decoded, is empty or has an unsupported format.
    #[error("image {}: {message}", Shown(path))]
    Image {
        /// The image file (`None` for in-memory images).
        path: Option<PathBuf>,
        /// What is wrong with it.
        message: String,
    },
    /// A point prompt lies outside the image.
    #[error("invalid prompt: point ({x}, {y}) lies outside the {width}x{height} image")]
    PointOutside {
        /// Column, in the image's pixels.
        x: f32,
        /// Row, in the image's pixels.
        y: f32,
        /// The image's width.
        width: usize,
        /// The image's height.
        height: usize,
    },
    /// A box prompt is not a box inside the image.
    #[error("invalid prompt: box ({}, {}, {}, {}) is not a box inside the {width}x{height} image (need x0 <= x1, y0 <= y1)", bbox[0], bbox[1], bbox[2], bbox[3])]
    BoxOutside {
        /// `x0, y0, x1, y1` as given.
        bbox: [f32; 4],
        /// The image's width.
        width: usize,
        /// The image's height.
        height: usize,
    },
    /// A mask input (previous logits) does not have the model's low-resolution shape.
    #[error("invalid prompt: mask input has shape {found:?}, expected {expected:?}")]
    MaskInputShape {
        /// `[1, 1, 4G, 4G]`.
        expected: Vec<usize>,
        /// What was given.
        found: Vec<usize>,
    },
    /// An image embedding does not fit this model (made by a model of another width
    /// or grid).
    #[error("image embedding has shape {found:?}, but this model decodes {expected:?}")]
    EmbeddingShape {
        /// `[1, prompt_embed_dim, G, G]` of this model.
        expected: Vec<usize>,
        /// The embedding's shape.
        found: Vec<usize>,
    },
    /// A file could not be written (see [`samus_core::atomic_write`]).
    #[error(transparent)]
    Write(#[from] samus_core::atomic_write::WriteError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl Error {
    /// The same error, told of the file it came from (for errors raised on tensors
    /// in memory that were read from `path`).
    pub fn with_path(self, path: &Path) -> Self {
        let at = Some(path.to_path_buf());
        match self {
            Error::Checkpoint {
                path: None,
                message,
            } => Error::Checkpoint { path: at, message },
            Error::MissingTensor {
                path: None,
                name,
                expected,
                context,
            } => Error::MissingTensor {
                path: at,
                name,
                expected,
                context,
            },
            Error::TensorShape {
                path: None,
                name,
                expected,
                found,
                context,
            } => Error::TensorShape {
                path: at,
                name,
                expected,
                found,
                context,
            },
            Error::Image {
                path: None,
                message,
            } => Error::Image { path: at, message },
            other => other,
        }
    }

    /// A checkpoint error about the file at `path` (or tensors in memory).
    pub(crate) fn checkpoint(path: Option<&Path>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.map(Path::to_path_buf),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Shows an optional path, or `<in memory>`.
struct Shown<'a>(&'a Option<PathBuf>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("<in memory>"),
        }
    }
}

/// Shows an optional context in parentheses.
struct Context<'a>(&'a Option<Box<str>>);

impl fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(c) => write!(f, " ({c})"),
            None => Ok(()),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
