//! Reading PyTorch `.pth` (zip) checkpoints through candle's pickle reader: a SAM
//! checkpoint written in PyTorch's format loads exactly as its safetensors twin.

use std::collections::HashMap;
use std::io::Write;

use candle_core::{Device, Tensor};
use samus_model::checkpoint::read_tensors;
use samus_model::{CheckpointKind, Samus, SamusConfig};

#[path = "support/pth_writer.rs"]
mod pth_writer;
use pth_writer::{write_pth, write_pth_raw};

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

#[test]
fn a_pickle_naming_a_foreign_global_is_called_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("hostile.pth");
    let file = std::fs::File::create(&path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    // `posix.system("touch pwned")`, as a hostile pickle would call it.
    let mut pickle = b"\x80\x02cposix\nsystem\nX\x0b\x00\x00\x00".to_vec();
    pickle.extend_from_slice(b"touch pwned\x85R.");
    zip.write_all(&pickle).unwrap();
    zip.finish().unwrap();
    let err = read_tensors(&path).unwrap_err().to_string();
    assert!(
        err.contains("hostile.pth") && err.contains("`posix.system`") && err.contains("no tensors"),
        "{err}"
    );
    assert!(!tmp.path().join("pwned").exists() && !std::path::Path::new("pwned").exists());
}
