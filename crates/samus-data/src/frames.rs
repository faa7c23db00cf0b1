//! Frame sequences in time (a cine loop, a sweep): a multi-frame DICOM, a video
//! (`.mp4`, `.avi`, `.mov`, `.mkv`, `.webm`) decoded by the `ffmpeg` program, a
//! folder of images in name order, or a single image. Frames are read one at a
//! time, in order: a video is streamed from ffmpeg, never held whole in memory.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use samus_data::frames::FrameSequence;
//! let dir = std::env::temp_dir().join(format!("samus-frames-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! for i in 0..3u8 {
//!     image::GrayImage::from_pixel(8, 6, image::Luma([i * 50])).save(dir.join(format!("f{i}.png")))?;
//! }
//! let sequence = FrameSequence::open(&dir)?;
//! assert_eq!(sequence.len(), Some(3));
//! for frame in sequence.frames()? {
//!     let frame = frame?;
//!     assert_eq!(frame.image.to_luma8().get_pixel(0, 0)[0], frame.index as u8 * 50);
//! }
//! # Ok(()) }
//! ```
//!
//! Video needs `ffmpeg` on `PATH` (Debian/Ubuntu `apt install ffmpeg`, macOS `brew
//! install ffmpeg`, Windows `winget install ffmpeg`), or its path in the
//! `SAMUS_FFMPEG` environment variable; it is never downloaded.

use std::path::{Path, PathBuf};

use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use image::{DynamicImage, RgbImage};

use crate::dicom::{DicomFile, PixelSize};
use crate::error::{Error, Result};

/// File extensions read as video (any case).
pub const VIDEO_EXTENSIONS: [&str; 6] = ["mp4", "avi", "mov", "mkv", "webm", "m4v"];

/// The environment variable that names the ffmpeg program to run.
pub const FFMPEG_ENV: &str = "SAMUS_FFMPEG";

/// Whether `path` has one of [`VIDEO_EXTENSIONS`].
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// One frame of a sequence.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its index from 0.
    pub index: u32,
    /// Its time from the first frame in seconds, when the source says.
    pub time_s: Option<f64>,
    /// Its pixels.
    pub image: DynamicImage,
}

/// Where the frames come from.
#[derive(Debug)]
enum Source {
    Dicom(Box<DicomFile>),
    Video(VideoInfo),
    Images(Vec<PathBuf>),
}

/// What ffmpeg reports of a video before its frames.
#[derive(Debug, Clone, Copy)]
struct VideoInfo {
    width: u32,
    height: u32,
    fps: Option<f64>,
    duration_s: Option<f64>,
}

/// A sequence of frames opened for reading; [`FrameSequence::frames`] reads them.
#[derive(Debug)]
pub struct FrameSequence {
    path: PathBuf,
    source: Source,
}

impl FrameSequence {
    /// Opens a DICOM file, a video, a folder of images or one image. Fails, naming
    /// the file, when it is none of them or cannot be read (a video: when ffmpeg is
    /// missing or cannot decode it).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Missing {
                path: path.to_path_buf(),
            });
        }
        let source = if path.is_dir() {
            let mut images: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && crate::io::has_image_extension(p))
                .collect();
            // `frame2.png` before `frame10.png`, as ffmpeg's `%d` numbers them.
            images.sort_by(|a, b| natural_order(&a.to_string_lossy(), &b.to_string_lossy()));
            if images.is_empty() {
                return Err(Error::source(
                    path,
                    "is a folder without images (PNG, JPEG, BMP, TIFF or DICOM)",
                ));
            }
            Source::Images(images)
        } else if is_video(path) {
            Source::Video(probe_video(path)?)
        } else if crate::dicom::is_dicom(path) {
            Source::Dicom(Box::new(DicomFile::open(path)?))
        } else if crate::io::has_image_extension(path) {
            Source::Images(vec![path.to_path_buf()])
        } else {
            return Err(Error::source(
                path,
                format!(
                    "is neither an image, a DICOM file nor a video ({})",
                    VIDEO_EXTENSIONS.join(", ")
                ),
            ));
        };
        Ok(Self {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of frames: exact for DICOM and image folders, estimated from the
    /// duration and frame rate for a video (`None` when ffmpeg does not say).
    pub fn len(&self) -> Option<u32> {
        match &self.source {
            Source::Dicom(file) => Some(file.frames()),
            Source::Images(paths) => u32::try_from(paths.len()).ok(),
            Source::Video(info) => match (info.fps, info.duration_s) {
                (Some(fps), Some(d)) => Some((fps * d).round().max(1.0) as u32),
                _ => None,
            },
        }
    }

    /// Whether the sequence is known to be empty (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Width and height of the frames, when known before reading one (DICOM and
    /// video).
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        match &self.source {
            Source::Dicom(file) => Some((file.width(), file.height())),
            Source::Video(info) => Some((info.width, info.height)),
            Source::Images(_) => None,
        }
    }

    /// The pixel size at `(x, y)`, from a DICOM's calibration.
    pub fn pixel_size_at(&self, x: f64, y: f64) -> Option<PixelSize> {
        match &self.source {
            Source::Dicom(file) => file.pixel_size_at(x, y),
            _ => None,
        }
    }

    /// Frames per second, when the source says (a video's rate, a DICOM's frame
    /// time).
    pub fn fps(&self) -> Option<f64> {
        match &self.source {
            Source::Video(info) => info.fps,
            Source::Dicom(file) => file.frame_time_s(1).filter(|&t| t > 0.0).map(|t| 1.0 / t),
            Source::Images(_) => None,
        }
    }

    /// Reads the frames from the first, in order (each call starts again).
    pub fn frames(&self) -> Result<Frames<'_>> {
        let state = match &self.source {
            Source::Video(info) => {
                let mut child = ffmpeg_command()
                    .input(ffmpeg_input(&self.path))
                    .rawvideo()
                    .spawn()
                    .map_err(|e| no_ffmpeg(&self.path, &e))?;
                let events = child
                    .iter()
                    .map_err(|e| Error::source(&self.path, format!("ffmpeg: {e}")))?;
                FramesState::Video {
                    child,
                    events: Box::new(events),
                    info: *info,
                    errors: Vec::new(),
                }
            }
            _ => FramesState::Indexed,
        };
        Ok(Frames {
            sequence: self,
            next: 0,
            state,
            first_size: None,
        })
    }
}

