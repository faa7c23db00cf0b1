//! `cargo xtask download` against a fake Hugging Face Hub on 127.0.0.1.
//!
//! The fake hub is a std-only HTTP/1.1 server that answers the two requests hf-hub makes for
//! a cached download: `HEAD /{repo}/resolve/{revision}/{file}` with `X-Repo-Commit`,
//! `X-Linked-Etag` (the SHA-256, as the hub sends for LFS files) and `X-Linked-Size`, then a
//! plain `GET` of the same URL. It never sends `X-Xet-Hash`, so hf-hub stays off its Xet
//! path (which would call `/api/models/{repo}/xet-read-token/{revision}` and a CAS server).
//! Every response closes its connection, which keeps the server single-threaded.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use xtask::download::{cached_path, download, DownloadArgs, SamModel, DEFAULT_RETRIES};

const REPO: &str = "test-org/sam-checkpoints";
const FILE: &str = "checkpoints/sam_vit_b_01ec64.pth";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_fake_test_token";

/// How the fake hub serves `FILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// HEAD and GET agree with the body.
    Healthy,
    /// GET announces the full `Content-Length` but sends half the body, then closes.
    Truncated,
    /// HEAD announces the SHA-256 of other bytes.
    WrongChecksum,
    /// HEAD succeeds, GET answers `500` with a short error page.
    GetFails,
}

/// One request as the fake hub saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
}

