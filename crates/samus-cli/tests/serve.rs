//! End-to-end tests of `samus serve` through its HTTP API: the listing, masks equal
//! to `samus segment`'s, AutoSAMUS, labels in the US30K layout that `samus data
//! check` and `samus train` accept, one embedding per image under concurrent
//! requests, the token, and requests that try to reach other files or break it.

mod common;

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::server::{raw_request, Server};
use common::{fixtures, p, samus, stderr};
use image::GrayImage;
use serde_json::{json, Value};

/// A folder with two real-size fixture scans (one RGB, one grey) under names the
/// API shows.
fn scans(fixtures: &Path, dir: &Path) -> std::path::PathBuf {
    let images = dir.join("scans");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    std::fs::copy(fixtures.join("busi/benign0001.png"), images.join("a.png")).unwrap();
    std::fs::copy(
        fixtures.join("raw_image_300x220.png"),
        images.join("sub/b.png"),
    )
    .unwrap();
    images
}

fn decode_mask(b64: &Value) -> GrayImage {
    let bytes = BASE64
        .decode(b64.as_str().expect("a base64 string"))
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_luma8()
}

fn png_b64(image: &GrayImage) -> String {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    BASE64.encode(out.into_inner())
}

#[test]
fn predictions_are_the_masks_samus_segment_writes() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = scans(&fx, tmp.path());
    let ck = fx.join("samus_tiny.safetensors");
    let server = Server::start(&["--checkpoint", p(&ck), "--images", p(&images)]);
    let (status, list) = server.send("GET", "/api/images", None);
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|im| im["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.png", "sub/b.png"]);
    assert_eq!(list[1]["width"], 300);
    assert_eq!(list[1]["labelled"], false);
    let (w, h) = (
        list[0]["width"].as_u64().unwrap(),
        list[0]["height"].as_u64().unwrap(),
    );

    for (points, bbox, multimask) in [
        (vec![[120.0, 90.0, 1.0]], None, false),
        (
            vec![[120.0, 90.0, 1.0], [30.0, 20.0, 0.0]],
            Some([40.0, 30.0, 200.0, 160.0]),
            true,
        ),
    ] {
        let body = json!({"points": points, "box": bbox, "multimask": multimask});
        let (status, answer) = server.send("POST", "/api/images/0/predict", Some(&body));
        assert_eq!(status, 200, "{answer}");
        let masks = answer["masks"].as_array().unwrap();
        assert_eq!(masks.len(), if multimask { 3 } else { 1 });
        assert_eq!(answer["iou"].as_array().unwrap().len(), masks.len());
        let served = decode_mask(&masks[0]);
        assert_eq!(served.dimensions(), (w as u32, h as u32));

        let out = tmp.path().join("segment.png");
        let mut args = vec![
            "segment".to_string(),
            "--checkpoint".into(),
            p(&ck).into(),
            "--image".into(),
            p(&images.join("a.png")).into(),
            "--out".into(),
            p(&out).into(),
        ];
        for [x, y, l] in &points {
            args.push("--point".into());
            args.push(format!("{x},{y},{l}"));
        }
        if let Some([x0, y0, x1, y1]) = bbox {
            args.push("--box".into());
            args.push(format!("{x0},{y0},{x1},{y1}"));
        }
        if multimask {
            args.push("--multimask".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = samus(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        let written = image::open(&out).unwrap().to_luma8();
        assert!(
            served == written,
            "the served mask differs from samus segment's"
        );
        let area = served.pixels().filter(|p| p[0] > 0).count() as u64;
        assert_eq!(answer["area"][0].as_u64(), Some(area));
    }
    // The second request found the embedding cached; the image and thumbnail come as PNG.
    let (_, status) = server.send("GET", "/api/status", None);
    assert_eq!(
        status["embeddings"]["computed"].as_u64(),
        Some(2),
        "{status}"
    );
    let (code, png) = server.get_bytes("/api/images/1/image");
    assert_eq!(code, 200);
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 300);
    let (code, thumb) = server.get_bytes("/api/images/1/thumbnail");
    assert_eq!(code, 200);
    assert!(image::load_from_memory(&thumb).unwrap().width() <= 128);
    // Without APG weights there is no automatic mask, and labels need --labels.
    let (code, err) = server.send("POST", "/api/images/0/auto", None);
    assert_eq!(code, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("--apg"));
    let (code, err) = server.send(
        "PUT",
        "/api/images/0/label",
        Some(&json!({"class_id": 1, "mask": "x"})),
    );
    assert_eq!(code, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("--labels"));
}

#[test]
fn auto_gives_the_masks_of_samus_auto() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = scans(&fx, tmp.path());
    let ck = fx.join("samus_tiny.safetensors");
    let apg = fx.join("autosamus_tiny_apg.safetensors");
    let server = Server::start(&[
        "--checkpoint",
        p(&ck),
        "--apg",
        p(&apg),
        "--images",
        p(&images),
    ]);
    let (_, session) = server.send("GET", "/api/session", None);
    assert_eq!(session["auto"], true, "{session}");
    let (code, answer) = server.send("POST", "/api/images/0/auto", None);
    assert_eq!(code, 200, "{answer}");
    let served = decode_mask(&answer["masks"][0]);
    let out = tmp.path().join("auto");
    let run = samus(&[
        "auto",
        "--checkpoint",
        p(&ck),
        "--apg",
        p(&apg),
        "--image",
        p(&images.join("a.png")),
        "--out-dir",
        p(&out),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let written = image::open(out.join("a_mask.png")).unwrap().to_luma8();
    assert!(
        served == written,
        "the served auto mask differs from samus auto's"
    );
}

#[test]
fn labels_land_in_the_us30k_layout_and_train() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = scans(&fx, tmp.path());
    let root = tmp.path().join("labels");
    let ck = fx.join("samus_tiny.safetensors");
    let server = Server::start(&[
        "--checkpoint",
        p(&ck),
        "--images",
        p(&images),
        "--labels",
        p(&root),
        "--dataset",
        "Breast-Clinic",
        "--classes",
        "lesion,cyst",
    ]);
    let (_, list) = server.send("GET", "/api/images", None);
    let (w, h) = (
        list[1]["width"].as_u64().unwrap() as u32,
        list[1]["height"].as_u64().unwrap() as u32,
    );
    // A click's mask as class 1, then a square as class 2 on the same image.
    let (_, answer) = server.send(
        "POST",
        "/api/images/1/predict",
        Some(&json!({"points": [[150, 110, 1]]})),
    );
    let lesion = decode_mask(&answer["masks"][0]);
    let (code, saved) = server.send(
        "PUT",
        "/api/images/1/label",
        Some(&json!({"class_id": 1, "mask": answer["masks"][0]})),
    );
    assert_eq!(code, 200, "{saved}");
    assert_eq!(saved["label"], "Breast-Clinic/label/sub_b.png");
    assert_eq!(saved["previous"], Value::Null);
    let square = GrayImage::from_fn(w, h, |x, y| {
        image::Luma([if (10..40).contains(&x) && (10..40).contains(&y) {
            255
        } else {
            0
        }])
    });
    let (code, saved) = server.send(
        "PUT",
        "/api/images/1/label",
        Some(&json!({"class_id": 2, "mask": png_b64(&square)})),
    );
    assert_eq!(code, 200, "{saved}");
    let previous = saved["previous"].as_str().expect("the first label is kept");
    assert!(
        previous.starts_with("Breast-Clinic/label/.history/sub_b."),
        "{previous}"
    );
    assert!(root.join(previous).is_file());
    let label = image::open(root.join("Breast-Clinic/label/sub_b.png"))
        .unwrap()
        .to_luma8();
    for (x, y, l) in label.enumerate_pixels() {
        let want = if square.get_pixel(x, y)[0] > 0 {
            2
        } else if lesion.get_pixel(x, y)[0] > 0 {
            1
        } else {
            0
        };
        assert_eq!(l[0], want, "label at ({x}, {y})");
    }
    let (_, list) = server.send("GET", "/api/images", None);
    assert_eq!(
        (list[0]["labelled"].clone(), list[1]["labelled"].clone()),
        (json!(false), json!(true))
    );
    let (code, back) = server.send("GET", "/api/images/1/label", None);
    assert_eq!(code, 200);
    assert!(decode_mask(&back["label_map"]) == label);
    let (code, _) = server.send("GET", "/api/images/0/label", None);
    assert_eq!(code, 404);

    // The layout is complete: the check passes and training runs on it.
    let check = samus(&["data", "check", p(&root)]);
    assert!(check.status.success(), "{}", stderr(&check));
    let img = image::open(root.join("Breast-Clinic/img/sub_b.png")).unwrap();
    assert_eq!(
        (img.width(), img.height(), img.color()),
        (w, h, image::ColorType::L8)
    );
    let class_json = std::fs::read_to_string(root.join("MainPatient/class.json")).unwrap();
    assert!(class_json.contains("\"Breast-Clinic\": 3"), "{class_json}");
    let run = samus(&[
        "train",
        "--config",
        "tiny",
        "--init",
        p(&ck),
        "--data",
        p(&root),
        "--split",
        "train-Breast-Clinic",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--out",
        p(&tmp.path().join("run")),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
}

#[test]
fn concurrent_requests_compute_one_embedding() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = scans(&fx, tmp.path());
    let ck = fx.join("samus_tiny.safetensors");
    let server = Server::start(&["--checkpoint", p(&ck), "--images", p(&images)]);
    // The last image: nothing after it is embedded ahead.
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let body = json!({"points": [[100 + i * 10, 100, 1]]});
                    server.send("POST", "/api/images/1/predict", Some(&body))
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (code, answer) in &answers {
        assert_eq!(*code, 200, "{answer}");
    }
    let computed_fresh = answers.iter().filter(|(_, a)| a["cached"] == false).count();
    assert_eq!(computed_fresh, 1);
    let (_, status) = server.send("GET", "/api/status", None);
    assert_eq!(status["embeddings"]["computed"], 1, "{status}");
    assert_eq!(status["predictions"], 8, "{status}");
}

#[test]
fn the_next_image_is_embedded_ahead() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = scans(&fx, tmp.path());
    let ck = fx.join("samus_tiny.safetensors");
    let server = Server::start(&["--checkpoint", p(&ck), "--images", p(&images)]);
    let (code, embedded) = server.send("POST", "/api/images/0/embed", None);
    assert_eq!(code, 200, "{embedded}");
    assert_eq!(embedded["cached"], false);
    let started = std::time::Instant::now();
    loop {
        let (_, status) = server.send("GET", "/api/status", None);
        if status["embeddings"]["computed"] == 2 && status["embeddings"]["in_progress"] == 0 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "image 1 was not embedded ahead: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, answer) = server.send(
        "POST",
        "/api/images/1/predict",
        Some(&json!({"points": [[20, 20, 1]]})),
    );
    assert_eq!(answer["cached"], true, "{answer}");
}

#[test]
fn a_token_guards_every_api_request() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = scans(&fx, tmp.path());
    let ck = fx.join("samus_tiny.safetensors");
    let server = Server::start(&[
        "--checkpoint",
        p(&ck),
        "--images",
        p(&images),
        "--token",
        "s3cret-token",
    ]);
    assert!(
        server.0.printed.ends_with("/?token=s3cret-token"),
        "{}",
        server.0.printed
    );
    let addr = server.0.addr();
    let get = |path: &str, extra: &str| {
        raw_request(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
        )
    };
    let (code, body) = get("/api/images", "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("token"), "{body}");
    assert_eq!(
        get("/api/images", "Authorization: Bearer wrong-token\r\n").0,
        401
    );
    assert_eq!(
        get("/api/images", "Authorization: Bearer s3cret-token\r\n").0,
        200
    );
    assert_eq!(
        get("/api/images", "Cookie: samus_token=s3cret-token\r\n").0,
        200
    );
    // The printed URL sets the cookie and drops the token from the address bar.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /?token=s3cret-token HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 303"), "{reply}");
    assert!(
        reply
            .to_lowercase()
            .contains("set-cookie: samus_token=s3cret-token; path=/; httponly"),
        "{reply}"
    );
    assert_eq!(get("/?token=nope", "").0, 401);
    // The page itself loads without the token (it says what is missing).
    assert_eq!(get("/", "").0, 200);
    // Too short a token is refused at start.
    let out = samus(&[
        "serve",
        "--checkpoint",
        p(&ck),
        "--images",
        p(&images),
        "--token",
        "short",
    ]);
    common::assert_clean_failure(&out, "--token");
}

#[test]
fn no_request_reaches_outside_the_folders_or_breaks_the_server() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = scans(&fx, tmp.path());
    // A link to an image outside the folder is not offered.
    let outside = tmp.path().join("secret.png");
    std::fs::copy(fx.join("raw_image_300x220.png"), &outside).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, images.join("link.png")).unwrap();
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let root = tmp.path().join("labels");
    let ck = fx.join("samus_tiny.safetensors");
    let mut server = Server::start(&[
        "--checkpoint",
        p(&ck),
        "--images",
        p(&images),
        "--labels",
        p(&root),
    ]);
    let (_, list) = server.send("GET", "/api/images", None);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|im| im["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a.png", "sub/b.png"],
        "links out and unreadable files are left out"
    );

    let addr = server.0.addr().to_string();
    for path in [
        "/api/images/../../secret.png/image",
        "/api/images/..%2F..%2Fsecret.png/image",
        "/api/images/%2e%2e%2fsecret.png/image",
        "/api/images//etc/passwd/image",
        "/api/images/%2Fetc%2Fpasswd/image",
        "/api/images/2/image",
        "/api/images/-1/image",
        "/api/images/1e3/image",
        "/../../etc/passwd",
        "/app.js/../../../etc/passwd",
    ] {
        let (code, body) = raw_request(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        );
        assert!((400..500).contains(&code), "{path}: got {code} {body}");
        assert!(!body.contains("root:"), "{path} leaked a file");
    }
    // Requests naming another host are refused (DNS rebinding).
    let (code, _) = raw_request(
        &addr,
        "GET /api/images HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 403);
    // Another site's page cannot make changes: a form (text/plain) gets 415, a
    // script from another origin 403; this server's own page is answered.
    let body = r#"{"points": [[5, 5, 1]]}"#;
    let post = |headers: &str| {
        raw_request(
            &addr,
            &format!(
                "POST /api/images/0/predict HTTP/1.1\r\nHost: {addr}\r\n{headers}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (code, answer) = post("Content-Type: text/plain\r\n");
    assert_eq!(code, 415, "{answer}");
    let (code, answer) = post("Content-Type: application/json\r\nOrigin: http://evil.example\r\n");
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("another site"), "{answer}");
    let (code, answer) = post(&format!(
        "Content-Type: application/json\r\nOrigin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n"
    ));
    assert_eq!(code, 200, "{answer}");

    let bad_predicts: [(&[u8], &str); 9] = [
        (b"{not json", "request body"),
        (br#"{"points": [[NaN, 1, 1]]}"#, "request body"),
        (br#"{"points": [[1e999, 1, 1]]}"#, "request body"),
        (br#"{"points": [[-1, 5, 1]]}"#, "outside"),
        (br#"{"points": [[5, 5000, 1]]}"#, "outside"),
        (br#"{"points": [[5, 5, 7]]}"#, "label 7"),
        (br#"{"points": [], "box": null}"#, "at least one point"),
        (br#"{"box": [50, 50, 10, 10]}"#, "x0 < x1"),
        (br#"{"points": [[5, 5, 1]], "extra": 1}"#, "unknown field"),
    ];
    for (body, needle) in bad_predicts {
        let (code, answer) = server.post_raw("/api/images/0/predict", body.to_vec());
        assert_eq!(code, 400, "{}: {answer}", String::from_utf8_lossy(body));
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{}: {message}",
            String::from_utf8_lossy(body)
        );
    }
    let many: Vec<[u32; 3]> = (0..65).map(|i| [i, 1, 1]).collect();
    let (code, _) = server.send(
        "POST",
        "/api/images/0/predict",
        Some(&json!({"points": many})),
    );
    assert_eq!(code, 400);
    // An oversized body is refused from its announced length, before it is read
    // (sent by hand: a client writing 40 MiB would see the early answer as a
    // broken pipe).
    let (code, body) = raw_request(
        &addr,
        &format!(
            "POST /api/images/0/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{{",
            40 << 20
        ),
    );
    assert_eq!(code, 413, "{body}");

    let (_, list) = server.send("GET", "/api/images", None);
    let (w, h) = (
        list[0]["width"].as_u64().unwrap() as u32,
        list[0]["height"].as_u64().unwrap() as u32,
    );
    let mask = png_b64(&GrayImage::new(w, h));
    for (body, needle) in [
        (json!({"class_id": 2, "mask": mask}), "classes are 1 to 1"),
        (json!({"class_id": 0, "mask": mask}), "class_id 0"),
        (json!({"mask": mask}), "needs its class_id"),
        (json!({"class_id": 1, "mask": "!!"}), "not base64"),
        (
            json!({"class_id": 1, "mask": BASE64.encode(b"not a png")}),
            "not a PNG",
        ),
        (
            json!({"class_id": 1, "mask": png_b64(&GrayImage::new(w + 1, h))}),
            "but the image is",
        ),
        (
            json!({"label_map": png_b64(&GrayImage::from_pixel(w, h, image::Luma([9])))}),
            "value 9",
        ),
        (json!({}), "send {"),
    ] {
        let (code, answer) = server.send("PUT", "/api/images/0/label", Some(&body));
        assert_eq!(code, 400, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert!(
        !root.join("imgs").exists() && !root.join("scans").exists(),
        "nothing was written"
    );
    let (code, _) = server.send("GET", "/api/nothing", None);
    assert_eq!(code, 404);
    assert!(
        server.0.is_running(),
        "the server survived every bad request"
    );
    let (code, _) = server.send(
        "POST",
        "/api/images/0/predict",
        Some(&json!({"points": [[5, 5, 1]]})),
    );
    assert_eq!(code, 200);
    // Nothing was ever written next to the scans.
    let mut listed: Vec<String> = walk(&images);
    listed.sort();
    assert_eq!(listed, ["a.png", "broken.png", "link.png", "sub/b.png"]);
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let name = path
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path).into_iter().map(|n| format!("{name}/{n}")));
        } else {
            out.push(name);
        }
    }
    out
}

#[test]
fn start_up_errors_are_one_clear_line() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ck = fx.join("samus_tiny.safetensors");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["serve", "--checkpoint", p(&ck), "--port", "0"];
        args.extend_from_slice(extra);
        samus(&args)
    };
    common::assert_clean_failure(
        &run(&["--images", p(&empty)]),
        "no PNG, JPEG, BMP, TIFF or DICOM",
    );
    common::assert_clean_failure(&run(&["--images", p(&tmp.path().join("absent"))]), "absent");
    let images = scans(&fx, tmp.path());
    common::assert_clean_failure(
        &run(&["--images", p(&images), "--classes", "a,,b"]),
        "--classes",
    );
    common::assert_clean_failure(
        &run(&[
            "--images",
            p(&images),
            "--labels",
            p(&tmp.path().join("l")),
            "--dataset",
            "../x",
        ]),
        "--dataset",
    );
    let missing = tmp.path().join("missing.safetensors");
    let out = samus(&[
        "serve",
        "--checkpoint",
        p(&missing),
        "--images",
        p(&images),
        "--port",
        "0",
    ]);
    common::assert_clean_failure(&out, "missing.safetensors");
}
