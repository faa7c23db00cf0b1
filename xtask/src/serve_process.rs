//! A `samus serve` process: started on a free loopback port, stopped when dropped,
//! with a blocking HTTP client. The server tests and `cargo xtask bench-serve` use it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Longest wait for the server to print its URL (it loads the model first).
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// A running `samus serve`.
pub struct ServeProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    /// The URL as printed (with `?token=` when there is one).
    pub printed: String,
    /// The token to send as a bearer, if any.
    pub token: Option<String>,
    client: reqwest::blocking::Client,
}

impl ServeProcess {
    /// Starts `samus serve ARGS --port 0` (`samus` is the binary `exe`) and waits for
    /// the URL it prints.
    pub fn start(exe: &Path, args: &[&str]) -> Result<ServeProcess> {
        let mut child = Command::new(exe)
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let printed = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.starts_with("http://") => line.trim().to_string(),
            other => {
                let _ = child.kill();
                let status = child.wait();
                bail!("samus serve did not print its URL ({other:?}, {status:?})");
            }
        };
        let base = printed
            .split_once("/?")
            .map_or(printed.trim_end_matches('/'), |(b, _)| b)
            .to_string();
        let token = printed.split_once("?token=").map(|(_, t)| t.to_string());
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        Ok(ServeProcess {
            child,
            base,
            printed,
            token,
            client,
        })
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn request(&self, method: &str, path: &str) -> Result<reqwest::blocking::RequestBuilder> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let rb = self.client.request(method, format!("{}{path}", self.base));
        Ok(match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        })
    }

    /// A request with the token (when there is one) and an optional JSON body: the
    /// status and the JSON answer (a JSON string when the answer is not JSON).
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut rb = self.request(method, path)?;
        if let Some(body) = body {
            rb = rb.json(body);
        } else if method != "GET" {
            // The server takes changes as JSON only.
            rb = rb.header("content-type", "application/json");
        }
        answer(rb.send()?)
    }

    /// A POST of raw bytes as `application/json` (for malformed bodies).
    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<(u16, Value)> {
        let rb = self
            .request("POST", path)?
            .header("content-type", "application/json")
            .body(body);
        answer(rb.send()?)
    }

    /// A GET of bytes (images).
    pub fn get_bytes(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let reply = self.request("GET", path)?.send()?;
        Ok((reply.status().as_u16(), reply.bytes()?.to_vec()))
    }
}

fn answer(reply: reqwest::blocking::Response) -> Result<(u16, Value)> {
    let status = reply.status().as_u16();
    let text = reply.text()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` as written (request line and headers: paths with `..` and
/// encoded slashes reach the server unchanged, which HTTP clients do not allow)
/// and returns the status code and the body.
pub fn raw_request(addr: &str, request: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}
