//! 2-D medical image files: NIfTI (`.nii`, `.nii.gz`, read by the `nifti` crate) and
//! MetaImage (`.mhd` with its `.raw` or `.zraw`, parsed here: a text header of
//! `Key = Value` lines; no maintained Rust crate reads it). CAMUS ships its frames in
//! both.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use image::GrayImage;
use nifti::{NiftiObject, NiftiVolume, RandomAccessNiftiVolume};

use crate::{Error, Result};

/// Voxel values of a 2-D frame, x fastest.
struct Frame {
    width: u32,
    height: u32,
    values: Vec<f64>,
}

fn is_mhd(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mhd"))
}

/// Reads a 2-D frame (a third dimension of 1 is accepted) as 8-bit grey: values
/// that are whole numbers in 0..=255 as they are (CAMUS's images and labels), any
/// other range scaled linearly from its minimum and maximum.
pub(crate) fn read_slice(path: &Path) -> Result<GrayImage> {
    let frame = read_frame(path)?;
    let in_range = frame
        .values
        .iter()
        .all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0);
    let (lo, hi) = frame
        .values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    let pixels = frame
        .values
        .iter()
        .map(|&v| {
            if in_range {
                v as u8
            } else {
                ((v - lo) * scale).round().clamp(0.0, 255.0) as u8
            }
        })
        .collect();
    GrayImage::from_raw(frame.width, frame.height, pixels)
        .ok_or_else(|| Error::source(path, "frame size does not match its data"))
}

/// The pixel size in millimetres recorded in a volume's header (the first spacing).
pub(crate) fn read_spacing(path: &Path) -> Result<Option<f64>> {
    if is_mhd(path) {
        let header = MetaHeader::read(path)?;
        Ok(header.spacing_mm)
    } else {
        let header =
            nifti::NiftiHeader::from_file(path).map_err(|e| Error::source(path, e.to_string()))?;
        Ok(nifti_spacing(&header))
    }
}

fn nifti_spacing(header: &nifti::NiftiHeader) -> Option<f64> {
    // Through the shortest decimal of the f32, so that 0.154 stays 0.154.
    let s: f64 = header.pixdim[1].to_string().parse().ok()?;
    (s.is_finite() && s > 0.0).then_some(s)
}

fn read_frame(path: &Path) -> Result<Frame> {
    if is_mhd(path) {
        return MetaHeader::read(path)?.read_frame(path);
    }
    let object = nifti::ReaderOptions::new()
        .read_file(path)
        .map_err(|e| Error::source(path, e.to_string()))?;
    let volume = object.into_volume();
    let dim = volume.dim().to_vec();
    let (width, height) = match dim.as_slice() {
        [w, h] | [w, h, 1] => (*w, *h),
        other => {
            return Err(Error::source(
                path,
                format!("is a {other:?} volume; a 2-D frame (W x H or W x H x 1) was expected"),
            ))
        }
    };
    let mut values = Vec::with_capacity(usize::from(width) * usize::from(height));
    for y in 0..height {
        for x in 0..width {
            let coords: &[u16] = if dim.len() == 2 { &[x, y] } else { &[x, y, 0] };
            values.push(
                volume
                    .get_f64(coords)
                    .map_err(|e| Error::source(path, e.to_string()))?,
            );
        }
    }
    Ok(Frame {
        width: u32::from(width),
        height: u32::from(height),
        values,
    })
}

/// Decodes one element from its bytes (`true`: most significant byte first).
type ReadElement = fn(&[u8], bool) -> f64;

/// The fields of a MetaImage header that a 2-D frame needs.
struct MetaHeader {
    dims: Vec<u32>,
    element: (usize, ReadElement),
    msb: bool,
    compressed: bool,
    data_file: PathBuf,
    spacing_mm: Option<f64>,
}

