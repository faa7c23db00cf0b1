//! Reading PyTorch `.pth` (zip) checkpoints through candle's pickle reader: a SAM
//! checkpoint written in PyTorch's format loads exactly as its safetensors twin.

use std::collections::HashMap;
use std::io::Write;

use candle_core::{Device, Tensor};
use samus_model::checkpoint::read_tensors;
use samus_model::{CheckpointKind, Samus, SamusConfig};

/// Pickle (protocol 2) of an OrderedDict of float32 tensors, as `torch.save` writes
/// it: each tensor is `_rebuild_tensor_v2(persistent storage, offset, shape, stride, ...)`.
fn state_dict_pickle(names: &[(String, Vec<usize>)]) -> Vec<u8> {
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

fn write_pth(path: &std::path::Path, tensors: &HashMap<String, Tensor>) {
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
fn write_pth_raw(path: &std::path::Path, entries: &[(String, Vec<usize>)], data: &[Vec<u8>]) {
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

#[test]
fn a_forged_shape_is_refused_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("forged.pth");
    write_pth_raw(
        &path,
        &[("huge".to_string(), vec![1 << 30, 1024])],
        &[vec![0u8; 16]],
    );
    let err = read_tensors(&path).unwrap_err();
    match &err {
        samus_model::Error::TensorData {
            name,
            needed,
            available,
            ..
        } => {
            assert_eq!(name, "huge");
            assert_eq!(*needed, 4 << 40);
            assert_eq!(*available, 16);
        }
        other => panic!("expected a size error, got {other}"),
    }
    assert!(err.to_string().contains("forged.pth"), "{err}");
}

#[test]
fn random_bytes_are_not_called_a_bad_safetensors_header() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("noise.pth");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, bytes).unwrap();
    let err = read_tensors(&path).unwrap_err().to_string();
    assert!(
        err.contains("noise.pth") && err.contains("neither a safetensors file nor a PyTorch"),
        "{err}"
    );
}

#[test]
fn sam_pth_checkpoint_loads_like_safetensors() {
    let cfg = SamusConfig {
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        global_attn_indexes: vec![1],
        ..SamusConfig::vit_b()
    };
    let (_, all) = samus_model::train::random_weights(&cfg, 2, &Device::Cpu).unwrap();
    let sam: HashMap<String, Tensor> = all
        .into_iter()
        .filter(|(k, _)| {
            !(k.contains("cnn_embed") || k.contains("post_pos_embed") || k.contains("Adapter"))
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let pth = tmp.path().join("sam.pth");
    let st = tmp.path().join("sam.safetensors");
    write_pth(&pth, &sam);
    candle_core::safetensors::save(&sam, &st).unwrap();

    let from_pth = read_tensors(&pth).unwrap();
    assert_eq!(from_pth.len(), sam.len());
    for (name, t) in &sam {
        let diff = (t - &from_pth[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    let (a, report) = Samus::loader(&pth)
        .config(cfg.clone())
        .device(&Device::Cpu)
        .load_with_report()
        .unwrap();
    let (b, _) = Samus::loader(&st)
        .config(cfg.clone())
        .device(&Device::Cpu)
        .load_with_report()
        .unwrap();
    assert_eq!(report.kind, CheckpointKind::Sam);
    let image = Tensor::rand(0f32, 1.0, (1, 1, 256, 256), &Device::Cpu).unwrap();
    let ea = a.embed_image(&image).unwrap();
    let eb = b.embed_image(&image).unwrap();
    let diff = (ea - eb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn legacy_pth_gets_a_resave_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("old.pth");
    // Legacy torch.save output starts with a bare pickle (protocol 2 magic).
    std::fs::write(
        &legacy,
        [0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20],
    )
    .unwrap();
    let err = read_tensors(&legacy).unwrap_err().to_string();
    assert!(err.contains("old.pth") && err.contains("re-save"), "{err}");
}
