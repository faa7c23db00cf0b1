//! `cargo xtask download`: fetch an original SAM checkpoint from the Hugging Face Hub.
//!
//! The file lands in the standard Hugging Face cache (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) with the usual layout:
//!
//! ```text
//! <cache>/models--<owner>--<name>/blobs/<etag>                    the bytes
//! <cache>/models--<owner>--<name>/snapshots/<commit>/<file>       symlink to the blob
//! <cache>/models--<owner>--<name>/refs/<revision>                 the commit a branch/tag resolved to
//! ```
//!
//! so other tools that read that cache (Python `huggingface_hub`, candle examples) find it
//! too, and a second run makes no GET. `hf-hub` itself neither checks the GET's HTTP status
//! nor the size or checksum of what it stores, and it leaves `blobs/<etag>.incomplete` behind
//! when a transfer breaks. This module closes those gaps: after every call it checks that
//! the cached file is non-empty, has the size the hub announced, and, when the hub named the
//! blob by a SHA-256 (as it does for LFS files), hashes to it. A file that fails is removed
//! from the cache, and partial downloads are swept, so a broken file never stays behind.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use hf_hub::{split_id, HFClient, HFClientSync, HFError};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// Hub repository used when `--repo` is not given.
///
/// `ybelkada/segment-anything` is a community mirror (not an official Meta repository) that
/// hosts Meta's original checkpoints under `checkpoints/`, byte for byte as published at
/// `dl.fbaipublicfiles.com/segment_anything/`. It is the repository that many projects pass
/// to `hf_hub_download` for these files. Pin `--revision` to a commit for reproducible runs.
pub const DEFAULT_REPO: &str = "ybelkada/segment-anything";

/// Revision used when `--revision` is not given.
pub const DEFAULT_REVISION: &str = "main";

/// Retries after a transient failure (408, 429, 5xx, connection errors) when `--retries` is
/// not given; the same default as `hf-hub`.
pub const DEFAULT_RETRIES: usize = 5;

/// The original Segment Anything image-encoder sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamModel {
    /// ViT-B, about 375 MB.
    #[value(name = "vit_b")]
    VitB,
    /// ViT-L, about 1.25 GB.
    #[value(name = "vit_l")]
    VitL,
    /// ViT-H, about 2.56 GB.
    #[value(name = "vit_h")]
    VitH,
}

impl SamModel {
    /// Path of this model's checkpoint inside [`DEFAULT_REPO`]. The hex suffix is Meta's
    /// original file name, not something this tool checks.
    pub fn checkpoint_file(self) -> &'static str {
        match self {
            Self::VitB => "checkpoints/sam_vit_b_01ec64.pth",
            Self::VitL => "checkpoints/sam_vit_l_0b3195.pth",
            Self::VitH => "checkpoints/sam_vit_h_4b8939.pth",
        }
    }
}

/// Download a SAM checkpoint into the Hugging Face cache and print its local path.
#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// Which checkpoint to fetch; ignored when `--file` is given.
    #[arg(long, value_enum, default_value_t = SamModel::VitB)]
    pub model: SamModel,

    /// Hub model repository, as `owner/name`.
    #[arg(long, default_value = DEFAULT_REPO)]
    pub repo: String,

    /// Branch, tag or 40-hex commit to download from.
    #[arg(long, default_value = DEFAULT_REVISION)]
    pub revision: String,

    /// Path of the file inside the repository (overrides `--model`).
    #[arg(long, conflicts_with = "model")]
    pub file: Option<String>,

    /// Access token for private or gated repositories. Prefer the environment: without this
    /// flag the token comes from $HF_TOKEN, then the file $HF_TOKEN_PATH, then $HF_HOME/token.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Hub base URL [default: $HF_ENDPOINT, else https://huggingface.co].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// Cache folder [default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Retries after a transient failure (408, 429, 5xx or a connection error).
    #[arg(long, default_value_t = DEFAULT_RETRIES)]
    pub retries: usize,

    /// Do not draw progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Skip the SHA-256 check (the emptiness and size checks still run).
    #[arg(long)]
    pub no_verify: bool,
}

impl DownloadArgs {
    /// The repository path of the file to download: `--file`, else the `--model` checkpoint.
    pub fn file_path(&self) -> &str {
        self.file
            .as_deref()
            .unwrap_or_else(|| self.model.checkpoint_file())
    }
}

/// Runs `cargo xtask download`: downloads (or finds in the cache) the requested file and
/// prints its local path on stdout.
pub fn run(args: &DownloadArgs) -> Result<()> {
    let path = download(args)?;
    println!("{}", path.display());
    Ok(())
}