impl MetaHeader {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let fields: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |key: &str| {
            fields
                .get(key)
                .ok_or_else(|| Error::source(path, format!("the header has no `{key}`")))
        };
        let dims: Vec<u32> = get("DimSize")?
            .split_whitespace()
            .map(|d| {
                d.parse().map_err(|_| {
                    Error::source(path, format!("DimSize value `{d}` is not a whole number"))
                })
            })
            .collect::<Result<_>>()?;
        let element: (usize, ReadElement) = match get("ElementType")?.as_str() {
            "MET_UCHAR" => (1, |b, _| f64::from(b[0])),
            "MET_CHAR" => (1, |b, _| f64::from(b[0] as i8)),
            "MET_USHORT" => (2, |b, msb| {
                let a = [b[0], b[1]];
                f64::from(if msb { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) })
            }),
            "MET_SHORT" => (2, |b, msb| {
                let a = [b[0], b[1]];
                f64::from(if msb { i16::from_be_bytes(a) } else { i16::from_le_bytes(a) })
            }),
            "MET_FLOAT" => (4, |b, msb| {
                let a = [b[0], b[1], b[2], b[3]];
                f64::from(if msb { f32::from_be_bytes(a) } else { f32::from_le_bytes(a) })
            }),
            other => {
                return Err(Error::source(
                    path,
                    format!("ElementType {other} is not read (MET_UCHAR, MET_CHAR, MET_USHORT, MET_SHORT, MET_FLOAT are)"),
                ))
            }
        };
        let flag = |key: &str| {
            fields
                .get(key)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        };
        let data_file = get("ElementDataFile")?;
        if data_file == "LOCAL" || data_file.starts_with("LIST") {
            return Err(Error::source(
                path,
                format!("ElementDataFile {data_file} is not read (a separate .raw file is)"),
            ));
        }
        let spacing_mm = fields
            .get("ElementSpacing")
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0);
        Ok(Self {
            dims,
            element,
            msb: flag("BinaryDataByteOrderMSB") || flag("ElementByteOrderMSB"),
            compressed: flag("CompressedData"),
            data_file: path.with_file_name(data_file),
            spacing_mm,
        })
    }

    fn read_frame(&self, path: &Path) -> Result<Frame> {
        let (width, height) = match self.dims.as_slice() {
            [w, h] | [w, h, 1] => (*w, *h),
            other => {
                return Err(Error::source(
                    path,
                    format!("is a {other:?} volume; a 2-D frame (W x H or W x H x 1) was expected"),
                ))
            }
        };
        let pixels = u64::from(width) * u64::from(height);
        if pixels > crate::io::MAX_IMAGE_PIXELS {
            return Err(Error::ImageTooLarge {
                path: path.to_path_buf(),
                width,
                height,
            });
        }
        let raw = std::fs::read(&self.data_file).map_err(|source| Error::Io {
            path: self.data_file.clone(),
            source,
        })?;
        let (size, read) = self.element;
        let expected = pixels as usize * size;
        let bytes = if self.compressed {
            let mut out = Vec::with_capacity(expected);
            flate2::read::ZlibDecoder::new(raw.as_slice())
                .take(expected as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Error::source(&self.data_file, format!("is not zlib data: {e}")))?;
            out
        } else {
            raw
        };
        if bytes.len() != expected {
            return Err(Error::source(
                &self.data_file,
                format!(
                    "holds {} bytes; {width} x {height} elements of {size} byte(s) need {expected}",
                    bytes.len()
                ),
            ));
        }
        Ok(Frame {
            width,
            height,
            values: bytes
                .chunks_exact(size)
                .map(|b| read(b, self.msb))
                .collect(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a 2-D uint8 NIfTI-1 file (`.nii` or, by its name, `.nii.gz`).
    pub(crate) fn write_nifti_u8(
        path: &Path,
        width: u16,
        height: u16,
        pixels: &[u8],
        spacing: f32,
    ) {
        let mut header = vec![0u8; 352];
        header[0..4].copy_from_slice(&348i32.to_le_bytes());
        let dims = [2i16, width as i16, height as i16, 1, 1, 1, 1, 1];
        for (i, d) in dims.iter().enumerate() {
            header[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
        }
        header[70..72].copy_from_slice(&2i16.to_le_bytes()); // DT_UINT8
        header[72..74].copy_from_slice(&8i16.to_le_bytes()); // bitpix
        let pixdim = [1.0f32, spacing, spacing, 1.0, 0.0, 0.0, 0.0, 0.0];
        for (i, d) in pixdim.iter().enumerate() {
            header[76 + 4 * i..80 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        header[108..112].copy_from_slice(&352f32.to_le_bytes()); // vox_offset
        header[112..116].copy_from_slice(&1f32.to_le_bytes()); // scl_slope
        header[344..348].copy_from_slice(b"n+1\0");
        let mut bytes = header;
        bytes.extend_from_slice(pixels);
        if path.to_string_lossy().ends_with(".gz") {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            bytes = gz.finish().unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// Writes a 2-D MET_UCHAR MetaImage (`.mhd` beside its `.raw`).
    pub(crate) fn write_mhd_u8(path: &Path, width: u32, height: u32, pixels: &[u8], spacing: f64) {
        let raw = path.with_extension("raw");
        let header = format!(
            "ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
             CompressedData = False\nElementSpacing = {spacing} {spacing}\nDimSize = {width} {height}\n\
             ElementType = MET_UCHAR\nElementDataFile = {}\n",
            raw.file_name().unwrap().to_string_lossy()
        );
        std::fs::write(path, header).unwrap();
        std::fs::write(raw, pixels).unwrap();
    }

    #[test]
    fn nifti_and_metaimage_frames_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..6 * 4).map(|i| (i * 7) as u8).collect();
        let nii = dir.path().join("a.nii.gz");
        write_nifti_u8(&nii, 6, 4, &pixels, 0.25);
        let mhd = dir.path().join("a.mhd");
        write_mhd_u8(&mhd, 6, 4, &pixels, 0.25);
        for path in [&nii, &mhd] {
            let img = read_slice(path).unwrap();
            assert_eq!(img.dimensions(), (6, 4));
            assert_eq!(img.as_raw(), &pixels, "{}", path.display());
            assert_eq!(read_spacing(path).unwrap(), Some(0.25));
        }
    }

    #[test]
    fn broken_volumes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mhd = dir.path().join("b.mhd");
        write_mhd_u8(&mhd, 6, 4, &[0; 10], 1.0);
        let err = read_slice(&mhd).unwrap_err().to_string();
        assert!(
            err.contains("b.raw") && err.contains("holds 10 bytes"),
            "{err}"
        );
        std::fs::write(&mhd, "NDims = 2\n").unwrap();
        let err = read_slice(&mhd).unwrap_err().to_string();
        assert!(err.contains("b.mhd") && err.contains("DimSize"), "{err}");
        let nii = dir.path().join("c.nii");
        std::fs::write(&nii, b"not a nifti file at all").unwrap();
        assert!(read_slice(&nii).unwrap_err().to_string().contains("c.nii"));
    }
}
