//! `samus serve` in a real browser: Chromium, driven through WebDriver, opens the
//! page on real BUS-BRA scans, clicks on a lesion, checks that the mask drawn on
//! the page is the API's mask, adds a background click (right button), accepts with
//! Enter and finds the label on disk. Outside CI, without `chromedriver` on PATH,
//! the test says "skipped: no chromium".

mod common;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::server::Server;
use common::{fixtures, p, realdata};
use fantoccini::actions::{MOUSE_BUTTON_LEFT, MOUSE_BUTTON_RIGHT};
use image::GrayImage;
use serde_json::{json, Value};
use xtask::browser::{find_chromedriver, Browser, Driver, WINDOW};

fn chromedriver() -> Option<PathBuf> {
    let found = find_chromedriver();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is not on PATH in CI: .ci/run installs chromium and chromium-driver"
        );
        println!("skipped: no chromium (install Debian's chromium and chromium-driver)");
    }
    found
}

/// Clicks `button` at a point given in the image's pixels.
fn click_at(page: &Browser, image_xy: (f64, f64), button: u64) {
    let at = page
        .exec(
            "return window.samus.toScreen(arguments[0], arguments[1])",
            vec![json!(image_xy.0), json!(image_xy.1)],
        )
        .unwrap();
    page.click(at[0].as_f64().unwrap(), at[1].as_f64().unwrap(), button)
        .unwrap();
}

/// The mask drawn on the page (its run-length form from `window.samus.drawnMask`).
fn drawn(v: &Value) -> GrayImage {
    let (w, h) = (
        v["width"].as_u64().unwrap() as u32,
        v["height"].as_u64().unwrap() as u32,
    );
    let mut pixels = Vec::with_capacity((w * h) as usize);
    for (i, run) in v["runs"].as_array().unwrap().iter().enumerate() {
        let value = if i % 2 == 1 { 255 } else { 0 };
        pixels.extend(std::iter::repeat_n(value, run.as_u64().unwrap() as usize));
    }
    GrayImage::from_raw(w, h, pixels).expect("the runs cover the image")
}

fn api_mask(server: &Server, points: &Value) -> GrayImage {
    api_answer(
        server,
        "/api/images/0/predict",
        json!({"points": points, "box": null, "multimask": false}),
    )
}

/// Mask 0 of the API's answer to `body` at `route`.
fn api_answer(server: &Server, route: &str, body: Value) -> GrayImage {
    let (code, answer) = server.send("POST", route, Some(&body));
    assert_eq!(code, 200, "{answer}");
    let bytes = BASE64.decode(answer["masks"][0].as_str().unwrap()).unwrap();
    image::load_from_memory(&bytes).unwrap().to_luma8()
}

/// The lesion pixel nearest the centre of the lesion's bounding box.
fn inside_lesion(mask: &GrayImage) -> (f64, f64) {
    let on: Vec<(u32, u32)> = mask
        .enumerate_pixels()
        .filter(|(_, _, p)| p[0] > 0)
        .map(|(x, y, _)| (x, y))
        .collect();
    let (x0, x1) = (
        on.iter().map(|p| p.0).min().unwrap(),
        on.iter().map(|p| p.0).max().unwrap(),
    );
    let (y0, y1) = (
        on.iter().map(|p| p.1).min().unwrap(),
        on.iter().map(|p| p.1).max().unwrap(),
    );
    let (cx, cy) = (f64::from(x0 + x1) / 2.0, f64::from(y0 + y1) / 2.0);
    let best = on
        .iter()
        .min_by(|a, b| {
            let d = |p: &(u32, u32)| (f64::from(p.0) - cx).powi(2) + (f64::from(p.1) - cy).powi(2);
            d(a).total_cmp(&d(b))
        })
        .unwrap();
    (f64::from(best.0), f64::from(best.1))
}

