//! The one error type of samus-data: reading a US30K folder (class map, split files,
//! images, labels), importing a release into one, and writing a synthetic dataset.

use std::path::PathBuf;

use samus_core::atomic_write::WriteError;

/// `std::result::Result` with samus-data's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong reading or writing a dataset. Every variant names the
/// file (and, for split files, the line) it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be read (other than a missing sample file, which is
    /// [`Error::Missing`]).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A folder could not be created.
    #[error("cannot create the folder {}: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file could not be written (see [`samus_core::atomic_write`]).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// An image or label file named by a split does not exist.
    #[error("{} does not exist", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file exists but is not a decodable PNG (or other supported image).
    #[error("{} is not a readable image: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        source: image::ImageError,
    },
    /// An image's header states more pixels than [`crate::io::MAX_IMAGE_PIXELS`];
    /// refused before it is decoded.
    #[error(
        "image {} is {width}x{height} ({} megapixels); the limit is {} megapixels (downscale it first)",
        path.display(),
        u64::from(*width) * u64::from(*height) / 1_000_000,
        crate::io::MAX_IMAGE_PIXELS / 1_000_000
    )]
    ImageTooLarge {
        /// The file.
        path: PathBuf,
        /// Its width, from its header.
        width: u32,
        /// Its height, from its header.
        height: u32,
    },
    /// An image and its label map differ in size.
    #[error(
        "{} is {}x{} but its label {} is {}x{}",
        image.display(),
        image_size.0,
        image_size.1,
        label.display(),
        label_size.0,
        label_size.1
    )]
    SizeMismatch {
        /// The image file.
        image: PathBuf,
        /// Its width and height.
        image_size: (u32, u32),
        /// The label file.
        label: PathBuf,
        /// Its width and height.
        label_size: (u32, u32),
    },
    /// A (16-bit) label map holds a value that cannot be a class id.
    #[error("{}: label value {value} is not a class id (0..=255)", path.display())]
    BadLabel {
        /// The label file.
        path: PathBuf,
        /// The offending value.
        value: u32,
    },
    /// A label map holds a class id at or above its dataset's class count.
    #[error("{}: label value {value} but the dataset has {classes} classes", path.display())]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// The offending value.
        value: u8,
        /// The dataset's class count (background included), from `class.json`.
        classes: u32,
    },
    /// `class.json` is not a JSON object of dataset names to class counts.
    #[error("{}: {source}", path.display())]
    ClassMap {
        /// The class map file.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// A split line is neither `<class id>/<dataset>/<name>` nor `<dataset>/<name>`.
    #[error("{}:{line}: {reason}", path.display())]
    BadLine {
        /// The split file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A split line names a dataset that `class.json` does not list.
    #[error("{}:{line}: dataset `{dataset}` is not in class.json", path.display())]
    UnknownDataset {
        /// The split file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The dataset named by the line.
        dataset: String,
    },
    /// A split line's class id is not a foreground class of its dataset.
    #[error(
        "{}:{line}: class id {class_id} is not a foreground class of `{dataset}` (it has {classes} classes)",
        path.display()
    )]
    BadClassId {
        /// The split file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The dataset named by the line.
        dataset: String,
        /// The class id of the line (or the test class id for test lines).
        class_id: u32,
        /// The dataset's class count (background included).
        classes: u32,
    },
    /// The split file lists no sample.
    #[error("{}: the split is empty", path.display())]
    EmptySplit {
        /// The split file.
        path: PathBuf,
    },
    /// A sample index past the end of the split was asked for.
    #[error("{}: sample {index} out of range (the split has {len})", path.display())]
    IndexOutOfRange {
        /// The split file.
        path: PathBuf,
        /// The index asked for.
        index: usize,
        /// The number of samples in the split.
        len: usize,
    },
    /// A sample's files are missing, unreadable or inconsistent.
    #[error("{}:{line}: {source}", split.display())]
    Sample {
        /// The split file naming the sample.
        split: PathBuf,
        /// 1-based line number in it.
        line: usize,
        /// What is wrong with the sample ([`Error::Missing`], [`Error::Decode`],
        /// [`Error::SizeMismatch`], ...).
        source: Box<Error>,
    },
    /// An image could not be encoded as PNG.
    #[error("cannot encode PNG for {}: {source}", path.display())]
    EncodePng {
        /// The file the image was going to be written to.
        path: PathBuf,
        /// What the encoder said.
        source: image::ImageError,
    },
    /// A synthetic dataset of more images than [`crate::synth::MAX_PER_DATASET`] per kind
    /// was asked for.
    #[error(
        "{requested} images per kind is more than the synthetic generator writes (at most {max})"
    )]
    TooManyImages {
        /// The number asked for.
        requested: usize,
        /// The largest number accepted.
        max: usize,
    },
    /// A source file of an import (a release's CSV, XML, JSON, volume, or its folder)
    /// is not what its layout describes.
    #[error("{}: {reason}", path.display())]
    Source {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A mask holds a value that the import's value map (`--map`) does not name.
    #[error("{}: mask value {value} is not in --map (add {value}=<class id>)", path.display())]
    UnmappedLabel {
        /// The mask file.
        path: PathBuf,
        /// The value.
        value: u8,
    },
    /// An import option is out of range or does not fit the format.
    #[error("{option}: {reason}")]
    BadOption {
        /// The option, as on the command line.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Content could not be serialised as JSON.
    #[error("cannot serialise JSON for {}: {source}", path.display())]
    EncodeJson {
        /// The file the JSON was going to be written to.
        path: PathBuf,
        /// What serde_json said.
        source: serde_json::Error,
    },
}

impl Error {
    /// [`Error::Source`]: what is wrong with the file at `path`.
    pub(crate) fn source(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::Source {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The file (or folder) the error is about, where there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::CreateDir { path, .. }
            | Error::Missing { path }
            | Error::Decode { path, .. }
            | Error::ImageTooLarge { path, .. }
            | Error::BadLabel { path, .. }
            | Error::LabelOutOfRange { path, .. }
            | Error::ClassMap { path, .. }
            | Error::BadLine { path, .. }
            | Error::UnknownDataset { path, .. }
            | Error::BadClassId { path, .. }
            | Error::EmptySplit { path }
            | Error::IndexOutOfRange { path, .. }
            | Error::EncodePng { path, .. }
            | Error::EncodeJson { path, .. }
            | Error::Source { path, .. }
            | Error::UnmappedLabel { path, .. } => Some(path),
            Error::SizeMismatch { image, .. } => Some(image),
            Error::Sample { split, .. } => Some(split),
            Error::TooManyImages { .. } | Error::BadOption { .. } => None,
            Error::Write(e) => match e {
                WriteError::Io { path, .. }
                | WriteError::OntoInput { path }
                | WriteError::Encode { path, .. } => Some(path),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_line() {
        let err = Error::Sample {
            split: PathBuf::from("MainPatient/train.txt"),
            line: 7,
            source: Box::new(Error::Missing {
                path: PathBuf::from("BUSI/img/a.png"),
            }),
        };
        assert_eq!(
            err.to_string(),
            "MainPatient/train.txt:7: BUSI/img/a.png does not exist"
        );
        assert_eq!(
            err.path(),
            Some(std::path::Path::new("MainPatient/train.txt"))
        );
        let err = Error::BadClassId {
            path: PathBuf::from("val.txt"),
            line: 2,
            dataset: "Echo".into(),
            class_id: 4,
            classes: 4,
        };
        assert_eq!(
            err.to_string(),
            "val.txt:2: class id 4 is not a foreground class of `Echo` (it has 4 classes)"
        );
        let write: Error = WriteError::OntoInput {
            path: PathBuf::from("scan.png"),
        }
        .into();
        assert!(write.to_string().contains("scan.png"), "{write}");
        assert_eq!(write.path(), Some(std::path::Path::new("scan.png")));
    }
}
