//! `cargo xtask train`: `samus train` with the SAM weights fetched first.
//!
//! Every flag is `samus train`'s. When neither `--init` nor `--resume` is given and the
//! configuration is a SAM size (`vit_b`, the default, `vit_l` or `vit_h`), the matching
//! original SAM checkpoint is downloaded into the Hugging Face cache (or found there)
//! and passed as `--init`; then the release `samus` binary trains.

use anyhow::{bail, Context, Result};

use crate::download::{
    cached_path, download, DownloadArgs, SamModel, DEFAULT_REPO, DEFAULT_RETRIES, DEFAULT_REVISION,
};

/// The configuration `samus train` gets when none is given.
pub const DEFAULT_CONFIG: &str = "vit_b";

/// What `cargo xtask train` will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainPlan {
    /// The SAM checkpoint to fetch and pass as `--init`, if any.
    pub download: Option<SamModel>,
    /// The arguments for `samus train` (without `--init` for the download).
    pub args: Vec<String>,
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&prefix)
        }
    })
}

fn has_flag(args: &[String], flag: &str) -> bool {
    let prefix = format!("{flag}=");
    args.iter().any(|a| a == flag || a.starts_with(&prefix))
}

/// Decides what to download from the `samus train` arguments.
pub fn plan(args: &[String]) -> TrainPlan {
    let mut args = args.to_vec();
    let asks_help = args.iter().any(|a| a == "-h" || a == "--help");
    if asks_help || has_flag(&args, "--init") || has_flag(&args, "--resume") {
        return TrainPlan {
            download: None,
            args,
        };
    }
    let config = match flag_value(&args, "--config") {
        Some(c) => c.to_string(),
        None => {
            args.extend(["--config".to_string(), DEFAULT_CONFIG.to_string()]);
            DEFAULT_CONFIG.to_string()
        }
    };
    let download = match config.as_str() {
        "vit_b" => Some(SamModel::VitB),
        "vit_l" => Some(SamModel::VitL),
        "vit_h" => Some(SamModel::VitH),
        _ => None,
    };
    TrainPlan { download, args }
}

/// Runs `cargo xtask train ARGS`.
pub fn run(args: &[String]) -> Result<()> {
    let TrainPlan {
        download: fetch,
        mut args,
    } = plan(args);
    if let Some(model) = fetch {
        let request = DownloadArgs {
            model,
            repo: DEFAULT_REPO.to_string(),
            revision: DEFAULT_REVISION.to_string(),
            file: None,
            token: None,
            endpoint: None,
            cache_dir: None,
            retries: DEFAULT_RETRIES,
            no_progress: false,
            no_verify: false,
        };
        let path = match cached_path(&request)? {
            Some(path) => path,
            None => {
                eprintln!(
                    "no --init: downloading SAM {} from the Hugging Face hub ({DEFAULT_REPO})",
                    request.file_path()
                );
                download(&request)?
            }
        };
        eprintln!("SAM weights: {}", path.display());
        args.extend(["--init".to_string(), path.display().to_string()]);
    }
    let (mut samus, name) = crate::samus_command();
    let status = samus
        .arg("train")
        .args(&args)
        .status()
        .with_context(|| format!("cannot run {name}"))?;
    if !status.success() {
        bail!("samus train stopped ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_config_downloads_vit_b() {
        let p = plan(&strings(&["--data", "d"]));
        assert_eq!(p.download, Some(SamModel::VitB));
        assert_eq!(p.args, strings(&["--data", "d", "--config", "vit_b"]));
    }

    #[test]
    fn sam_sizes_download_their_checkpoint() {
        assert_eq!(
            plan(&strings(&["--config", "vit_l"])).download,
            Some(SamModel::VitL)
        );
        assert_eq!(
            plan(&strings(&["--config=vit_h"])).download,
            Some(SamModel::VitH)
        );
    }

    #[test]
    fn init_resume_help_and_other_configs_download_nothing() {
        for args in [
            vec!["--init", "sam.pth"],
            vec!["--init=sam.pth", "--config", "vit_b"],
            vec!["--resume", "runs/x"],
            vec!["--help"],
            vec!["--config", "tiny"],
            vec!["--config", "my.json"],
        ] {
            let args = strings(&args);
            let p = plan(&args);
            assert_eq!(p.download, None, "{args:?}");
            assert_eq!(p.args, args, "passed through unchanged");
        }
    }
}