#[test]
fn click_mask_correct_and_accept_in_chromium() {
    let Some(fx) = fixtures() else { return };
    let Some(real) = realdata() else { return };
    let Some(exe) = chromedriver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let scans = tmp.path().join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    let busbra = real.join("BUSBRA");
    for name in ["bus_0001-l", "bus_0002-l"] {
        std::fs::copy(
            busbra.join(format!("Images/{name}.png")),
            scans.join(format!("{name}.png")),
        )
        .unwrap();
    }
    let truth = image::open(busbra.join("Masks/mask_0001-l.png"))
        .unwrap()
        .to_luma8();
    let labels = tmp.path().join("labels");
    let server = Server::start(&[
        "--checkpoint",
        p(&fx.join("samus_tiny.safetensors")),
        "--apg",
        p(&fx.join("autosamus_tiny_apg.safetensors")),
        "--images",
        p(&scans),
        "--labels",
        p(&labels),
        "--dataset",
        "Breast-BUSBRA-clicks",
        "--classes",
        "lesion",
    ]);
    let driver = Driver::start(&exe).unwrap();
    let page = Browser::open(&driver).unwrap();
    page.goto(&format!("{}/", server.0.base)).unwrap();
    page.wait_until("return window.samus && window.samus.ready() && /embedding/.test(document.getElementById('status').textContent)").unwrap();

    // A click on the lesion: the page shows the API's mask for that click.
    let lesion = inside_lesion(&truth);
    click_at(&page, lesion, MOUSE_BUTTON_LEFT);
    page.wait_until("return window.samus.state.timings.length === 1 && window.samus.ready()")
        .unwrap();
    let points = page
        .exec("return window.samus.state.prompt.points", vec![])
        .unwrap();
    assert_eq!(points.as_array().unwrap().len(), 1);
    assert_eq!(points[0][2], 1, "a left click is a foreground point");
    let (px, py) = (
        points[0][0].as_f64().unwrap(),
        points[0][1].as_f64().unwrap(),
    );
    assert!(
        (px - lesion.0).abs() <= 1.0 && (py - lesion.1).abs() <= 1.0,
        "clicked at {px},{py}, meant {lesion:?}"
    );
    let shown = drawn(
        &page
            .exec("return window.samus.drawnMask()", vec![])
            .unwrap(),
    );
    assert!(
        shown == api_mask(&server, &points),
        "the drawn mask is not the API's mask"
    );

    // A background click (right button) away from the lesion changes the prompt.
    let background = (
        f64::from(truth.width()) * 0.1,
        f64::from(truth.height()) * 0.9,
    );
    click_at(&page, background, MOUSE_BUTTON_RIGHT);
    page.wait_until("return window.samus.state.timings.length === 2 && window.samus.ready()")
        .unwrap();
    let points = page
        .exec("return window.samus.state.prompt.points", vec![])
        .unwrap();
    assert_eq!(points.as_array().unwrap().len(), 2);
    assert_eq!(points[1][2], 0, "a right click is a background point");
    let shown = drawn(
        &page
            .exec("return window.samus.drawnMask()", vec![])
            .unwrap(),
    );
    let served = api_mask(&server, &points);
    assert!(
        shown == served,
        "the drawn mask after the background click is not the API's mask"
    );
    let screenshot = page.screenshot().unwrap();
    let shot = image::load_from_memory(&screenshot).unwrap();
    // The viewport of a 1366x768 window (the browser's own bars take the rest).
    assert_eq!(shot.width(), WINDOW.0);
    assert!(shot.height() > WINDOW.1 / 2 && shot.height() <= WINDOW.1);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/serve-browser.png");
    let _ = std::fs::write(&target, &screenshot);

    // Undo and redo on the keyboard give back the two prompts.
    page.keys("canvas", "z").unwrap();
    page.wait_until("return window.samus.state.prompt.points.length === 1")
        .unwrap();
    page.keys("canvas", "y").unwrap();
    page.wait_until("return window.samus.state.prompt.points.length === 2")
        .unwrap();

    // Enter accepts: the label is on disk and the page moves to the next image.
    page.keys(
        "canvas",
        &char::from(fantoccini::key::Key::Enter).to_string(),
    )
    .unwrap();
    page.wait_until(
        "return window.samus.state.index === 1 && window.samus.state.images[0].labelled",
    )
    .unwrap();
    let label = image::open(labels.join("Breast-BUSBRA-clicks/label/bus_0001-l.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(label.dimensions(), served.dimensions());
    for (l, m) in label.pixels().zip(served.pixels()) {
        assert_eq!(
            l[0],
            u8::from(m[0] > 0),
            "the label is the accepted mask as class 1"
        );
    }
    let done = page
        .exec(
            "return document.querySelector('#images button .done').textContent",
            vec![],
        )
        .unwrap();
    assert_eq!(done, "✓", "the list marks the image done");
    // On the next image: a box dragged on the canvas, then AutoSAMUS (key A).
    page.wait_until("return window.samus.ready() && window.samus.state.index === 1")
        .unwrap();
    let corner = |x: f64, y: f64| {
        let at = page
            .exec(
                "return window.samus.toScreen(arguments[0], arguments[1])",
                vec![json!(x), json!(y)],
            )
            .unwrap();
        (at[0].as_f64().unwrap(), at[1].as_f64().unwrap())
    };
    page.drag(corner(60.0, 80.0), corner(200.0, 220.0)).unwrap();
    page.wait_until("return window.samus.state.timings.length === 3 && window.samus.ready()")
        .unwrap();
    let bbox = page
        .exec("return window.samus.state.prompt.box", vec![])
        .unwrap();
    let b: Vec<f64> = bbox
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        (b[0] - 60.0).abs() <= 1.0 && (b[3] - 220.0).abs() <= 1.0,
        "box {bbox}"
    );
    let shown = drawn(
        &page
            .exec("return window.samus.drawnMask()", vec![])
            .unwrap(),
    );
    let boxed = api_answer(
        &server,
        "/api/images/1/predict",
        json!({"points": [], "box": bbox}),
    );
    assert!(
        shown == boxed,
        "the drawn mask for the box is not the API's mask"
    );
    page.keys("canvas", "a").unwrap();
    page.wait_until("return window.samus.state.timings.length === 4 && window.samus.ready()")
        .unwrap();
    let shown = drawn(
        &page
            .exec("return window.samus.drawnMask()", vec![])
            .unwrap(),
    );
    let auto = api_answer(&server, "/api/images/1/auto", json!(null));
    assert!(shown == auto, "the drawn auto mask is not the API's");

    // An answer that comes back after the user moved on is dropped: a click and,
    // before its mask arrives, undo (the auto mask stays), then a click and the
    // previous image (which stays without a mask).
    let click_then = |key: &str| {
        let at = corner(120.0, 150.0);
        page.exec(
            "const [x, y, key] = arguments;
             const c = document.getElementById('canvas');
             c.dispatchEvent(new MouseEvent('mousedown', {clientX: x, clientY: y, button: 0, bubbles: true}));
             window.dispatchEvent(new MouseEvent('mouseup', {clientX: x, clientY: y, button: 0, bubbles: true}));
             const inFlight = window.samus.state.busy;
             window.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
             return inFlight;",
            vec![json!(at.0), json!(at.1), json!(key)],
        )
        .unwrap()
    };
    assert_eq!(click_then("z"), 1, "the click's prediction is in flight");
    page.wait_until("return window.samus.ready()").unwrap();
    let points = page
        .exec("return window.samus.state.prompt.points.length", vec![])
        .unwrap();
    assert_eq!(points, 0, "undo took the click back");
    let shown = drawn(
        &page
            .exec("return window.samus.drawnMask()", vec![])
            .unwrap(),
    );
    assert!(
        shown == auto,
        "the undone click's late mask replaced the auto mask"
    );
    assert_eq!(click_then("p"), 1, "the click's prediction is in flight");
    page.wait_until("return window.samus.ready() && window.samus.state.index === 0")
        .unwrap();
    let late = page
        .exec(
            "return [window.samus.state.answer === null, window.samus.state.prompt.points.length]",
            vec![],
        )
        .unwrap();
    assert_eq!(
        late,
        json!([true, 0]),
        "image 1's late mask landed on image 0"
    );

    let timings = page
        .exec("return window.samus.state.timings", vec![])
        .unwrap();
    println!("click-to-mask in the browser, ms: {timings}");
}
