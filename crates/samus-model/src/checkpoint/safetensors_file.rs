//! Reading safetensors checkpoints: the header checked entry by entry (an error
//! names the first tensor whose entry is wrong: the `safetensors` crate's errors for
//! a size that does not match the offsets, or for data that does not cover the file,
//! name none), then each tensor read from the file straight into its own buffer.
//!
//! candle's `safetensors::load` reads the whole file into memory and then copies
//! every tensor out of it: twice the checkpoint at the peak, and a second pass over
//! it. A ViT-B checkpoint (533 MB) took 1.7 s and 1.07 GB to read that way.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use safetensors::Dtype;
use serde::Deserialize;

/// The largest header the `safetensors` crate reads (its `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor's entry in the header.
#[derive(Deserialize)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// A checked header: the entries in the order of their data, and where the data
/// starts in the file.
struct Header {
    entries: Vec<(String, Entry)>,
    data_start: u64,
}

/// Reads and checks the header of the safetensors file `file`; the error says what
/// is wrong, naming the tensor where there is one.
fn read_header(file: &mut std::fs::File) -> Result<Header, String> {
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "the file is too short to hold a header".to_string())?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(8) {
        return Err(format!(
            "its header claims {header_len} bytes, beyond the file ({file_len} bytes) or the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    let mut header = Vec::new();
    file.take(header_len)
        .read_to_end(&mut header)
        .map_err(|e| e.to_string())?;
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("its header is not a JSON object: {e}"))?;
    let data_len = file_len - 8 - header_len;

    let mut entries = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        if name == "__metadata__" {
            continue;
        }
        match Entry::deserialize(value) {
            Ok(entry) => entries.push((name, entry)),
            Err(e) => return Err(format!("tensor `{name}`: its header entry is invalid: {e}")),
        }
    }
    entries.sort_by_key(|(_, entry)| entry.data_offsets);

    let mut end_of_previous: (u64, Option<&str>) = (0, None);
    for (name, entry) in &entries {
        let (start, end) = entry.data_offsets;
        if end < start {
            return Err(format!(
                "tensor `{name}`: its data offsets [{start}, {end}) end before they start"
            ));
        }
        if end > data_len {
            return Err(format!(
                "tensor `{name}`: its data [{start}, {end}) runs past the file's {data_len} bytes of tensor data"
            ));
        }
        let needed = entry
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|n| n.checked_mul(entry.dtype.bitsize() as u64))
            .map(|bits| bits.div_ceil(8));
        if needed != Some(end - start) {
            let needed = needed.map_or("more than 2^64".to_string(), |n| n.to_string());
            return Err(format!(
                "tensor `{name}`: shape {:?} of {:?} needs {needed} bytes, its offsets [{start}, {end}) hold {}",
                entry.shape,
                entry.dtype,
                end - start
            ));
        }
        if start != end_of_previous.0 {
            let after = match end_of_previous.1 {
                Some(previous) => format!("tensor `{previous}` ends at byte {}", end_of_previous.0),
                None => "the data starts at byte 0".to_string(),
            };
            return Err(format!(
                "tensor `{name}`: its data starts at byte {start}, but {after} (tensors must follow each other without gaps or overlaps)"
            ));
        }
        end_of_previous = (end, Some(name));
    }
    if end_of_previous.0 != data_len {
        return Err(format!(
            "the tensors' data ends at byte {}, but the file holds {data_len} bytes of tensor data",
            end_of_previous.0
        ));
    }
    Ok(Header {
        entries,
        data_start: 8 + header_len,
    })
}

/// Reads every tensor of the safetensors file `path` to the CPU; the error says
/// what is wrong, naming the tensor where there is one.
///
/// The tensors are read in as many runs of consecutive tensors as rayon's pool has
/// threads, each run on its own thread with its own handle on the file: most of a
/// read's time is the kernel's zeroing and mapping of the fresh pages each tensor
/// is read into, and that work then runs on every core. A ViT-B checkpoint (533 MB,
/// in the page cache) took 0.41 to 0.46 s to read on one thread of the two-core
/// machine of docs/PERFORMANCE.md.
pub(super) fn read(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let header = read_header(&mut file)?;
    let runs = consecutive_runs(header.entries, rayon::current_num_threads());
    let read_run = |run: Vec<(String, Entry)>| -> Result<Vec<(String, Tensor)>, String> {
        let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut tensors = Vec::with_capacity(run.len());
        for (name, entry) in run {
            let (start, end) = entry.data_offsets;
            let tensor = file
                .seek(SeekFrom::Start(header.data_start + start))
                .map_err(|e| e.to_string())
                .and_then(|_| read_tensor(&mut file, &entry, (end - start) as usize))
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            tensors.push((name, tensor));
        }
        Ok(tensors)
    };
    let read: Vec<_> =
        samus_core::parallel::run_in_pool(|| runs.into_par_iter().map(read_run).collect());
    let mut tensors = HashMap::new();
    // The first error in the file's order, as a reading on one thread would meet it.
    for run in read {
        tensors.extend(run?);
    }
    Ok(tensors)
}

