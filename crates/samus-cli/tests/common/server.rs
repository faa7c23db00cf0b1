//! `samus serve` for the tests: [`xtask::serve_process`] on this package's binary,
//! with errors as test failures.

use std::path::Path;

use serde_json::Value;
use xtask::serve_process::ServeProcess;

/// A running `samus serve` (stopped when dropped).
pub struct Server(pub ServeProcess);

impl Server {
    /// Starts `samus serve ARGS --port 0` and waits for its URL.
    pub fn start(args: &[&str]) -> Server {
        Server(ServeProcess::start(Path::new(env!("CARGO_BIN_EXE_samus")), args).unwrap())
    }

    /// A request with the token; the status and the JSON answer.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.0.send(method, path, body).unwrap()
    }

    /// A POST of raw bytes.
    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.0.post_raw(path, body).unwrap()
    }

    /// A GET of bytes.
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        self.0.get_bytes(path).unwrap()
    }
}

/// [`xtask::serve_process::raw_request`], failing the test on a network error.
pub fn raw_request(addr: &str, request: &str) -> (u16, String) {
    xtask::serve_process::raw_request(addr, request).unwrap()
}