/// The iterator of [`FrameSequence::frames`]; a video's ffmpeg stops when it is
/// dropped.
pub struct Frames<'a> {
    sequence: &'a FrameSequence,
    next: u32,
    state: FramesState,
    first_size: Option<(u32, u32)>,
}

enum FramesState {
    Indexed,
    Video {
        child: ffmpeg_sidecar::child::FfmpegChild,
        events: Box<ffmpeg_sidecar::iter::FfmpegIterator>,
        info: VideoInfo,
        errors: Vec<String>,
    },
    Done,
}

impl std::fmt::Debug for Frames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("path", &self.sequence.path)
            .field("next", &self.next)
            .finish()
    }
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next;
        let path = &self.sequence.path;
        let item = match (&self.sequence.source, &mut self.state) {
            (_, FramesState::Done) => return None,
            (Source::Dicom(file), _) => {
                if index >= file.frames() {
                    return None;
                }
                file.frame(index).map(|image| Frame {
                    index,
                    time_s: file.frame_time_s(index),
                    image,
                })
            }
            (Source::Images(paths), _) => {
                let frame_path = paths.get(index as usize)?;
                let first = self.first_size;
                crate::io::read_image(frame_path).and_then(|image| {
                    let size = (image.width(), image.height());
                    match first {
                        Some((w, h)) if (w, h) != size => Err(Error::source(
                            frame_path,
                            format!(
                                "is {}x{}, but the sequence's first frame is {w}x{h}; the frames of a sequence share one size",
                                size.0, size.1
                            ),
                        )),
                        _ => Ok(Frame {
                            index,
                            time_s: None,
                            image,
                        }),
                    }
                })
            }
            (
                Source::Video(_),
                FramesState::Video {
                    events,
                    info,
                    errors,
                    ..
                },
            ) => match next_video_frame(path, events, info, errors, index) {
                Some(item) => item,
                None => {
                    // The end: ffmpeg must have ended cleanly, else the clip was
                    // cut short by an error and the rest would silently be missing.
                    let (success, errors) = self.finish();
                    if success == Some(false) || !errors.is_empty() {
                        let cause = last_error(&errors).unwrap_or("it failed");
                        return Some(Err(Error::source(
                            path,
                            format!(
                                "ffmpeg stopped after frame {}: {cause}",
                                index.saturating_sub(1)
                            ),
                        )));
                    }
                    return None;
                }
            },
            (Source::Video(_), FramesState::Indexed) => return None,
        };
        match &item {
            Err(_) => {
                self.finish();
            }
            Ok(frame) if self.first_size.is_none() => {
                self.first_size = Some((frame.image.width(), frame.image.height()));
            }
            Ok(_) => {}
        }
        self.next += 1;
        Some(item)
    }
}

impl Frames<'_> {
    /// Ends the iteration; a video's ffmpeg is stopped and reaped (no zombie, no
    /// decoding left running). Whether ffmpeg exited successfully (when it had
    /// already ended by itself), and the errors it logged.
    fn finish(&mut self) -> (Option<bool>, Vec<String>) {
        match std::mem::replace(&mut self.state, FramesState::Done) {
            FramesState::Video {
                mut child, errors, ..
            } => {
                let ended = child.as_inner_mut().try_wait().ok().flatten();
                let _ = child.kill();
                let status = child.wait().ok();
                (ended.or(status).map(|s| s.success()), errors)
            }
            _ => (None, Vec::new()),
        }
    }
}