/// `entries` (in the order of their data) cut into at most `parts` runs of
/// consecutive entries holding about the same number of bytes.
fn consecutive_runs(entries: Vec<(String, Entry)>, parts: usize) -> Vec<Vec<(String, Entry)>> {
    let total: u64 = entries
        .iter()
        .map(|(_, e)| e.data_offsets.1 - e.data_offsets.0)
        .sum();
    let share = total.div_ceil(parts.max(1) as u64).max(1);
    let mut runs: Vec<Vec<(String, Entry)>> = vec![Vec::new()];
    let mut in_run = 0u64;
    for (name, entry) in entries {
        let bytes = entry.data_offsets.1 - entry.data_offsets.0;
        if in_run >= share {
            runs.push(Vec::new());
            in_run = 0;
        }
        in_run += bytes;
        if let Some(run) = runs.last_mut() {
            run.push((name, entry));
        }
    }
    runs
}

/// One tensor's `bytes` bytes from `file`: f32 (every SAMUS and SAM checkpoint)
/// read straight into the tensor's own buffer, the other types through a byte
/// buffer.
fn read_tensor(file: &mut std::fs::File, entry: &Entry, bytes: usize) -> Result<Tensor, String> {
    let shape = entry.shape.as_slice();
    #[cfg(target_endian = "little")]
    if entry.dtype == Dtype::F32 {
        let mut values = vec![0f32; bytes / 4];
        // SAFETY: any bytes are a valid `u8`, and the view covers exactly the
        // vector's values; on a little-endian target the file's bytes are the f32
        // values as they are stored.
        let raw = unsafe {
            std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), values.len() * 4)
        };
        file.read_exact(raw).map_err(|e| e.to_string())?;
        return Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| e.to_string());
    }
    let dtype = match entry.dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        other => return Err(format!("its data type {other:?} is not supported")),
    };
    let mut raw = vec![0u8; bytes];
    file.read_exact(&mut raw).map_err(|e| e.to_string())?;
    Tensor::from_raw_buffer(&raw, dtype, shape, &Device::Cpu).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(sizes: &[u64]) -> Vec<(String, Entry)> {
        let mut offset = 0;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| {
                let entry = Entry {
                    dtype: Dtype::U8,
                    shape: vec![bytes as usize],
                    data_offsets: (offset, offset + bytes),
                };
                offset += bytes;
                (format!("t{i}"), entry)
            })
            .collect()
    }

    #[test]
    fn runs_keep_every_entry_in_order_and_share_the_bytes() {
        for (sizes, parts) in [
            (vec![10, 10, 10, 10], 2),
            (vec![100, 1, 1, 1, 1], 2),
            (vec![5; 17], 3),
            (vec![0, 0, 7], 4),
            (vec![3], 8),
            (vec![], 2),
        ] {
            let runs = consecutive_runs(entries(&sizes), parts);
            assert!(runs.len() <= parts.max(1), "{sizes:?}: {} runs", runs.len());
            let names: Vec<String> = runs.iter().flatten().map(|(n, _)| n.clone()).collect();
            let want: Vec<String> = (0..sizes.len()).map(|i| format!("t{i}")).collect();
            assert_eq!(names, want, "{sizes:?} in {parts} parts");
            let total: u64 = sizes.iter().sum();
            let share = total.div_ceil(parts as u64);
            for run in &runs {
                // A run closes once it holds its share: it exceeds it by at most
                // its last entry.
                let bytes: Vec<u64> = run
                    .iter()
                    .map(|(_, e)| e.data_offsets.1 - e.data_offsets.0)
                    .collect();
                let before_last: u64 = bytes.iter().rev().skip(1).sum();
                assert!(
                    before_last < share.max(1),
                    "{sizes:?}: run {bytes:?}, share {share}"
                );
            }
        }
    }
}
