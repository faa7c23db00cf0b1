//! The HTTP API (JSON; docs/SERVE.md): the image list, predictions from clicks and
//! boxes, AutoSAMUS, and saving labels into the US30K layout. The page uses only
//! these routes.

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use image::{DynamicImage, GrayImage, ImageFormat};
use samus_apg::AutoSamus;
use samus_data::annotation::LabelStore;
use samus_model::{Label, PointPrompt, Prediction, Prompts, Samus};
use serde::{Deserialize, Serialize};

use super::cache::{CacheStats, CachedEmbedding, EmbeddingCache};
use super::catalog::{Catalog, CatalogImage};
use super::work::WorkLimit;
use crate::support::images::open_image;

/// Points one request may carry.
pub const MAX_POINTS: usize = 64;
/// Longest side of a thumbnail, in pixels.
const THUMBNAIL_SIZE: u32 = 128;

/// The model a server runs: SAMUS for clicks, and AutoSAMUS when APG weights were
/// loaded (its SAMUS then serves the clicks, so the weights are held once).
pub enum ServedModel {
    /// Prompted segmentation only.
    Samus(Samus),
    /// Prompted and automatic segmentation.
    Auto(AutoSamus),
}

impl ServedModel {
    /// The prompted model.
    pub fn samus(&self) -> &Samus {
        match self {
            ServedModel::Samus(m) => m,
            ServedModel::Auto(m) => m.samus(),
        }
    }

    /// AutoSAMUS, when loaded.
    pub fn auto(&self) -> Option<&AutoSamus> {
        match self {
            ServedModel::Samus(_) => None,
            ServedModel::Auto(m) => Some(m),
        }
    }
}

/// What `GET /api/session` says about the server.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// The checkpoint file's name.
    pub checkpoint: String,
    /// Whether `POST .../auto` works (APG weights loaded).
    pub auto: bool,
    /// Whether labels can be saved (`--labels` given).
    pub labels: bool,
    /// The dataset labels are saved as.
    pub dataset: String,
    /// The classes, id 1 first.
    pub classes: Vec<ClassInfo>,
    /// Number of images.
    pub images: usize,
}

/// One label class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassInfo {
    /// Its pixel value in label maps.
    pub id: u8,
    /// Its name (`--classes`).
    pub name: String,
}

/// Everything the handlers share.
pub struct ServerState {
    /// The model.
    pub model: ServedModel,
    /// The images.
    pub catalog: Catalog,
    /// Their embeddings.
    pub cache: EmbeddingCache,
    /// The bound on blocking work at once (shared with the cache).
    pub work: WorkLimit,
    /// Where labels go, with `--labels`.
    pub labels: Option<LabelStore>,
    /// What the page is told.
    pub session: SessionInfo,
    /// Predictions served (prompted and automatic).
    pub predictions: AtomicUsize,
}

/// An API error: a status and a one-line message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, message: String) -> Self {
        Self { status, message }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message.into())
    }

    fn internal(error: anyhow::Error) -> Self {
        let message = error
            .chain()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// One line of `GET /api/images`.
#[derive(Debug, Serialize)]
pub struct ImageInfo {
    id: usize,
    name: String,
    width: u32,
    height: u32,
    labelled: bool,
}

/// `POST /api/images/{id}/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    #[serde(default)]
    points: Vec<[f64; 3]>,
    #[serde(default, rename = "box")]
    bbox: Option<[f64; 4]>,
    #[serde(default)]
    multimask: bool,
}

/// The answer to a prediction: candidates best first.
#[derive(Debug, Serialize)]
pub struct PredictResponse {
    iou: Vec<f32>,
    masks: Vec<String>,
    area: Vec<usize>,
    decode_ms: f64,
    embed_ms: f64,
    cached: bool,
}

/// `PUT /api/images/{id}/label`: one class's mask, or the whole label map.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    #[serde(default)]
    class_id: Option<u32>,
    #[serde(default)]
    mask: Option<String>,
    #[serde(default)]
    label_map: Option<String>,
}

/// What a saved label became on disk (paths relative to `--labels`).
#[derive(Debug, Serialize)]
pub struct LabelResponse {
    image: String,
    label: String,
    previous: Option<String>,
    classes: Vec<u8>,
}

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct StatusResponse {
    embeddings: CacheStats,
    predictions: usize,
}