impl Drop for Frames<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `path` as an ffmpeg input that is always a file (a name such as `10:30.mp4` would
/// otherwise read as a protocol).
fn ffmpeg_input(path: &Path) -> std::ffi::OsString {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut input = std::ffi::OsString::from("file:");
    input.push(absolute.as_os_str());
    input
}

/// Orders names with their runs of digits compared as numbers (`f2` before `f10`).
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(&cb) {
        let order = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len()
                .cmp(&tb.len())
                .then(ta.cmp(tb))
                .then(xa.len().cmp(&xb.len()))
        } else {
            xa.cmp(xb)
        };
        if order != std::cmp::Ordering::Equal {
            return order;
        }
    }
    ca.len().cmp(&cb.len())
}

/// The next decoded frame from ffmpeg's events; `None` at the end, an error when
/// ffmpeg stopped on one before giving any frame (or gave a frame of another size).
fn next_video_frame(
    path: &Path,
    events: &mut ffmpeg_sidecar::iter::FfmpegIterator,
    info: &VideoInfo,
    errors: &mut Vec<String>,
    index: u32,
) -> Option<Result<Frame>> {
    for event in events.by_ref() {
        match event {
            FfmpegEvent::OutputFrame(frame) => {
                let time_s = info
                    .fps
                    .map(|fps| f64::from(index) / fps)
                    .or(Some(f64::from(frame.timestamp)));
                return Some(
                    RgbImage::from_raw(frame.width, frame.height, frame.data)
                        .map(|rgb| Frame {
                            index,
                            time_s,
                            image: DynamicImage::ImageRgb8(rgb),
                        })
                        .ok_or_else(|| {
                            Error::source(path, format!("ffmpeg gave a short frame {index}"))
                        }),
                );
            }
            FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line)
            | FfmpegEvent::Error(line) => {
                errors.push(line.trim().to_string());
            }
            _ => {}
        }
    }
    if index == 0 {
        let cause = last_error(errors).unwrap_or("no frames");
        return Some(Err(Error::source(
            path,
            format!("ffmpeg cannot decode it: {cause}"),
        )));
    }
    None
}

/// ffmpeg's last non-empty error line: the one that names the cause.
fn last_error(errors: &[String]) -> Option<&str> {
    errors.iter().rfind(|e| !e.is_empty()).map(String::as_str)
}

fn ffmpeg_command() -> FfmpegCommand {
    let mut command = match std::env::var_os(FFMPEG_ENV) {
        Some(program) => FfmpegCommand::new_with_path(program),
        None => FfmpegCommand::new(),
    };
    command.hide_banner().arg("-nostdin");
    command
}

fn no_ffmpeg(path: &Path, e: &std::io::Error) -> Error {
    Error::source(
        path,
        format!(
            "is a video, and reading video needs the ffmpeg program, which cannot be run ({e}): \
             install it (Debian/Ubuntu `apt install ffmpeg`, macOS `brew install ffmpeg`, \
             Windows `winget install ffmpeg`) or set {FFMPEG_ENV} to its path"
        ),
    )
}

/// Asks ffmpeg for the video's size, frame rate and duration: the decoding
/// command is started, its stream report read, and it is stopped before the first
/// frame is used.
fn probe_video(path: &Path) -> Result<VideoInfo> {
    let mut child = ffmpeg_command()
        .input(ffmpeg_input(path))
        .rawvideo()
        .spawn()
        .map_err(|e| no_ffmpeg(path, &e))?;
    let metadata = child
        .iter()
        .and_then(|mut events| events.collect_metadata());
    let _ = child.kill();
    let _ = child.wait();
    let metadata = metadata.map_err(|e| {
        let e = e.to_string();
        let cause = e
            .split_once("The following errors occurred: ")
            .map_or(e.as_str(), |(_, errors)| errors)
            .trim();
        let cause = if cause.is_empty() {
            "no video stream in it"
        } else {
            cause
        };
        Error::source(path, format!("ffmpeg cannot read it as video: {cause}"))
    })?;
    let Some(video) = metadata
        .input_streams
        .iter()
        .find_map(|s| s.video_data())
        .filter(|v| v.width > 0 && v.height > 0)
    else {
        return Err(Error::source(path, "ffmpeg finds no video stream in it"));
    };
    let (width, height) = (video.width, video.height);
    if u64::from(width) * u64::from(height) > crate::io::MAX_IMAGE_PIXELS {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    Ok(VideoInfo {
        width,
        height,
        fps: Some(f64::from(video.fps)).filter(|f| f.is_finite() && *f > 0.0),
        duration_s: metadata.duration().filter(|d| d.is_finite() && *d > 0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names_sort_with_their_numbers() {
        let mut names = vec!["f10.png", "f2.png", "f1.png", "g.png", "f02.png", "e9.png"];
        names.sort_by(|a, b| natural_order(a, b));
        assert_eq!(
            names,
            ["e9.png", "f1.png", "f2.png", "f02.png", "f10.png", "g.png"]
        );
    }
}
