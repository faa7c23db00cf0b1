//! `samus serve`: click-to-segment in the browser. One page, embedded in the binary,
//! over a JSON API ([`api`]); each image is embedded once (cached, the next one
//! ahead of time), every click costs only the prompt encoder and the mask decoder,
//! and accepted labels go straight into a US30K root for `samus train`.

mod access;
mod api;
mod cache;
mod catalog;
mod page;
mod work;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use samus_data::annotation::LabelStore;
use samus_data::import::safe_name;

use crate::support::model::{warn_if_sam, Checkpoint};
use crate::support::RunContext;
use access::Access;
use api::{ClassInfo, ServedModel, ServerState, SessionInfo};
use cache::EmbeddingCache;
use catalog::Catalog;
use work::WorkLimit;

/// Examples shown by `samus serve --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Label a folder of scans with a trained model; labels into datasets/clinic
  samus serve --checkpoint samus_vit_b.safetensors --images scans/ \\
      --labels datasets/clinic --dataset Breast-Clinic
  # then open the printed URL (http://127.0.0.1:8765/), click a lesion, press Enter

  # Two classes, AutoSAMUS's automatic masks (the `auto` button, key A)
  samus serve --checkpoint samus.safetensors --apg apg.safetensors --images scans/ \\
      --labels datasets/clinic --classes lesion,cyst

  # Serve other machines on the network: a token is generated and printed
  samus serve --checkpoint samus.safetensors --images scans/ --host 0.0.0.0

  # Train on what was labelled
  samus data check datasets/clinic
  samus train --data datasets/clinic --split train-Breast-Clinic --out runs/clinic";

/// Largest request body (a label map of a large scan as base64 PNG).
const MAX_BODY_BYTES: usize = 32 << 20;

/// Arguments of `samus serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// SAMUS (or AutoSAMUS) checkpoint.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Auto prompt generator weights: enables the `auto` button (AutoSAMUS).
    #[arg(long, value_name = "FILE")]
    apg: Option<PathBuf>,
    /// Model configuration: a preset or a JSON file (default: guessed from the
    /// checkpoint).
    #[arg(long, value_name = "PRESET|FILE")]
    config: Option<String>,
    /// Folder of scans to label (PNG, JPEG, BMP, TIFF, DICOM; sub-folders included).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// US30K root that accepted labels are saved into (`<dataset>/img`, `label`,
    /// `MainPatient/class.json`, `train-<dataset>.txt`). Without it labels cannot be
    /// saved.
    #[arg(long, value_name = "OUT_ROOT")]
    labels: Option<PathBuf>,
    /// Dataset name in the labels root (default: the images folder's name).
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Names of the label classes, comma-separated; their ids are 1, 2, ... in this
    /// order (0 is background).
    #[arg(long, value_name = "NAMES", default_value = "structure")]
    classes: String,
    /// Address to listen on; anything but loopback requires a token.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free port; the URL printed says which).
    #[arg(long, default_value_t = 8765)]
    port: u16,
    /// Secret every API request must carry; generated when --host is not loopback.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Memory for cached image embeddings, in MiB (least recently used go first).
    #[arg(long, value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    cache_mb: u32,
}

/// The class list of `--classes`.
fn class_list(spec: &str) -> Result<Vec<ClassInfo>> {
    let names: Vec<&str> = spec.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        bail!("--classes `{spec}`: give names separated by commas, e.g. lesion,cyst");
    }
    if names.len() > 255 {
        bail!("--classes: {} names, at most 255", names.len());
    }
    Ok(names
        .iter()
        .zip(1u8..)
        .map(|(name, id)| ClassInfo {
            id,
            name: name.to_string(),
        })
        .collect())
}