fn image_of(state: &ServerState, id: &str) -> ApiResult<CatalogImage> {
    id.parse::<usize>()
        .ok()
        .and_then(|i| state.catalog.get(i))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no image with id `{id}` (ids 0 to {} come from GET /api/images)",
                    state.catalog.images().len().saturating_sub(1)
                ),
            )
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// Runs blocking model or file work off the async threads, within the work limit.
async fn blocking<T: Send + 'static>(
    state: &ServerState,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> ApiResult<T> {
    state.work.run(work).await.map_err(ApiError::internal)
}

/// Image `image`'s embedding, computed at most once; the next image of the list is
/// then embedded in the background so that it is ready when the user gets there.
async fn embedding_of(
    state: &Arc<ServerState>,
    image: &CatalogImage,
) -> ApiResult<(Arc<CachedEmbedding>, bool)> {
    let (embedding, cached) = compute_embedding(state, image)
        .await
        .map_err(ApiError::internal)?;
    if !cached {
        if let Some(next) = state.catalog.get(image.id + 1).cloned() {
            if !state.cache.contains(next.id) {
                let state = Arc::clone(state);
                tokio::spawn(async move {
                    // A failure shows when the user opens the image.
                    let _ = compute_embedding(&state, &next).await;
                });
            }
        }
    }
    Ok((embedding, cached))
}

async fn compute_embedding(
    state: &Arc<ServerState>,
    image: &CatalogImage,
) -> anyhow::Result<(Arc<CachedEmbedding>, bool)> {
    let worker = Arc::clone(state);
    let path = image.path.clone();
    state
        .cache
        .get_or_compute(image.id, move || {
            let pixels = open_image(&path)?;
            Ok(worker.model.samus().embed(&pixels)?)
        })
        .await
}

/// `GET /api/session`.
pub async fn session(State(state): State<Arc<ServerState>>) -> Json<SessionInfo> {
    Json(state.session.clone())
}

/// `GET /api/status`.
pub async fn status(State(state): State<Arc<ServerState>>) -> Json<StatusResponse> {
    Json(StatusResponse {
        embeddings: state.cache.stats(),
        predictions: state.predictions.load(Ordering::Relaxed),
    })
}

/// `GET /api/images`.
pub async fn list_images(State(state): State<Arc<ServerState>>) -> Json<Vec<ImageInfo>> {
    let labels = state.labels.as_ref();
    Json(
        state
            .catalog
            .images()
            .iter()
            .map(|im| ImageInfo {
                id: im.id,
                name: im.name.clone(),
                width: im.width,
                height: im.height,
                labelled: labels.is_some_and(|l| l.is_labelled(&im.sample)),
            })
            .collect(),
    )
}

fn png_response(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response()
}

fn encode_png(image: &DynamicImage) -> anyhow::Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .context("cannot encode a PNG")?;
    Ok(out.into_inner())
}

/// The image as 8-bit PNG, which every browser shows (TIFF and 16-bit included).
fn browser_image(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => image,
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA8(_) => {
            DynamicImage::ImageLuma8(image.to_luma8())
        }
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}

/// `GET /api/images/{id}/image`: the pixels, as PNG.
pub async fn image_file(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let image = image_of(&state, &id)?;
    let bytes = blocking(&state, move || {
        encode_png(&browser_image(open_image(&image.path)?))
    })
    .await?;
    Ok(png_response(bytes))
}