/// Downloads the requested file into the Hugging Face cache, or finds it there, checks it,
/// and returns its path (`<cache>/models--<owner>--<name>/snapshots/<commit>/<file>`).
///
/// # Errors
///
/// Fails with a message naming the file and the repository when the hub cannot be reached,
/// does not have the file, refuses access, the transfer breaks, or the cached file fails
/// verification. In each case no partial or corrupt file is left in the cache.
pub fn download(args: &DownloadArgs) -> Result<PathBuf> {
    let repo = args.repo.trim();
    let file = args.file_path();
    let revision = args.revision.as_str();
    let (owner, name) = split_id(repo);
    if name.is_empty() || name.contains('/') || file.is_empty() || revision.is_empty() {
        bail!("invalid request: repo `{repo}` (expected `owner/name`), revision `{revision}`, file `{file}`");
    }

    let mut builder = HFClient::builder().retry_max_attempts(args.retries);
    if let Some(endpoint) = &args.endpoint {
        builder = builder.endpoint(endpoint.as_str());
    }
    if let Some(token) = &args.token {
        builder = builder.token(token.as_str());
    }
    if let Some(dir) = &args.cache_dir {
        builder = builder.cache_dir(dir.as_path());
    }
    let client = builder
        .build()
        .context("cannot set up the Hugging Face Hub client (check --endpoint / $HF_ENDPOINT)")?;
    let cache_dir = client.cache_dir().to_path_buf();
    let endpoint = client.endpoint().to_owned();
    let client =
        HFClientSync::from_inner(client).context("cannot start the Hugging Face Hub client")?;
    let headline =
        format!("cannot download `{file}` from {repo} at revision `{revision}` ({endpoint})");
    // hf-hub retries a refused connection with back-off; say at once that nothing
    // answers there.
    check_reachable(&endpoint).with_context(|| headline.clone())?;

    // A run killed mid-transfer leaves `<etag>.incomplete`; hf-hub truncates it when the same
    // etag is fetched again, but one for an etag that has since changed would stay forever.
    let repo_folder = repo_folder_name(repo);
    sweep_partial_downloads(&cache_dir, &repo_folder);

    let bar = transfer_bar(args.no_progress, file);
    let progress = Arc::new(BarProgress::new(bar.clone(), file));
    let result = client
        .model(owner, name)
        .download_file()
        .filename(file)
        .revision(revision)
        .progress(Arc::clone(&progress))
        .send();
    bar.finish_and_clear();

    let path = match result {
        Ok(path) => path,
        Err(err) => {
            // hf-hub returns with `blobs/<etag>.incomplete` still on disk when the body breaks.
            sweep_partial_downloads(&cache_dir, &repo_folder);
            // hf-hub's error chain repeats the URL at every level: keep the first
            // message and the innermost cause.
            let cause = root_cause(&err);
            return Err(match explain(&err, repo, revision, file) {
                Some(hint) => anyhow::anyhow!("{headline}: {hint} (cause: {cause})"),
                None => anyhow::anyhow!("{headline}: {err} (cause: {cause})"),
            });
        }
    };

    verify_cached_file(
        &path,
        progress.announced_size(),
        !args.no_verify,
        args.no_progress,
    )
    .context(headline)?;
    Ok(path)
}

/// Seconds to wait for a TCP connection to the hub before giving up.
const CONNECT_TIMEOUT_S: u64 = 5;

/// Fails quickly, naming the endpoint, when nothing accepts a TCP connection there.
fn check_reachable(endpoint: &str) -> Result<()> {
    let url = url::Url::parse(endpoint)
        .with_context(|| format!("`{endpoint}` is not a URL (check --endpoint / $HF_ENDPOINT)"))?;
    let addresses = url
        .socket_addrs(|| None)
        .with_context(|| format!("cannot resolve the hub address {endpoint}"))?;
    let timeout = std::time::Duration::from_secs(CONNECT_TIMEOUT_S);
    let mut last = None;
    for address in &addresses {
        match std::net::TcpStream::connect_timeout(address, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => bail!(
            "nothing answers at {endpoint} ({e}); check the network, --endpoint or $HF_ENDPOINT"
        ),
        None => bail!("the hub address {endpoint} resolves to no address"),
    }
}

/// The file's path in the local cache when an earlier download left it there, found
/// without any network access (`refs/<revision>` names the snapshot).
pub fn cached_path(args: &DownloadArgs) -> Result<Option<PathBuf>> {
    let mut builder = HFClient::builder();
    if let Some(dir) = &args.cache_dir {
        builder = builder.cache_dir(dir.as_path());
    }
    let client = builder
        .build()
        .context("cannot set up the Hugging Face Hub client")?;
    let folder = client.cache_dir().join(repo_folder_name(args.repo.trim()));
    let revision = args.revision.as_str();
    let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        match fs::read_to_string(folder.join("refs").join(revision)) {
            Ok(text) => text.trim().to_string(),
            Err(_) => return Ok(None),
        }
    };
    let path = folder.join("snapshots").join(commit).join(args.file_path());
    Ok(path.is_file().then_some(path))
}

