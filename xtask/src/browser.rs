//! Headless Chromium through WebDriver (`chromedriver` from Debian's
//! `chromium-driver`), driven from plain blocking code: the browser test of
//! `samus serve` and `cargo xtask bench-serve --browser-clicks` use it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// The window of a laptop screen.
pub const WINDOW: (u32, u32) = (1366, 768);

/// Longest wait for a condition in the page.
const WAIT: Duration = Duration::from_secs(60);

/// `chromedriver` on PATH, if installed.
pub fn find_chromedriver() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromedriver"))
            .find(|p| p.is_file())
    })
}

/// A running `chromedriver` on a free loopback port, stopped when dropped.
pub struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts `exe` and waits until it listens.
    pub fn start(exe: &Path) -> Result<Driver> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("no free loopback port")?
            .port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let driver = Driver { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{} did not listen on port {port} within 30 s",
                    exe.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(driver)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One headless Chromium window of [`WINDOW`]'s size.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Browser {
    /// Opens a session on `driver`.
    pub fn open(driver: &Driver) -> Result<Browser> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={},{}", WINDOW.0, WINDOW.1)],
        });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{}", driver.port)),
            )
            .context("cannot open a Chromium session")?;
        Ok(Browser { rt, client })
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        Ok(self.rt.block_on(self.client.goto(url))?)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self.rt.block_on(self.client.execute(script, args))?)
    }

    /// Runs `script` until it returns something truthy; fails after a minute, with
    /// the page's status line.
    pub fn wait_until(&self, script: &str) -> Result<Value> {
        let started = Instant::now();
        loop {
            let v = self.exec(script, vec![])?;
            if !(v.is_null() || v == json!(false)) {
                return Ok(v);
            }
            if started.elapsed() > WAIT {
                let line = self.exec(
                    "return (document.getElementById('status') || {}).textContent",
                    vec![],
                )?;
                bail!("timed out waiting for `{script}`; the page says {line}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Clicks mouse `button` (0 left, 2 right) at viewport coordinates.
    pub fn click(&self, x: f64, y: f64, button: u64) -> Result<()> {
        let mouse = MouseActions::new("mouse".into())
            .then(PointerAction::MoveTo {
                duration: None,
                x: x.round(),
                y: y.round(),
            })
            .then(PointerAction::Down { button })
            .then(PointerAction::Up { button });
        Ok(self.rt.block_on(self.client.perform_actions(mouse))?)
    }

    /// Drags with the left button from `from` to `to` (viewport coordinates).
    pub fn drag(&self, from: (f64, f64), to: (f64, f64)) -> Result<()> {
        let step = |(x, y): (f64, f64)| PointerAction::MoveTo {
            duration: Some(Duration::from_millis(50)),
            x: x.round(),
            y: y.round(),
        };
        let middle = ((from.0 + to.0) / 2.0, (from.1 + to.1) / 2.0);
        let mouse = MouseActions::new("mouse".into())
            .then(step(from))
            .then(PointerAction::Down { button: 0 })
            .then(step(middle))
            .then(step(to))
            .then(PointerAction::Up { button: 0 });
        Ok(self.rt.block_on(self.client.perform_actions(mouse))?)
    }

    /// Types `keys` into the element with id `id`.
    pub fn keys(&self, id: &str, keys: &str) -> Result<()> {
        self.rt.block_on(async {
            let element = self.client.find(fantoccini::Locator::Id(id)).await?;
            element.send_keys(keys).await
        })?;
        Ok(())
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        Ok(self.rt.block_on(self.client.screenshot())?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.client.clone().close());
    }
}