/// `GET /api/images/{id}/thumbnail`.
pub async fn thumbnail(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let image = image_of(&state, &id)?;
    let bytes = blocking(&state, move || {
        let pixels = browser_image(open_image(&image.path)?);
        encode_png(&pixels.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    })
    .await?;
    Ok(png_response(bytes))
}

/// `POST /api/images/{id}/embed`: computes (or finds) the embedding.
pub async fn embed(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let image = image_of(&state, &id)?;
    let (embedding, cached) = embedding_of(&state, &image).await?;
    Ok(Json(serde_json::json!({
        "embed_ms": embedding.embed_ms,
        "cached": cached,
    })))
}

/// Checks a prediction request against the image and turns it into prompts.
fn prompts_of(request: &PredictRequest, image: &CatalogImage) -> ApiResult<Prompts> {
    if request.points.is_empty() && request.bbox.is_none() {
        return Err(ApiError::bad_request(
            "give at least one point or a box".to_string(),
        ));
    }
    if request.points.len() > MAX_POINTS {
        return Err(ApiError::bad_request(format!(
            "{} points: at most {MAX_POINTS}",
            request.points.len()
        )));
    }
    let (w, h) = (f64::from(image.width), f64::from(image.height));
    let inside = |what: &str, x: f64, y: f64| -> ApiResult<()> {
        if !x.is_finite() || !y.is_finite() {
            return Err(ApiError::bad_request(format!(
                "{what}: coordinates must be numbers"
            )));
        }
        if !(0.0..=w).contains(&x) || !(0.0..=h).contains(&y) {
            return Err(ApiError::bad_request(format!(
                "{what} ({x}, {y}) is outside the {}x{} image",
                image.width, image.height
            )));
        }
        Ok(())
    };
    let mut points = Vec::with_capacity(request.points.len());
    for (i, &[x, y, label]) in request.points.iter().enumerate() {
        inside(&format!("point {i}"), x, y)?;
        let label = match label {
            1.0 => Label::Foreground,
            0.0 => Label::Background,
            other => {
                return Err(ApiError::bad_request(format!(
                    "point {i}: label {other} (1 foreground, 0 background)"
                )))
            }
        };
        points.push(PointPrompt::new(x as f32, y as f32, label));
    }
    if let Some([x0, y0, x1, y1]) = request.bbox {
        inside("box corner", x0, y0)?;
        inside("box corner", x1, y1)?;
        if x1 <= x0 || y1 <= y0 {
            return Err(ApiError::bad_request(format!(
                "box [{x0}, {y0}, {x1}, {y1}]: give [x0, y0, x1, y1] with x0 < x1 and y0 < y1"
            )));
        }
    }
    Ok(Prompts::new()
        .points(points)
        .maybe_bbox(request.bbox.map(|b| b.map(|v| v as f32)))
        .multimask(request.multimask))
}

/// The candidates best first (the best is the mask `samus segment` writes), as PNGs.
fn response_of(
    prediction: &Prediction,
    decode_ms: f64,
    embedding: &CachedEmbedding,
    cached: bool,
) -> anyhow::Result<PredictResponse> {
    let best = prediction.best().index;
    let mut order: Vec<&samus_model::Mask> = prediction.masks().iter().collect();
    order.sort_by(|a, b| {
        (b.index == best)
            .cmp(&(a.index == best))
            .then(b.iou.total_cmp(&a.iou))
    });
    let mut masks = Vec::with_capacity(order.len());
    for m in &order {
        masks.push(BASE64.encode(encode_png(&DynamicImage::ImageLuma8(m.image.clone()))?));
    }
    Ok(PredictResponse {
        iou: order.iter().map(|m| m.iou).collect(),
        area: order.iter().map(|m| m.area()).collect(),
        masks,
        decode_ms,
        embed_ms: embedding.embed_ms,
        cached,
    })
}

/// `POST /api/images/{id}/predict`: points and a box -> masks.
pub async fn predict(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<PredictResponse>> {
    let image = image_of(&state, &id)?;
    let request: PredictRequest = parse_json(&body)?;
    let prompts = prompts_of(&request, &image)?;
    decode(&state, &image, move |model, embedding| {
        Ok(model.samus().predict(embedding, &prompts)?)
    })
    .await
}

/// Image `image`'s embedding decoded by `run` on a blocking thread, timed, as the
/// answer of `predict` and `auto`.
async fn decode(
    state: &Arc<ServerState>,
    image: &CatalogImage,
    run: impl FnOnce(&ServedModel, &samus_model::ImageEmbedding) -> anyhow::Result<Prediction>
        + Send
        + 'static,
) -> ApiResult<Json<PredictResponse>> {
    let (embedding, cached) = embedding_of(state, image).await?;
    let worker = Arc::clone(state);
    let response = blocking(state, move || {
        let start = Instant::now();
        let prediction = run(&worker.model, &embedding.embedding)?;
        let decode_ms = start.elapsed().as_secs_f64() * 1e3;
        response_of(&prediction, decode_ms, &embedding, cached)
    })
    .await?;
    state.predictions.fetch_add(1, Ordering::Relaxed);
    Ok(Json(response))
}

/// `POST /api/images/{id}/auto`: AutoSAMUS, no prompt.
pub async fn auto(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<PredictResponse>> {
    let image = image_of(&state, &id)?;
    if state.model.auto().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no auto prompt generator loaded: start samus serve with --apg FILE (or an AutoSAMUS checkpoint)"
                .to_string(),
        ));
    }
    decode(&state, &image, |model, embedding| {
        let auto = model.auto().context("no auto prompt generator loaded")?;
        Ok(auto.segment(embedding)?)
    })
    .await
}