/// The innermost error of a chain (for a failed connection: the OS's reason).
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A user-facing hint for the common ways a hub download fails, or `None` where hf-hub's
/// own message says enough.
fn explain(err: &HFError, repo: &str, revision: &str, file: &str) -> Option<String> {
    let hint = match err {
        HFError::EntryNotFound { .. } => format!(
            "not found: the hub has no `{file}` in {repo} at revision `{revision}` \
             (check --repo, --revision and --file/--model)"
        ),
        HFError::RevisionNotFound { .. } => {
            format!("not found: {repo} has no revision `{revision}`")
        }
        HFError::RepoNotFound { .. } | HFError::AuthRequired { .. } | HFError::Forbidden { .. } => {
            format!(
                "{repo} does not exist or is not accessible; if it is private or gated, \
             pass --token or set HF_TOKEN"
            )
        }
        HFError::RateLimited { .. } => {
            "rate limited by the hub: wait and try again, or authenticate with a token".to_owned()
        }
        HFError::Request { .. } => {
            "the hub could not be reached or the transfer broke off; any partial data was \
             removed from the cache, run the command again to retry"
                .to_owned()
        }
        HFError::MalformedResponse { .. } => {
            "the endpoint did not answer like a Hugging Face Hub (missing ETag or X-Repo-Commit \
             header); check --endpoint / $HF_ENDPOINT"
                .to_owned()
        }
        HFError::CacheLockTimeout { .. } => {
            "another process is downloading the same file; wait for it and try again".to_owned()
        }
        _ => return None,
    };
    Some(hint)
}

/// The cache folder of a model repository: `models--<owner>--<name>`, as hf-hub names it
/// (`repo_folder_name` in its `cache/storage.rs`, which is not public).
fn repo_folder_name(repo: &str) -> String {
    std::iter::once("models")
        .chain(repo.split('/'))
        .collect::<Vec<_>>()
        .join("--")
}

/// Checks the file hf-hub returned and removes it from the cache when it is bad: it must be
/// non-empty, have the size the hub announced (when it announced one) and, with `verify`,
/// hash to its blob name when that name is a SHA-256 (the hub names LFS blobs by their
/// SHA-256 through `X-Linked-Etag`).
///
/// hf-hub writes whatever the GET returned, an error page included, and checks neither size
/// nor checksum, so these checks are what keeps a broken file out of the cache.
fn verify_cached_file(
    path: &Path,
    announced_size: u64,
    verify: bool,
    no_progress: bool,
) -> Result<()> {
    let size = fs::metadata(path)
        .with_context(|| format!("cannot read the cached file {}", path.display()))?
        .len();
    let problem = if size == 0 {
        Some("the downloaded file is empty".to_owned())
    } else if announced_size > 0 && size != announced_size {
        Some(format!(
            "the downloaded file has {size} bytes but the hub announced {announced_size}"
        ))
    } else if let Some(expected) = blob_sha256(path).filter(|_| verify) {
        let actual = sha256_file(path, size, no_progress)
            .with_context(|| format!("cannot hash the cached file {}", path.display()))?;
        (!actual.eq_ignore_ascii_case(&expected))
            .then(|| format!("SHA-256 checksum mismatch: the hub announced {expected}, the file hashes to {actual}"))
    } else {
        None
    };

    let Some(problem) = problem else {
        return Ok(());
    };
    match remove_cached_file(path) {
        Ok(()) => bail!("{problem}; removed it from the cache, run the command again to retry"),
        Err(err) => bail!(
            "{problem}; could not remove it from the cache ({}): {err}",
            path.display()
        ),
    }
}

/// The blob name behind a snapshot symlink when it is a SHA-256 in hex, else `None`
/// (not a symlink, as on Windows where hf-hub copies, or a non-LFS file whose ETag is a git
/// blob id).
fn blob_sha256(snapshot: &Path) -> Option<String> {
    let target = fs::read_link(snapshot).ok()?;
    let name = target.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_owned())
}

