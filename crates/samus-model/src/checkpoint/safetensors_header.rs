//! Naming what is wrong with a safetensors header that the `safetensors` crate
//! refuses. Its errors for a size that does not match the offsets, or for data that
//! does not cover the file, name no tensor; this reads the header again (only when
//! loading has failed) and names the first tensor whose entry is wrong.

use std::io::Read;
use std::path::Path;

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

/// What is wrong with the header of the safetensors file at `path`, naming the
/// tensor, or `None` when nothing specific can be said.
pub(super) fn explain(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let file_len = file.metadata().ok()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(8) {
        return None;
    }
    let mut header = Vec::new();
    file.take(header_len).read_to_end(&mut header).ok()?;
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    let data_len = file_len - 8 - header_len;

    let mut entries = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        if name == "__metadata__" {
            continue;
        }
        match Entry::deserialize(value) {
            Ok(entry) => entries.push((name, entry)),
            Err(e) => return Some(format!("tensor `{name}`: its header entry is invalid: {e}")),
        }
    }
    entries.sort_by_key(|(_, entry)| entry.data_offsets);

    let mut end_of_previous: (u64, Option<&str>) = (0, None);
    for (name, entry) in &entries {
        let (start, end) = entry.data_offsets;
        if end < start {
            return Some(format!(
                "tensor `{name}`: its data offsets [{start}, {end}) end before they start"
            ));
        }
        if end > data_len {
            return Some(format!(
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
            return Some(format!(
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
            return Some(format!(
                "tensor `{name}`: its data starts at byte {start}, but {after} (tensors must follow each other without gaps or overlaps)"
            ));
        }
        end_of_previous = (end, Some(name));
    }
    if end_of_previous.0 != data_len {
        return Some(format!(
            "the tensors' data ends at byte {}, but the file holds {data_len} bytes of tensor data",
            end_of_previous.0
        ));
    }
    None
}