fn label_store(state: &ServerState) -> ApiResult<&LabelStore> {
    state.labels.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "labels cannot be saved: start samus serve with --labels OUT_ROOT".to_string(),
        )
    })
}

/// `GET /api/images/{id}/label`: the saved label map as base64 PNG.
pub async fn get_label(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let image = image_of(&state, &id)?;
    label_store(&state)?;
    let worker = Arc::clone(&state);
    let label = blocking(&state, move || {
        let store = worker.labels.as_ref().context("no --labels")?;
        match store.read_label(&image.sample)? {
            Some(label) => Ok(Some(
                BASE64.encode(encode_png(&DynamicImage::ImageLuma8(label))?),
            )),
            None => Ok(None),
        }
    })
    .await?;
    match label {
        Some(png) => Ok(Json(serde_json::json!({ "label_map": png }))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} has no saved label yet", id_name(&state, &id)),
        )),
    }
}

fn id_name(state: &ServerState, id: &str) -> String {
    id.parse::<usize>()
        .ok()
        .and_then(|i| state.catalog.get(i))
        .map_or_else(|| format!("image {id}"), |im| im.name.clone())
}

/// Decodes a base64 PNG of exactly `width x height` (checked from the header before
/// the pixels are decoded) as 8-bit grey.
fn decode_png_field(field: &str, text: &str, width: u32, height: u32) -> ApiResult<GrayImage> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| ApiError::bad_request(format!("{field}: not base64 ({e})")))?;
    let reader = image::ImageReader::with_format(Cursor::new(&bytes), ImageFormat::Png);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ApiError::bad_request(format!("{field}: not a PNG ({e})")))?;
    if (w, h) != (width, height) {
        return Err(ApiError::bad_request(format!(
            "{field}: {w}x{h}, but the image is {width}x{height}"
        )));
    }
    let decoded = image::load_from_memory_with_format(&bytes, ImageFormat::Png)
        .map_err(|e| ApiError::bad_request(format!("{field}: not a readable PNG ({e})")))?;
    Ok(decoded.to_luma8())
}

/// `PUT /api/images/{id}/label`: saves one class's mask into the image's label map
/// (or the whole map) in the US30K layout.
pub async fn put_label(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<LabelResponse>> {
    let image = image_of(&state, &id)?;
    let store = label_store(&state)?;
    let request: LabelRequest = parse_json(&body)?;
    let classes = store.classes();
    let (w, h) = (image.width, image.height);
    enum Change {
        Class(u8, GrayImage),
        Map(GrayImage),
    }
    let change = match (&request.mask, &request.label_map, request.class_id) {
        (Some(mask), None, Some(class_id)) => {
            let class = u8::try_from(class_id)
                .ok()
                .filter(|&c| c >= 1 && u32::from(c) < classes)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "class_id {class_id}: this server's classes are 1 to {}",
                        classes - 1
                    ))
                })?;
            Change::Class(class, decode_png_field("mask", mask, w, h)?)
        }
        (Some(_), None, None) => {
            return Err(ApiError::bad_request(
                "a mask needs its class_id".to_string(),
            ))
        }
        (None, Some(map), None) => {
            let map = decode_png_field("label_map", map, w, h)?;
            if let Some(v) = map.as_raw().iter().find(|&&v| u32::from(v) >= classes) {
                return Err(ApiError::bad_request(format!(
                    "label_map: value {v}, but the classes are 0 to {}",
                    classes - 1
                )));
            }
            Change::Map(map)
        }
        _ => {
            return Err(ApiError::bad_request(
                "send {\"class_id\": k, \"mask\": \"<base64 PNG>\"} or {\"label_map\": \"<base64 PNG>\"}"
                    .to_string(),
            ))
        }
    };
    let worker = Arc::clone(&state);
    let saved = blocking(&state, move || {
        let store = worker.labels.as_ref().context("no --labels")?;
        let grey = samus_data::io::grey8_from_image(&open_image(&image.path)?);
        Ok(match change {
            Change::Map(map) => store.save(&image.sample, &grey, &map)?,
            Change::Class(class, mask) => store.save_class(&image.sample, &grey, class, &mask)?,
        })
    })
    .await?;
    let root = store.root();
    let relative = |p: &std::path::Path| {
        p.strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    };
    Ok(Json(LabelResponse {
        image: relative(&saved.image),
        label: relative(&saved.label),
        previous: saved.previous.as_deref().map(relative),
        classes: saved.classes,
    }))
}