fn load_model(args: &ServeArgs, ctx: &RunContext) -> Result<ServedModel> {
    let checkpoint = Checkpoint::read(&args.checkpoint, args.config.as_deref())?;
    if args.apg.is_some() || checkpoint.has_apg() {
        let (mut model, report) = checkpoint.auto(ctx, args.apg.as_deref())?;
        warn_if_sam(&args.checkpoint, &report.samus);
        drop(report);
        model.pack_for_inference()?;
        Ok(ServedModel::Auto(model))
    } else {
        let (mut model, report) = checkpoint.samus(ctx)?;
        warn_if_sam(&args.checkpoint, &report);
        drop(report);
        model.pack_for_inference()?;
        Ok(ServedModel::Samus(model))
    }
}

/// The router: the page, its assets and the API, behind the access guard.
fn router(state: Arc<ServerState>, access: Access) -> Router {
    let api = Router::new()
        .route("/api/session", get(api::session))
        .route("/api/status", get(api::status))
        .route("/api/images", get(api::list_images))
        .route("/api/images/{id}/image", get(api::image_file))
        .route("/api/images/{id}/thumbnail", get(api::thumbnail))
        .route("/api/images/{id}/embed", post(api::embed))
        .route("/api/images/{id}/predict", post(api::predict))
        .route("/api/images/{id}/auto", post(api::auto))
        .route(
            "/api/images/{id}/label",
            get(api::get_label).put(api::put_label),
        )
        .fallback(page::not_found)
        .with_state(state);
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::style))
        .with_state(access.clone())
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// Answers 413 at once when a request announces a body over [`MAX_BODY_BYTES`]
/// (the body limit alone would first wait for the bytes); bodies without a length
/// are cut at the limit as they are read.
async fn refuse_large_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > MAX_BODY_BYTES as u64 => api::ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {n} bytes: at most {MAX_BODY_BYTES}"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Runs `samus serve` until interrupted.
pub fn run(args: ServeArgs, ctx: &RunContext) -> Result<()> {
    let classes = class_list(&args.classes)?;
    let loopback = args.host.is_loopback();
    let token = access::settle_token(args.token.as_deref(), loopback)?;
    let catalog = Catalog::scan(&args.images)?;
    for skipped in &catalog.skipped {
        eprintln!("warning: --images: left out {skipped}");
    }
    let dataset = match &args.dataset {
        Some(d) => d.clone(),
        None => {
            let folder = args
                .images
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            match safe_name(&folder) {
                name if name.trim_matches('_').is_empty() => "Annotated".to_string(),
                name => name,
            }
        }
    };
    let labels = match &args.labels {
        Some(root) => Some(LabelStore::open(root, &dataset, classes.len() as u32 + 1)?),
        None => None,
    };
    let model = load_model(&args, ctx)?;
    let session = SessionInfo {
        checkpoint: args
            .checkpoint
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        auto: model.auto().is_some(),
        labels: labels.is_some(),
        dataset,
        classes,
        images: catalog.images().len(),
    };
    let work = WorkLimit::per_core();
    let state = Arc::new(ServerState {
        model,
        catalog,
        cache: EmbeddingCache::new(args.cache_mb as usize * (1 << 20), work.clone()),
        work,
        labels,
        session,
        predictions: AtomicUsize::new(0),
    });
    let access = Access { token, loopback };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(serve(args.host, args.port, state, access))
}

async fn serve(host: IpAddr, port: u16, state: Arc<ServerState>, access: Access) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(host, port))
        .await
        .with_context(|| {
            format!("cannot listen on {host}:{port} (is another server using it? try --port 0)")
        })?;
    let addr = listener.local_addr()?;
    let shown_host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let url = match &access.token {
        Some(t) => format!("http://{shown_host}:{}/?token={t}", addr.port()),
        None => format!("http://{shown_host}:{}/", addr.port()),
    };
    eprintln!(
        "serving {} images from {} on {addr}; Ctrl+C stops",
        state.session.images, state.session.checkpoint
    );
    crate::support::print_line(format_args!("{url}"))?;
    let app = router(state, access);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // Without a signal handler the server runs until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await
        .context("the server stopped")
}
