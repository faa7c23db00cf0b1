//! Writes PyTorch zip (`.pth`) checkpoints as `torch.save` does, for tests: the
//! reader's tests here and the `samus` binary's fuzz tests (which include this file
//! by path).

#![allow(dead_code)] // each including test uses its own subset

use std::collections::HashMap;
use std::io::Write;

use candle_core::Tensor;

/// Pickle (protocol 2) of an OrderedDict of float32 tensors, as `torch.save` writes
/// it: each tensor is `_rebuild_tensor_v2(persistent storage, offset, shape, stride, ...)`.
pub fn state_dict_pickle(names: &[(String, Vec<usize>)]) -> Vec<u8> {
    fn unicode(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn int(out: &mut Vec<u8>, v: usize) {
        out.push(b'J');
        out.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn tuple(out: &mut Vec<u8>, values: &[usize]) {
        out.push(b'(');
        for &v in values {
            int(out, v);
        }
        out.push(b't');
    }
    let mut out = vec![0x80, 2, b'}', b'('];
    for (i, (name, shape)) in names.iter().enumerate() {
        unicode(&mut out, name);
        out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        out.push(b'(');
        unicode(&mut out, "storage");
        out.extend_from_slice(b"ctorch\nFloatStorage\n");
        unicode(&mut out, &i.to_string());
        unicode(&mut out, "cpu");
        int(&mut out, shape.iter().product());
        out.extend_from_slice(b"tQ");
        int(&mut out, 0);
        tuple(&mut out, shape);
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        tuple(&mut out, &stride);
        out.push(0x89);
        out.extend_from_slice(b"ccollections\nOrderedDict\n)R");
        out.extend_from_slice(b"tR");
    }
    out.extend_from_slice(b"u.");
    out
}

pub fn write_pth(path: &std::path::Path, tensors: &HashMap<String, Tensor>) {
    let mut entries: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    entries.sort();
    let data: Vec<Vec<u8>> = entries
        .iter()
        .map(|(name, _)| {
            let values = tensors[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        })
        .collect();
    write_pth_raw(path, &entries, &data);
}

/// A `.pth` whose pickle declares `entries` and whose storage records hold `data`
/// (which need not match: forged files).
pub fn write_pth_raw(path: &std::path::Path, entries: &[(String, Vec<usize>)], data: &[Vec<u8>]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&state_dict_pickle(entries)).unwrap();
    for (i, bytes) in data.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}