/// A fake hub serving `body` as `FILE` of `REPO` at revision `main`; any other path is 404.
struct FakeHub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    fn start(mode: Mode, body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake hub");
        let addr = listener.local_addr().expect("fake hub address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // A broken connection only fails the request it carried.
                        let _ = serve(stream, mode, &body, &seen, addr);
                    }
                }
            })
        };
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self, method: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("request log").clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream`, then closes it.
fn serve(
    mut stream: TcpStream,
    mode: Mode,
    body: &[u8],
    seen: &Mutex<Vec<Seen>>,
    addr: SocketAddr,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = read_request_head(&mut stream)?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let if_none_match = header("if-none-match");
    seen.lock()
        .map_err(|_| io::Error::other("request log poisoned"))?
        .push(Seen {
            method: method.clone(),
            target: target.clone(),
            authorization: header("authorization"),
        });

    let is_head = method == "HEAD";
    let announced = match mode {
        Mode::WrongChecksum => sha256_hex(b"some other bytes"),
        _ => sha256_hex(body),
    };
    // Like the hub, the file's bytes live on a CDN that the resolve URL redirects to.
    let cdn_path = format!("/cdn/{}", sha256_hex(body));
    let resolve_path = format!("/{REPO}/resolve/main/{FILE}");
    if method == "GET" && target == cdn_path {
        return serve_bytes(&mut stream, mode, body);
    }
    if target != resolve_path || !(is_head || method == "GET") {
        let page = b"Entry not found";
        return respond(
            &mut stream,
            "404 Not Found",
            &[
                ("X-Error-Code", "EntryNotFound".to_owned()),
                ("X-Error-Message", "Entry not found".to_owned()),
                ("X-Repo-Commit", COMMIT.to_owned()),
                ("Content-Length", page.len().to_string()),
            ],
            if is_head { &[] } else { page },
        );
    }

    let quoted = format!("\"{announced}\"");
    if is_head {
        if if_none_match.as_deref() == Some(quoted.as_str()) {
            return respond(
                &mut stream,
                "304 Not Modified",
                &[("X-Repo-Commit", COMMIT.to_owned()), ("ETag", quoted)],
                &[],
            );
        }
        // As the hub answers for an LFS file: a redirect to the CDN (absolute, so hf-hub
        // reads this answer's headers), the pointer's git id in ETag and the real
        // content in the X-Linked-* headers.
        return respond(
            &mut stream,
            "302 Found",
            &[
                ("Location", format!("http://{addr}{cdn_path}")),
                ("X-Repo-Commit", COMMIT.to_owned()),
                (
                    "ETag",
                    "\"1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e\"".to_owned(),
                ),
                ("X-Linked-Etag", quoted),
                ("X-Linked-Size", body.len().to_string()),
                ("Content-Length", body.len().to_string()),
            ],
            &[],
        );
    }

    // GET of the resolve URL: a relative redirect to the CDN, which reqwest follows.
    respond(
        &mut stream,
        "302 Found",
        &[("Location", cdn_path), ("Content-Length", "0".to_owned())],
        &[],
    )
}

/// The CDN's answer for the file's bytes, broken as `mode` says.
fn serve_bytes(stream: &mut TcpStream, mode: Mode, body: &[u8]) -> io::Result<()> {
    match mode {
        Mode::Healthy | Mode::WrongChecksum => respond(
            stream,
            "200 OK",
            &[("Content-Length", body.len().to_string())],
            body,
        ),
        Mode::Truncated => respond(
            stream,
            "200 OK",
            &[("Content-Length", body.len().to_string())],
            &body[..body.len() / 2],
        ),
        Mode::GetFails => {
            let page = b"upstream exploded";
            respond(
                stream,
                "500 Internal Server Error",
                &[("Content-Length", page.len().to_string())],
                page,
            )
        }
    }
}

/// Reads up to the blank line that ends the request head (hf-hub sends no request bodies).
fn read_request_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-request",
            ));
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one response and closes the connection. `Content-Length` comes from `headers`, so
/// a caller can announce more bytes than it sends.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic, non-repeating test content.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn args(hub: &FakeHub, cache: &Path, file: &str) -> DownloadArgs {
    DownloadArgs {
        model: SamModel::VitB,
        repo: REPO.to_owned(),
        revision: "main".to_owned(),
        file: Some(file.to_owned()),
        // Explicit token, endpoint and cache: nothing comes from the environment.
        token: Some(TOKEN.to_owned()),
        endpoint: Some(hub.endpoint()),
        cache_dir: Some(cache.to_path_buf()),
        retries: 0,
        no_progress: true,
        no_verify: false,
    }
}

/// Every file under `cache` that holds (or would become) downloaded content: blobs, snapshot
/// entries and `.incomplete` partial files. Refs, locks and `.no_exist` markers are
/// bookkeeping and are not listed.
fn payload_files(cache: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(&path, out);
                continue;
            }
            let in_payload_dir = path
                .components()
                .any(|c| c.as_os_str() == "blobs" || c.as_os_str() == "snapshots");
            let partial = path.to_string_lossy().ends_with(".incomplete");
            if in_payload_dir || partial {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(cache, &mut out);
    out
}

#[test]
fn downloads_into_the_cache_and_reuses_it() {
    let body = payload(100_000);
    let hub = FakeHub::start(Mode::Healthy, body.clone());
    let cache = tempfile::tempdir().expect("tempdir");

    let path = download(&args(&hub, cache.path(), FILE)).expect("first download");
    assert_eq!(fs::read(&path).expect("read the download"), body);
    assert_eq!(
        path,
        cache
            .path()
            .join("models--test-org--sam-checkpoints/snapshots")
            .join(COMMIT)
            .join(FILE)
    );
    let blob = cache
        .path()
        .join("models--test-org--sam-checkpoints/blobs")
        .join(sha256_hex(&body));
    assert!(
        blob.is_file(),
        "the blob is named by its SHA-256: {}",
        blob.display()
    );
    assert_eq!(hub.count("GET"), 2, "the resolve URL, then its redirect");
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.method == "GET" && r.target.starts_with("/cdn/")),
        "the redirect to the CDN is followed: {:?}",
        hub.requests()
    );
    assert!(
        hub.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "every request carries the token: {:?}",
        hub.requests()
    );

    let again = download(&args(&hub, cache.path(), FILE)).expect("cached download");
    assert_eq!(again, path);
    assert_eq!(hub.count("HEAD"), 2, "the second call only revalidates");
    assert_eq!(
        hub.count("GET"),
        2,
        "the second call is served from the cache"
    );
}

#[test]
fn a_truncated_transfer_fails_and_leaves_no_partial_file() {
    let hub = FakeHub::start(Mode::Truncated, payload(100_000));
    let cache = tempfile::tempdir().expect("tempdir");

    let err = download(&args(&hub, cache.path(), FILE)).expect_err("a truncated body must fail");
    let message = format!("{err:#}");
    assert!(
        message.contains(FILE) && message.contains(REPO),
        "{message}"
    );
    assert_eq!(hub.count("GET"), 2, "the resolve URL and the CDN, no retry");
    assert_eq!(payload_files(cache.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_missing_file_names_the_file_and_the_repo() {
    let hub = FakeHub::start(Mode::Healthy, payload(1_000));
    let cache = tempfile::tempdir().expect("tempdir");
    let missing = "checkpoints/sam_vit_x_000000.pth";

    let err = download(&args(&hub, cache.path(), missing)).expect_err("a 404 must fail");
    let message = format!("{err:#}");
    assert!(
        message.contains(missing) && message.contains(REPO),
        "{message}"
    );
    assert!(message.contains("not found"), "{message}");
    assert_eq!(hub.count("GET"), 0, "no GET after a 404 HEAD");
    assert_eq!(payload_files(cache.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_checksum_mismatch_fails_and_removes_the_file() {
    let hub = FakeHub::start(Mode::WrongChecksum, payload(100_000));
    let cache = tempfile::tempdir().expect("tempdir");

    let err = download(&args(&hub, cache.path(), FILE)).expect_err("a wrong checksum must fail");
    let message = format!("{err:#}");
    assert!(
        message.contains("SHA-256") && message.contains(FILE) && message.contains(REPO),
        "{message}"
    );
    assert_eq!(payload_files(cache.path()), Vec::<PathBuf>::new());
}

/// hf-hub stores the body of a failed GET as if it were the file; the size check must catch
/// it and take it back out of the cache.
#[test]
fn an_error_page_is_never_left_in_the_cache() {
    let hub = FakeHub::start(Mode::GetFails, payload(100_000));
    let cache = tempfile::tempdir().expect("tempdir");

    let err = download(&args(&hub, cache.path(), FILE)).expect_err("a 500 on GET must fail");
    let message = format!("{err:#}");
    assert!(
        message.contains(FILE) && message.contains(REPO),
        "{message}"
    );
    assert_eq!(payload_files(cache.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_cached_file_is_found_without_the_network() {
    let hub = FakeHub::start(Mode::Healthy, payload(2_000));
    let cache = tempfile::tempdir().expect("tempdir");
    let request = args(&hub, cache.path(), FILE);
    assert_eq!(cached_path(&request).expect("cache lookup"), None);
    let path = download(&request).expect("download");
    let requests = hub.requests().len();
    assert_eq!(cached_path(&request).expect("cache lookup"), Some(path));
    assert_eq!(
        hub.requests().len(),
        requests,
        "the lookup sends no request"
    );
}

#[test]
fn an_unreachable_endpoint_fails_within_seconds_naming_it() {
    let cache = tempfile::tempdir().expect("tempdir");
    let request = DownloadArgs {
        model: SamModel::VitB,
        repo: REPO.to_owned(),
        revision: "main".to_owned(),
        file: None,
        token: None,
        endpoint: Some("http://127.0.0.1:1".to_owned()),
        cache_dir: Some(cache.path().to_path_buf()),
        retries: DEFAULT_RETRIES,
        no_progress: true,
        no_verify: false,
    };
    let start = std::time::Instant::now();
    let err = download(&request).expect_err("nothing listens on port 1");
    let message = format!("{err:#}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(message.contains("http://127.0.0.1:1"), "{message}");
    assert!(message.contains("nothing answers"), "{message}");
}
