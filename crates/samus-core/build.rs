//! With the `cuda` feature, compiles `kernels/fused_attention.cu` with `nvcc` into a
//! fat binary holding machine code for each compute capability listed in
//! `SAMUS_CUDA_CAPS` (for example `80,90`), else the one of `CUDA_COMPUTE_CAP` (the
//! single value candle's own kernels are built for), else what `nvidia-smi` reports,
//! else 80; plus PTX of the lowest one, which the driver JIT-compiles on newer GPUs.
//! Without the feature it does nothing.
//!
//! `NVCC` names the compiler (default: `nvcc` on `PATH`, else
//! `$CUDA_ROOT/bin/nvcc`); see `scripts/install-cuda-toolchain.sh`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL: &str = "kernels/fused_attention.cu";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed={KERNEL}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=SAMUS_CUDA_CAPS");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    if let Err(message) = build() {
        eprintln!("error: building the samus-core CUDA kernels: {message}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let caps = compute_caps()?;
    let nvcc = nvcc_path();
    let output = out_dir.join("fused_attention.fatbin");
    let mut cmd = Command::new(&nvcc);
    cmd.args(["--fatbin", "-O3", "-std=c++17", "--expt-relaxed-constexpr"]);
    for cap in &caps {
        cmd.arg(format!("-gencode=arch=compute_{cap},code=sm_{cap}"));
    }
    // PTX of the lowest capability: JIT-compiled by the driver on any newer GPU.
    let lowest = caps
        .iter()
        .min_by_key(|cap| numeric_cap(cap))
        .ok_or("no compute capability")?;
    let virtual_cap = lowest.trim_end_matches(['a', 'f']);
    cmd.arg(format!(
        "-gencode=arch=compute_{virtual_cap},code=compute_{virtual_cap}"
    ));
    cmd.arg("-o").arg(&output).arg(KERNEL);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e} (set NVCC or PATH)", nvcc.display()))?;
    if !status.success() {
        return Err(format!("{} failed ({status}) on {KERNEL}", nvcc.display()));
    }
    println!(
        "cargo:rustc-env=SAMUS_CUDA_FATBIN_ARCHS={}",
        caps.iter()
            .map(|c| format!("sm_{c}"))
            .chain([format!("compute_{virtual_cap}")])
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(())
}

/// The compute capabilities to compile for, as nvcc writes them (`80`, `90a`).
fn compute_caps() -> Result<Vec<String>, String> {
    let from_env = env::var("SAMUS_CUDA_CAPS").or_else(|_| env::var("CUDA_COMPUTE_CAP"));
    let raw = match from_env {
        Ok(value) => value,
        Err(_) => match query_nvidia_smi() {
            Some(cap) => cap,
            None => {
                println!(
                    "cargo:warning=neither SAMUS_CUDA_CAPS nor CUDA_COMPUTE_CAP is set and nvidia-smi found no GPU: \
                     compiling the samus-core kernels for compute capability 8.0 (PTX runs on 8.0 and newer)"
                );
                "80".to_string()
            }
        },
    };
    let caps: Vec<String> = raw
        .split([',', ' '])
        .map(|c| c.trim().replace('.', ""))
        .filter(|c| !c.is_empty())
        .collect();
    if caps.is_empty() {
        return Err(format!(
            "CUDA_COMPUTE_CAP={raw:?} names no compute capability"
        ));
    }
    for cap in &caps {
        if numeric_cap(cap) < 75 {
            return Err(format!(
                "compute capability {cap} is not supported (CUDA 13 needs 7.5 or newer)"
            ));
        }
    }
    Ok(caps)
}

fn numeric_cap(cap: &str) -> u32 {
    cap.trim_end_matches(['a', 'f']).parse().unwrap_or(0)
}

fn query_nvidia_smi() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?.trim().replace('.', "");
    (!first.is_empty()).then_some(first)
}

fn nvcc_path() -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC") {
        return PathBuf::from(nvcc);
    }
    let on_path = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join("nvcc").is_file()))
        .unwrap_or(false);
    if !on_path {
        for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
            if let Some(root) = env::var_os(var) {
                let candidate = Path::new(&root).join("bin").join("nvcc");
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
    }
    PathBuf::from("nvcc")
}
