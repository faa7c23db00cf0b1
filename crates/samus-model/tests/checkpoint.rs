//! Loading checkpoints: SAM -> SAMUS conversion, strict SAMUS loading, config guessing.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use samus_core::fixtures::{fixtures_or_skip, relative_error};
use samus_model::checkpoint::{infer_config, read_tensors};
use samus_model::{CheckpointKind, Samus, SamusConfig};

fn is_samus_only(name: &str) -> bool {
    name.contains("cnn_embed") || name.contains("post_pos_embed") || name.contains("Adapter")
}

#[test]
fn sam_checkpoint_converts_like_the_reference() {
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let cfg = SamusConfig::from_json_file(dir.join("samus_tiny.json")).unwrap();
    let io = candle_core::safetensors::load(dir.join("samus_tiny_io.safetensors"), &Device::Cpu)
        .unwrap();
    // A SAM checkpoint: the SAMUS weights without the SAMUS-only tensors, and with the
    // global blocks' tables at SAM's 2 * 64 - 1 rows.
    let mut sam: HashMap<String, Tensor> = read_tensors(dir.join("samus_tiny.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !is_samus_only(k))
        .collect();
    let sam_table = io["convert.sam_rel_pos"].clone();
    for i in &cfg.global_attn_indexes {
        for axis in ["h", "w"] {
            sam.insert(
                format!("image_encoder.blocks.{i}.attn.rel_pos_{axis}"),
                sam_table.clone(),
            );
        }
    }
    let guessed = infer_config(&sam).unwrap();
    assert_eq!(
        guessed,
        SamusConfig { ..cfg.clone() },
        "config guessed from a SAM checkpoint"
    );

    let (model, report) = Samus::loader_from_tensors(sam)
        .config(cfg.clone())
        .device(&Device::Cpu)
        .init_seed(5)
        .load_with_report()
        .unwrap();
    assert_eq!(report.kind, CheckpointKind::Sam);
    // Exactly the SAMUS-only tensors start fresh: the fixture's trainable set minus the
    // converted rel-pos tables.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("samus_tiny.json")).unwrap())
            .unwrap();
    let mut expected: Vec<String> = meta["trainable"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|n| !n.contains("rel_pos"))
        .map(String::from)
        .collect();
    expected.sort();
    assert_eq!(report.initialised, expected);
    assert!(report.unused.is_empty());
    // The converted tables equal the reference conversion.
    for &i in &cfg.global_attn_indexes {
        let (h, w) = model.image_encoder().blocks()[i]
            .attention()
            .rel_pos_tables();
        assert!(relative_error(h, &io["convert.samus_rel_pos"]).unwrap() <= 1e-4);
        assert!(relative_error(w, &io["convert.samus_rel_pos"]).unwrap() <= 1e-4);
    }
    // Fresh LayerNorms start at weight 1, bias 0; fresh linears within PyTorch's bound.
    let fresh = &report.tensors;
    let ln = fresh["image_encoder.cnn_embed.inc.conv.1.weight"]
        .to_vec1::<f32>()
        .unwrap();
    assert!(ln.iter().all(|&v| v == 1.0));
    let fc1 = fresh["image_encoder.input_Adapter.D_fc1.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bound = 1.0 / (cfg.embed_dim as f32).sqrt();
    assert!(fc1.iter().all(|v| v.abs() <= bound) && fc1.iter().any(|v| v.abs() > bound / 2.0));
    // The converted model runs.
    let image = Tensor::rand(0f32, 1.0, (1, 1, 256, 256), &Device::Cpu).unwrap();
    let emb = model.embed_image(&image).unwrap();
    assert_eq!(emb.dims(), &[1, 256, 32, 32]);
}

#[test]
fn strict_loading_names_the_missing_tensor() {
    let cfg = SamusConfig {
        embed_dim: 64,
        depth: 2,
        num_heads: 2,
        global_attn_indexes: vec![1],
        ..SamusConfig::vit_b()
    };
    let (_, mut tensors) = samus_model::train::random_weights(&cfg, 1, &Device::Cpu).unwrap();
    assert_eq!(infer_config(&tensors).unwrap(), cfg);
    tensors.remove("image_encoder.blocks.1.Space_Adapter.q.bias");
    let err = Samus::loader_from_tensors(tensors)
        .config(cfg.clone())
        .device(&Device::Cpu)
        .init_seed(0)
        .load_with_report()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "missing tensor `image_encoder.blocks.1.Space_Adapter.q.bias` (expected shape [64])"
        ),
        "{err}"
    );
}

#[test]
fn random_models_of_every_shape_run() {
    for cfg in [
        SamusConfig {
            embed_dim: 48,
            depth: 2,
            num_heads: 6,
            global_attn_indexes: vec![0],
            ..SamusConfig::vit_b()
        },
        SamusConfig {
            embed_dim: 64,
            depth: 3,
            num_heads: 2,
            global_attn_indexes: vec![],
            window_size: 8,
            ..SamusConfig::vit_b()
        },
        SamusConfig {
            embed_dim: 32,
            depth: 1,
            num_heads: 1,
            global_attn_indexes: vec![0],
            img_size: 128,
            ..SamusConfig::vit_b()
        },
    ] {
        let model = Samus::random(&cfg, 3, &Device::Cpu).unwrap();
        let s = cfg.img_size;
        let image = Tensor::rand(0f32, 1.0, (2, 3, s, s), &Device::Cpu).unwrap();
        let boxes =
            Tensor::new(&[[10f32, 10., 60., 70.], [0., 0., 30., 30.]], &Device::Cpu).unwrap();
        let prompts = samus_model::PromptBatch {
            boxes: Some(&boxes),
            ..Default::default()
        };
        let out = model.forward(&image, &prompts, true).unwrap();
        let low = cfg.low_res_size();
        assert_eq!(out.low_res_logits.dims(), &[2, 3, low, low]);
        assert_eq!(out.masks.dims(), &[2, 3, s, s]);
    }
}

#[test]
fn non_finite_weights_are_refused_with_the_tensor_named() {
    let cfg = SamusConfig::tiny();
    let (_, mut tensors) = samus_model::train::random_weights(&cfg, 1, &Device::Cpu).unwrap();
    let name = "mask_decoder.iou_token.weight";
    let mut values = tensors[name]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    values[3] = f32::NAN;
    values[7] = f32::INFINITY;
    let shape = tensors[name].dims().to_vec();
    tensors.insert(
        name.to_string(),
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap(),
    );
    let err = Samus::loader_from_tensors(tensors).load().unwrap_err();
    assert!(
        matches!(&err, samus_model::Error::NonFinite { name: n, count: 2, total: 256, .. } if n == name),
        "{err}"
    );
}

#[test]
fn configurations_beyond_the_limits_are_refused_by_field() {
    let huge = SamusConfig {
        depth: 1_000_000,
        ..SamusConfig::tiny()
    };
    let err = huge.validate().unwrap_err();
    assert!(
        matches!(&err, samus_model::Error::Config { field: "depth", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("1000000") && err.to_string().contains("256"));
    let wide = SamusConfig {
        embed_dim: 1 << 20,
        num_heads: 16,
        ..SamusConfig::tiny()
    };
    assert!(matches!(
        wide.validate().unwrap_err(),
        samus_model::Error::Config {
            field: "embed_dim",
            ..
        }
    ));
}

/// A safetensors file with `header` (JSON) and `data_len` zero bytes of data.
fn write_raw_safetensors(path: &std::path::Path, header: &str, data_len: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data_len, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn safetensors_headers_with_lying_offsets_name_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lying.safetensors");
    let a = r#""a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#;
    let cases = [
        // `b` says 4 floats but its offsets hold 2.
        (
            format!(r#"{{{a},"b":{{"dtype":"F32","shape":[4],"data_offsets":[16,24]}}}}"#),
            24,
            "tensor `b`: shape [4] of F32 needs 16 bytes, its offsets [16, 24) hold 8",
        ),
        // `b` runs past the end of the file.
        (
            format!(r#"{{{a},"b":{{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}}}"#),
            24,
            "tensor `b`: its data [16, 32) runs past the file's 24 bytes",
        ),
        // `b` overlaps `a`.
        (
            format!(r#"{{{a},"b":{{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}}}"#),
            16,
            "tensor `b`: its data starts at byte 8, but tensor `a` ends at byte 16",
        ),
        // Data left over after the last tensor.
        (
            format!("{{{a}}}"),
            20,
            "data ends at byte 16, but the file holds 20 bytes",
        ),
        // An entry without offsets.
        (
            format!(r#"{{{a},"b":{{"dtype":"F32","shape":[4]}}}}"#),
            16,
            "tensor `b`: its header entry is invalid",
        ),
    ];
    for (header, data_len, needle) in cases {
        write_raw_safetensors(&path, &header, data_len);
        let err = read_tensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("lying.safetensors") && err.contains(needle),
            "`{needle}` missing from: {err}"
        );
    }
    // The same file with honest offsets reads.
    write_raw_safetensors(&path, &format!("{{{a}}}"), 16);
    assert_eq!(read_tensors(&path).unwrap()["a"].dims(), [2, 2]);
}

#[test]
fn safetensors_read_tensor_by_tensor_equals_candles_reader() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mixed.safetensors");
    let base = Tensor::arange(-6f32, 6., &dev)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let mut tensors = HashMap::new();
    tensors.insert("f32".to_string(), base.clone());
    for (name, dtype) in [
        ("f16", candle_core::DType::F16),
        ("bf16", candle_core::DType::BF16),
        ("f64", candle_core::DType::F64),
        ("i64", candle_core::DType::I64),
    ] {
        tensors.insert(name.to_string(), base.to_dtype(dtype).unwrap());
    }
    tensors.insert("u8".to_string(), Tensor::new(&[0u8, 7, 255], &dev).unwrap());
    tensors.insert(
        "empty".to_string(),
        Tensor::zeros((0, 5), candle_core::DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ours = read_tensors(&path).unwrap();
    let candles = candle_core::safetensors::load(&path, &dev).unwrap();
    assert_eq!(ours.len(), candles.len());
    for (name, want) in &candles {
        let got = &ours[name];
        assert_eq!(
            (got.dtype(), got.dims()),
            (want.dtype(), want.dims()),
            "{name}"
        );
        let (g, w) = (
            got.to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap(),
            want.to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap(),
        );
        assert_eq!(
            g.to_vec1::<f64>().unwrap(),
            w.to_vec1::<f64>().unwrap(),
            "{name}"
        );
    }
    // The fixture checkpoint, bit for bit.
    let Some(dir) = fixtures_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let fixture = dir.join("samus_tiny.safetensors");
    let (ours, candles) = (
        read_tensors(&fixture).unwrap(),
        candle_core::safetensors::load(&fixture, &dev).unwrap(),
    );
    assert_eq!(ours.len(), candles.len());
    for (name, want) in &candles {
        let got = ours[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
    }
}
