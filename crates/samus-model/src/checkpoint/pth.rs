//! PyTorch zip (`.pth`) checkpoints, read through candle's pickle reader, which
//! never calls what a pickle names: it only records it. Two checks are ours: every
//! tensor's declared size against its data in the zip (before anything is
//! allocated), and, when no tensors are found, which foreign global the pickle
//! named, so that a hostile or unusual file is called what it is.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::Tensor;

use super::checkpoint_error;
use crate::error::{Error, Result};

/// Reads a PyTorch zip checkpoint: the state dict at the top level or under
/// `model` or `state_dict`, every tensor's declared size checked against its data
/// in the file first (a forged shape must not allocate terabytes).
pub(super) fn read_pth(path: &Path) -> Result<HashMap<String, Tensor>> {
    for key in [None, Some("model"), Some("state_dict")] {
        let pth = match candle_core::pickle::PthTensors::new(path, key) {
            Ok(pth) => pth,
            Err(e) if key.is_none() => {
                return Err(checkpoint_error(
                    path,
                    format!("not a readable PyTorch checkpoint: {e}"),
                ))
            }
            Err(_) => continue,
        };
        if pth.tensor_infos().is_empty() {
            continue;
        }
        check_pth_sizes(path, pth.tensor_infos())?;
        let mut tensors = HashMap::with_capacity(pth.tensor_infos().len());
        for name in pth.tensor_infos().keys() {
            let tensor = pth.get(name).map_err(|e| {
                checkpoint_error(path, format!("tensor `{name}` cannot be read: {e}"))
            })?;
            if let Some(tensor) = tensor {
                tensors.insert(name.clone(), tensor);
            }
        }
        return Ok(tensors);
    }
    let message = match first_foreign_global(path) {
        Some(global) => format!(
            "the PyTorch checkpoint holds no tensors; its pickle names `{global}`, which is \
             neither a tensor nor a dictionary (it was not called)"
        ),
        None => "the PyTorch checkpoint holds no tensors".to_string(),
    };
    Err(checkpoint_error(path, message))
}

/// Fails with [`Error::TensorData`] when a tensor of a `.pth` declares more bytes
/// than its storage record in the zip file holds.
fn check_pth_sizes(
    path: &Path,
    infos: &HashMap<String, candle_core::pickle::TensorInfo>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| checkpoint_error(path, format!("not a readable zip file: {e}")))?;
    for (name, info) in infos {
        let available = zip
            .by_name(&info.path)
            .map_err(|e| {
                checkpoint_error(
                    path,
                    format!(
                        "tensor `{name}`: its data record `{}` is missing: {e}",
                        info.path
                    ),
                )
            })?
            .size();
        let dims = info.layout.dims();
        let needed = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|n| n.checked_add(info.layout.start_offset() as u64))
            .and_then(|n| n.checked_mul(info.dtype.size_in_bytes() as u64))
            .unwrap_or(u64::MAX);
        if needed > available {
            return Err(Error::TensorData {
                path: Some(path.to_path_buf()),
                name: name.clone(),
                shape: dims.to_vec(),
                needed,
                available,
            });
        }
    }
    Ok(())
}

/// The largest pickle read again to name a foreign global (state-dict pickles are a
/// few megabytes even for ViT-H).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Whether a pickle global is one that `torch.save` writes for a state dict.
fn is_state_dict_global(module: &str) -> bool {
    module == "collections"
        || module == "__torch__"
        || module == "torch"
        || module.starts_with("torch.")
        || module.starts_with("__torch__.")
}

/// The first global (`module.name`) of the checkpoint's pickle that a state dict does
/// not use (`posix.system`, `builtins.eval`, ...), or `None` if there is none or the
/// pickle cannot be read again.
fn first_foreign_global(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
    let name = zip
        .file_names()
        .filter_map(|name| name.ok())
        .find(|name| name.ends_with("data.pkl"))?
        .into_owned();
    let record = zip.by_name(&name).ok()?;
    let mut reader = std::io::BufReader::new(record.take(MAX_PICKLE_BYTES));
    let mut stack = Stack::empty();
    // A pickle that fails half-way still names the globals read until then.
    let _ = stack.read_loop(&mut reader);
    // An explicit work list: a hostile pickle may nest deeper than the call stack.
    let mut pending: Vec<&Object> = stack.stack().iter().collect();
    while let Some(object) = pending.pop() {
        match object {
            Object::Class {
                module_name,
                class_name,
            } if !is_state_dict_global(module_name) => {
                return Some(format!("{module_name}.{class_name}"));
            }
            Object::Tuple(items) | Object::List(items) => pending.extend(items.iter()),
            Object::Dict(pairs) => pending.extend(pairs.iter().flat_map(|(k, v)| [k, v])),
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                pending.push(args);
                pending.push(callable);
            }
            Object::PersistentLoad(inner) => pending.push(inner),
            _ => {}
        }
    }
    None
}