/// SHA-256 of a file in lower-case hex, with a progress bar for large files.
fn sha256_file(path: &Path, size: u64, no_progress: bool) -> io::Result<String> {
    let bar = if no_progress {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(size);
        if let Ok(style) =
            ProgressStyle::with_template("verifying SHA-256 [{bar:40}] {bytes}/{total_bytes}")
        {
            bar.set_style(style);
        }
        bar
    };
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize().iter() {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// Removes a snapshot entry and the blob it points to.
///
/// Other snapshots that share the blob are left dangling, which hf-hub treats as "not
/// cached" and repairs on their next download.
fn remove_cached_file(snapshot: &Path) -> io::Result<()> {
    if let Ok(target) = fs::read_link(snapshot) {
        // hf-hub writes relative links (`../../blobs/<etag>`), resolved from the link's folder.
        let blob = match snapshot.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
        remove_if_present(&blob)?;
    }
    remove_if_present(snapshot)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes `blobs/*.incomplete` files of one cached repository that no download is writing.
///
/// hf-hub writes `<cache>/<repo_folder>/blobs/<etag>.incomplete` while it holds an exclusive
/// lock on `<cache>/.locks/<repo_folder>/<etag>.lock`, and leaves the file behind when the
/// transfer fails. A partial file whose lock can be taken is therefore stale; it is removed
/// while the lock is held, so a download starting at the same moment cannot lose its file.
/// Best effort: problems are reported on stderr, never fatal.
fn sweep_partial_downloads(cache_dir: &Path, repo_folder: &str) {
    let blobs = cache_dir.join(repo_folder).join("blobs");
    let entries = match fs::read_dir(&blobs) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        Err(err) => {
            eprintln!("warning: cannot list {}: {err}", blobs.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(etag) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(".incomplete"))
        else {
            continue;
        };
        let lock = cache_dir
            .join(".locks")
            .join(repo_folder)
            .join(format!("{etag}.lock"));
        let partial = entry.path();
        let outcome = match lock_if_idle(&lock) {
            Ok(Some(_guard)) => remove_if_present(&partial),
            Ok(None) => Ok(()), // another download is writing it
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            eprintln!(
                "warning: cannot remove the partial download {}: {err}",
                partial.display()
            );
        }
    }
}

/// Takes the exclusive lock hf-hub uses for one blob, if nobody holds it; the lock lasts as
/// long as the returned file.
fn lock_if_idle(lock: &Path) -> io::Result<Option<File>> {
    if let Some(dir) = lock.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(err)) => Err(err),
    }
}

/// A progress bar for the transfer: hidden with `--no-progress`, and by indicatif itself
/// when stderr is not a terminal.
fn transfer_bar(no_progress: bool, file: &str) -> ProgressBar {
    if no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(file.rsplit('/').next().unwrap_or(file).to_owned());
    bar
}

/// Feeds hf-hub's download events into a progress bar and remembers the size the hub
/// announced (`X-Linked-Size`, else `Content-Length`, of the HEAD answer).
///
/// hf-hub calls this from its runtime thread; it must not block.
struct BarProgress {
    bar: ProgressBar,
    file: String,
    announced_size: AtomicU64,
}

impl BarProgress {
    fn new(bar: ProgressBar, file: &str) -> Self {
        Self {
            bar,
            file: file.to_owned(),
            announced_size: AtomicU64::new(0),
        }
    }

    /// The size from the HEAD answer, or 0 when none was seen (a `304 Not Modified`, a
    /// revision given as a commit that was already cached, or a hub that sent no size).
    fn announced_size(&self) -> u64 {
        self.announced_size.load(Ordering::Relaxed)
    }
}

impl ProgressHandler for BarProgress {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else {
            return;
        };
        match event {
            DownloadEvent::Start { total_bytes, .. } => {
                self.announced_size.store(*total_bytes, Ordering::Relaxed);
                self.bar.set_length(*total_bytes);
            }
            // Plain HTTP transfers report per-file byte counts.
            DownloadEvent::Progress { files } => {
                for progress in files.iter().filter(|p| p.filename == self.file) {
                    if progress.total_bytes > 0 {
                        self.bar.set_length(progress.total_bytes);
                    }
                    self.bar.set_position(progress.bytes_completed);
                }
            }
            // Xet-backed files (most of the real hub today) report batch totals.
            DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            } => {
                if *total_bytes > 0 {
                    self.bar.set_length(*total_bytes);
                }
                self.bar.set_position(*bytes_completed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_match_the_original_names() {
        assert_eq!(
            SamModel::VitB.checkpoint_file(),
            "checkpoints/sam_vit_b_01ec64.pth"
        );
        assert_eq!(
            SamModel::VitL.checkpoint_file(),
            "checkpoints/sam_vit_l_0b3195.pth"
        );
        assert_eq!(
            SamModel::VitH.checkpoint_file(),
            "checkpoints/sam_vit_h_4b8939.pth"
        );
    }

    #[test]
    fn repo_folder_matches_hf_hub() {
        assert_eq!(
            repo_folder_name("ybelkada/segment-anything"),
            "models--ybelkada--segment-anything"
        );
        assert_eq!(repo_folder_name("gpt2"), "models--gpt2");
    }

    #[test]
    fn sha256_of_a_known_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").expect("write");
        assert_eq!(
            sha256_file(&path, 3, true).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
