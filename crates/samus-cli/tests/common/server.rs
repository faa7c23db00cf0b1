//! A `samus serve` process for tests: started on a free loopback port, stopped when
//! dropped, with a blocking HTTP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Longest wait for the server to print its URL (it loads the model first).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `samus serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    /// The URL as printed (with `?token=` when there is one).
    pub printed: String,
    /// The token to send as a bearer, if any.
    pub token: Option<String>,
    client: reqwest::blocking::Client,
}

impl Server {
    /// Starts `samus serve ARGS --port 0` and waits for its URL.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_samus"))
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("samus serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
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
                panic!("samus serve did not print its URL ({other:?}, {status:?})");
            }
        };
        let base = printed
            .split_once("/?")
            .map_or(printed.trim_end_matches('/'), |(b, _)| b)
            .to_string();
        let token = printed.split_once("?token=").map(|(_, t)| t.to_string());
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .expect("an HTTP client");
        Server {
            child,
            base,
            printed,
            token,
            client,
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn with_token(
        &self,
        rb: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// A request with the token (when there is one); status and JSON body.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut rb = self.with_token(self.client.request(method, format!("{}{path}", self.base)));
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let reply = rb.send().expect("the server answers");
        let status = reply.status().as_u16();
        let text = reply.text().expect("a body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// GET with the token, as bytes.
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let reply = self
            .with_token(self.client.get(format!("{}{path}", self.base)))
            .send()
            .expect("the server answers");
        (
            reply.status().as_u16(),
            reply.bytes().expect("a body").to_vec(),
        )
    }

    /// POST of raw bytes (for malformed bodies), with the token.
    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let reply = self
            .with_token(self.client.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("the server answers");
        let status = reply.status().as_u16();
        let text = reply.text().expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` (the request line and headers as written, not normalised by any
/// client: paths with `..` and encoded slashes reach the server as they are) and
/// returns the status code and body.
pub fn raw_request(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}
