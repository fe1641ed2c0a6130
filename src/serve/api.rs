//! The HTTP endpoints of `dsocr serve`.
//!
//! - `POST /v1/ocr`: multipart (`file` plus option fields) or JSON (`data`: base64, plus
//!   options); answers the JSON array `dsocr ocr --format json` prints, or with `stream=true`
//!   server-sent events (`phase`, `text`, `report`, `error`, `done`).
//! - `POST /v1/chat/completions`: OpenAI's chat API with one `image_url` (a `data:` URI) and
//!   text parts as the prompt; `stream: true` sends OpenAI's chunks and `[DONE]`.
//! - `GET /v1/models`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! Errors are OpenAI-shaped: `{"error":{"message","type","code"}}`.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use image::RgbImage;
use serde_json::{Value, json};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::time::Instant as TokioInstant;

use super::engine::{Finished, Job, JobError, JobEvent, retry_after};
use super::{Shared, SubmitError};
use crate::ocr::generate::{DEFAULT_NGRAM_WHITELIST, NoRepeatNgram};
use crate::ocr::preprocess::{DEFAULT_MAX_TILES, MAX_PIXELS, Mode, decode_image};
use crate::ocr::prompt::{Preset, user_prompt};
use crate::ocr::session::{JobPhase, RunOptions};

type St = State<Arc<Shared>>;

/// The routes, the key check on `/v1/*`, the body limit and the request counters.
pub fn router(shared: Arc<Shared>) -> Router {
    let v1 = Router::new()
        .route("/v1/ocr", post(ocr))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_key));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), observe))
        .layer(DefaultBodyLimit::max(shared.max_body))
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind(), "code": self.status.as_u16()}})
    }

    fn submit(e: SubmitError, shared: &Shared) -> Self {
        match e {
            SubmitError::NotReady => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the model is not loaded yet ({}); GET /readyz says why",
                    shared.readiness().status
                ),
            ),
            SubmitError::Stopping => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")
            }
            SubmitError::Full => {
                let wait = retry_after(&shared.metrics).as_secs();
                Self {
                    retry_after: Some(wait),
                    ..Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("the queue is full; retry in {wait} s"),
                    )
                }
            }
        }
    }

    fn job(e: JobError, shared: &Shared) -> Self {
        match e {
            JobError::Cancelled => Self::timeout(shared),
            JobError::Invalid(m) => Self::bad(m),
            JobError::Failed(m) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the engine failed: {m}"),
            ),
        }
    }

    fn timeout(shared: &Shared) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request took longer than the server's limit ({} s, --timeout-s) and was stopped",
                shared.timeout.as_secs()
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see POST /v1/ocr, POST /v1/chat/completions, GET /v1/models, /healthz, /readyz, /metrics",
    )
}

// ---------------------------------------------------------------------------------------------
// Middleware

/// `/v1/*` needs a key when keys are configured: `Authorization: Bearer KEY` or `X-API-Key`.
async fn require_key(State(shared): St, req: Request, next: Next) -> Response {
    if shared.keys.is_empty() {
        return next.run(req).await;
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let presented = bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    });
    match presented {
        Some(key) if shared.keys.accepts(key.as_bytes()) => next.run(req).await,
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "the API key is not valid").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs an API key: send `Authorization: Bearer KEY`",
        )
        .into_response(),
    }
}

/// Counts every answer by route and status, times it, and logs method, route, status and time
/// (never headers or bodies).
async fn observe(State(shared): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", MatchedPath::as_str)
        .to_string();
    let method = req.method().clone();
    let start = Instant::now();
    let response = next.run(req).await;
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    shared.metrics.request(&route, status, elapsed);
    if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        tracing::debug!(
            "{method} {route} {status} {:.1} ms",
            elapsed.as_secs_f64() * 1e3
        );
    } else {
        tracing::info!(
            "{method} {route} {status} {:.1} ms",
            elapsed.as_secs_f64() * 1e3
        );
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Probes and metrics

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(shared): St) -> Response {
    let r = shared.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}

async fn metrics(State(shared): St) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn models(State(shared): St) -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": shared.model_id, "object": "model", "created": 0, "owned_by": "dsocr"}],
    }))
}

// ---------------------------------------------------------------------------------------------
// Uploads

/// The pages of an upload. An image is one page. PDF uploads plug in here: render the pages
/// named by `pages` (all when `None`) and return one image each.
fn decode_upload(
    bytes: &[u8],
    name: &str,
    pages: Option<&[u32]>,
) -> Result<Vec<(String, RgbImage)>, ApiError> {
    if bytes.starts_with(b"%PDF-") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PDF input needs the PDF renderer, which this build of dsocr does not have; send each page as an image (PNG, JPEG, WebP, TIFF, BMP, GIF)",
        ));
    }
    if let Some(pages) = pages
        && pages != [1]
    {
        return Err(ApiError::bad(format!(
            "an image has one page; `pages` asks for {pages:?}"
        )));
    }
    let image = decode_image(bytes, Path::new(name), MAX_PIXELS)
        .map_err(|e| ApiError::bad(format!("the upload is not a usable image: {e}")))?;
    Ok(vec![(name.to_string(), image)])
}

/// `1`, `1-3,5`, or `all` (`None`).
fn parse_pages(spec: &str) -> Result<Option<Vec<u32>>, ApiError> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("all") || spec.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::bad(format!(
            "`pages` must look like `1`, `1-3,5` or `all`, not {spec:?}"
        ))
    };
    let mut pages = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        let b: u32 = b.trim().parse().map_err(|_| bad())?;
        if a == 0 || b < a || b - a > 10_000 {
            return Err(bad());
        }
        pages.extend(a..=b);
    }
    pages.sort_unstable();
    pages.dedup();
    Ok(Some(pages))
}

/// The options of `/v1/ocr`, from the query string and the body's fields.
#[derive(Debug, Default)]
struct OcrParams {
    mode: Option<String>,
    preset: Option<String>,
    prompt: Option<String>,
    max_tokens: Option<String>,
    max_tiles: Option<String>,
    pages: Option<String>,
    stream: Option<String>,
}

const OCR_FIELDS: &str =
    "file (or JSON data), mode, preset, prompt, max_tokens, max_tiles, pages, stream";

impl OcrParams {
    fn set(&mut self, key: &str, value: String) -> Result<(), ApiError> {
        let slot = match key {
            "mode" => &mut self.mode,
            "preset" => &mut self.preset,
            "prompt" => &mut self.prompt,
            "max_tokens" | "max_new_tokens" => &mut self.max_tokens,
            "max_tiles" => &mut self.max_tiles,
            "pages" => &mut self.pages,
            "stream" => &mut self.stream,
            other => {
                return Err(ApiError::bad(format!(
                    "unknown field {other:?}; the fields are {OCR_FIELDS}"
                )));
            }
        };
        *slot = Some(value);
        Ok(())
    }

    fn stream(&self) -> Result<bool, ApiError> {
        parse_bool("stream", self.stream.as_deref())
    }

    fn run_options(&self, ceiling: usize) -> Result<RunOptions, ApiError> {
        let mode = match &self.mode {
            Some(m) => m.parse::<Mode>().map_err(ApiError::bad)?,
            None => Mode::Gundam,
        };
        let prompt = match (&self.prompt, &self.preset) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad("give either `prompt` or `preset`, not both"));
            }
            (Some(p), None) => {
                user_prompt(p).map_err(|e| ApiError::bad(format!("`prompt`: {e}")))?
            }
            (None, Some(p)) => p.parse::<Preset>().map_err(ApiError::bad)?.prompt(),
            (None, None) => Preset::Document.prompt(),
        };
        let max_tiles = match &self.max_tiles {
            Some(t) => t
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|t| (2..=64).contains(t))
                .ok_or_else(|| ApiError::bad("`max_tiles` must be a number from 2 to 64"))?,
            None => DEFAULT_MAX_TILES,
        };
        Ok(RunOptions {
            mode,
            max_tiles,
            prompt,
            max_new_tokens: parse_max_tokens(self.max_tokens.as_deref(), ceiling)?,
            no_repeat_ngram: Some(NoRepeatNgram {
                whitelist: DEFAULT_NGRAM_WHITELIST.to_vec(),
                ..NoRepeatNgram::default()
            }),
            skip_special: false,
        })
    }
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value.map(str::trim) {
        None => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no" | "") => Ok(false),
        Some(v) => Err(ApiError::bad(format!(
            "`{name}` must be true or false, not {v:?}"
        ))),
    }
}

/// A request's token limit: at least 1, at most the server's (`--max-new-tokens`).
fn parse_max_tokens(value: Option<&str>, ceiling: usize) -> Result<usize, ApiError> {
    match value {
        None => Ok(ceiling),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(ceiling)),
            _ => Err(ApiError::bad(format!(
                "`max_tokens` must be a whole number of at least 1, not {v:?}"
            ))),
        },
    }
}

/// A JSON value as an option string (numbers and booleans as written).
fn value_text(key: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ApiError::bad(format!(
            "`{key}` must be a string, number or boolean"
        ))),
    }
}

/// The upload and options of a `/v1/ocr` request.
async fn read_ocr_request(
    shared: &Arc<Shared>,
    query: Vec<(String, String)>,
    req: Request,
) -> Result<(Vec<u8>, String, OcrParams), ApiError> {
    let mut params = OcrParams::default();
    for (k, v) in query {
        params.set(&k, v)?;
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut file: Option<(Vec<u8>, String)> = None;
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, shared)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        loop {
            let field = multipart.next_field().await.map_err(|e| {
                ApiError::new(
                    e.status(),
                    format!("cannot read the upload: {}", e.body_text()),
                )
            })?;
            let Some(field) = field else { break };
            let name = field.name().unwrap_or("").to_string();
            if name == "file" {
                let filename = field
                    .file_name()
                    .map_or_else(|| "upload".to_string(), sanitize_name);
                let bytes = field.bytes().await.map_err(|e| {
                    ApiError::new(
                        e.status(),
                        format!("cannot read the upload: {}", e.body_text()),
                    )
                })?;
                if file.is_some() {
                    return Err(ApiError::bad("send one `file` per request"));
                }
                file = Some((bytes.to_vec(), filename));
            } else {
                let text = field.text().await.map_err(|e| {
                    ApiError::new(
                        e.status(),
                        format!("cannot read the field {name:?}: {}", e.body_text()),
                    )
                })?;
                params.set(&name, text)?;
            }
        }
    } else if content_type.starts_with("application/json") {
        let body = Bytes::from_request(req, shared)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(ApiError::bad("the JSON body must be an object"));
        };
        let mut data = None;
        let mut filename = "upload".to_string();
        for (k, v) in map {
            match k.as_str() {
                "data" => {
                    let Value::String(s) = v else {
                        return Err(ApiError::bad("`data` must be a base64 string"));
                    };
                    data = Some(decode_base64(&s)?);
                }
                "filename" => filename = sanitize_name(&value_text(&k, &v)?),
                _ => params.set(&k, value_text(&k, &v)?)?,
            }
        }
        let Some(data) = data else {
            return Err(ApiError::bad(
                "the JSON body needs `data`: the file, base64-encoded",
            ));
        };
        file = Some((data, filename));
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send multipart/form-data with a `file` field, or application/json with the file base64-encoded in `data`",
        ));
    }
    let Some((bytes, name)) = file else {
        return Err(ApiError::bad(
            "no `file` field: add the image as a multipart field named `file`",
        ));
    };
    Ok((bytes, name, params))
}

/// A file name without folders or control characters (it only labels the report).
fn sanitize_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.is_empty() || clean == "." || clean == ".." {
        "upload".into()
    } else {
        clean
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, ApiError> {
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| ApiError::bad(format!("`data` is not valid base64: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Sets every job's cancel flag when dropped: with the handler (client gone) or at the end.
struct CancelOnDrop(Vec<Arc<AtomicBool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        for c in &self.0 {
            c.store(true, Ordering::Relaxed);
        }
    }
}

/// A request's jobs in the queue.
struct Submitted {
    receivers: Vec<UnboundedReceiver<JobEvent>>,
    guard: CancelOnDrop,
    deadline: TokioInstant,
}

fn submit(
    shared: &Shared,
    pages: Vec<(String, RgbImage)>,
    opts: &RunOptions,
    start: TokioInstant,
) -> Result<Submitted, ApiError> {
    let mut jobs = Vec::new();
    let mut receivers = Vec::new();
    let mut cancels = Vec::new();
    for (name, image) in pages {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        cancels.push(cancel.clone());
        receivers.push(rx);
        jobs.push(Job {
            name,
            image,
            opts: opts.clone(),
            cancel,
            events: tx,
            queued_at: Instant::now(),
        });
    }
    shared
        .submit(jobs)
        .map_err(|e| ApiError::submit(e, shared))?;
    Ok(Submitted {
        receivers,
        guard: CancelOnDrop(cancels),
        deadline: start + shared.timeout,
    })
}

/// Wait for every page's result (non-streaming).
async fn collect(shared: &Shared, mut submitted: Submitted) -> Result<Vec<Finished>, ApiError> {
    let mut done = Vec::new();
    for rx in &mut submitted.receivers {
        loop {
            match tokio::time::timeout_at(submitted.deadline, rx.recv()).await {
                Err(_) => return Err(ApiError::timeout(shared)),
                Ok(None) => return Err(engine_gone()),
                Ok(Some(JobEvent::Done(Ok(f)))) => {
                    done.push(*f);
                    break;
                }
                Ok(Some(JobEvent::Done(Err(e)))) => return Err(ApiError::job(e, shared)),
                Ok(Some(_)) => {}
            }
        }
    }
    drop(submitted.guard);
    Ok(done)
}

fn engine_gone() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the engine stopped before the page was done (the server is stopping)",
    )
}

fn phase_name(p: JobPhase) -> &'static str {
    match p {
        JobPhase::Preprocess => "preprocess",
        JobPhase::Vision => "vision",
        JobPhase::Prefill => "prefill",
        JobPhase::Decode => "decode",
    }
}

/// One step of a streamed request.
enum Step {
    Event(usize, JobEvent),
    /// The client went away.
    Gone,
    Timeout,
    EngineGone,
    End,
}

/// Forwards the jobs' events, in page order, as SSE events made by `to_sse`; stops when the
/// client goes away (which cancels the jobs) or the deadline passes.
async fn pump(
    mut submitted: Submitted,
    tx: mpsc::Sender<SseEvent>,
    mut to_sse: impl FnMut(Step) -> (Vec<SseEvent>, bool),
) {
    let mut page = 0;
    loop {
        let step = match submitted.receivers.get_mut(page) {
            None => Step::End,
            Some(rx) => tokio::select! {
                () = tx.closed() => Step::Gone,
                r = tokio::time::timeout_at(submitted.deadline, rx.recv()) => match r {
                    Err(_) => Step::Timeout,
                    Ok(None) => Step::EngineGone,
                    Ok(Some(ev)) => {
                        let i = page;
                        if matches!(ev, JobEvent::Done(_)) {
                            page += 1;
                        }
                        Step::Event(i, ev)
                    }
                },
            },
        };
        if matches!(step, Step::Gone) {
            return;
        }
        let (events, stop) = to_sse(step);
        for e in events {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        if stop {
            return;
        }
    }
}

/// An SSE response fed by `pump` on its own task.
fn sse_response(
    submitted: Submitted,
    to_sse: impl FnMut(Step) -> (Vec<SseEvent>, bool) + Send + 'static,
) -> Response {
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(pump(submitted, tx, to_sse));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn json_event(name: &str, value: &Value) -> SseEvent {
    SseEvent::default().event(name).data(value.to_string())
}

// ---------------------------------------------------------------------------------------------
// POST /v1/ocr

async fn ocr(
    State(shared): St,
    Query(query): Query<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    let start = TokioInstant::now();
    let (bytes, name, params) = read_ocr_request(&shared, query, req).await?;
    let opts = params.run_options(shared.max_new_tokens)?;
    let stream = params.stream()?;
    let pages = match &params.pages {
        Some(p) => parse_pages(p)?,
        None => None,
    };
    let pages = tokio::task::spawn_blocking(move || decode_upload(&bytes, &name, pages.as_deref()))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decoding the upload failed",
            )
        })??;
    let submitted = submit(&shared, pages, &opts, start)?;
    if !stream {
        let done = collect(&shared, submitted).await?;
        let reports: Vec<_> = done.iter().map(|f| &f.report).collect();
        return Ok(axum::Json(reports).into_response());
    }
    let timeout_error = ApiError::timeout(&shared).body();
    let shared2 = shared.clone();
    Ok(sse_response(submitted, move |step| match step {
        Step::Event(page, JobEvent::Phase(p)) => (
            vec![json_event(
                "phase",
                &json!({"page": page + 1, "phase": phase_name(p)}),
            )],
            false,
        ),
        Step::Event(_, JobEvent::Text { piece, .. }) if piece.is_empty() => (vec![], false),
        Step::Event(page, JobEvent::Text { piece, tokens }) => (
            vec![json_event(
                "text",
                &json!({"page": page + 1, "delta": piece, "tokens": tokens}),
            )],
            false,
        ),
        Step::Event(_, JobEvent::Done(Ok(f))) => (
            vec![json_event(
                "report",
                &serde_json::to_value(&f.report).unwrap_or(Value::Null),
            )],
            false,
        ),
        Step::Event(_, JobEvent::Done(Err(e))) => (
            vec![json_event("error", &ApiError::job(e, &shared2).body())],
            true,
        ),
        Step::Timeout => (vec![json_event("error", &timeout_error)], true),
        Step::EngineGone => (vec![json_event("error", &engine_gone().body())], true),
        Step::End => (vec![json_event("done", &json!({}))], true),
        Step::Gone => (vec![], true),
    }))
}

// ---------------------------------------------------------------------------------------------
// POST /v1/chat/completions

/// What a chat request asks for.
struct ChatRequest {
    image: Vec<u8>,
    opts: RunOptions,
    stream: bool,
    include_usage: bool,
}

fn parse_chat(body: &[u8], ceiling: usize) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    let messages = value
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad("`messages` must be a non-empty array"))?;
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for m in messages {
        if m.get("role").and_then(Value::as_str) != Some("user") {
            continue;
        }
        match m.get("content") {
            Some(Value::String(s)) => texts.push(s.clone()),
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            if let Some(t) = part.get("text").and_then(Value::as_str) {
                                texts.push(t.to_string());
                            }
                        }
                        Some("image_url") => {
                            let url = part
                                .get("image_url")
                                .and_then(|u| u.get("url").or(Some(u)))
                                .and_then(Value::as_str)
                                .ok_or_else(|| {
                                    ApiError::bad("an `image_url` part needs `image_url.url`")
                                })?;
                            images.push(data_uri(url)?);
                        }
                        other => {
                            return Err(ApiError::bad(format!(
                                "content parts must be `text` or `image_url`, not {other:?}"
                            )));
                        }
                    }
                }
            }
            _ => {
                return Err(ApiError::bad(
                    "a user message's `content` must be a string or an array of parts",
                ));
            }
        }
    }
    if images.len() != 1 {
        return Err(ApiError::bad(format!(
            "send exactly one image as an `image_url` part with a data: URI (got {})",
            images.len()
        )));
    }
    let text = texts.join("\n");
    let text = text.trim();
    let prompt = if text.is_empty() {
        Preset::Document.prompt()
    } else {
        user_prompt(text).map_err(|e| ApiError::bad(e.to_string()))?
    };
    let max_tokens = value
        .get("max_completion_tokens")
        .or_else(|| value.get("max_tokens"))
        .filter(|v| !v.is_null())
        .map(|v| value_text("max_tokens", v))
        .transpose()?;
    let mode = match value.get("mode").and_then(Value::as_str) {
        Some(m) => m.parse::<Mode>().map_err(ApiError::bad)?,
        None => Mode::Gundam,
    };
    let stream = value
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = value
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ChatRequest {
        image: images.pop().unwrap_or_default(),
        opts: RunOptions {
            mode,
            max_tiles: DEFAULT_MAX_TILES,
            prompt,
            max_new_tokens: parse_max_tokens(max_tokens.as_deref(), ceiling)?,
            no_repeat_ngram: Some(NoRepeatNgram {
                whitelist: DEFAULT_NGRAM_WHITELIST.to_vec(),
                ..NoRepeatNgram::default()
            }),
            skip_special: false,
        },
        stream,
        include_usage,
    })
}

/// The bytes of a `data:[type][;base64],DATA` URI (the server fetches no URL).
fn data_uri(url: &str) -> Result<Vec<u8>, ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(ApiError::bad(
            "`image_url` must be a data: URI (data:image/png;base64,...); the server fetches no URL",
        ));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(ApiError::bad("the data: URI has no `,`"));
    };
    if !meta.ends_with(";base64") {
        return Err(ApiError::bad(
            "the data: URI must be base64 (data:image/png;base64,...)",
        ));
    }
    decode_base64(data)
}

static CHAT_IDS: AtomicU64 = AtomicU64::new(0);

async fn chat(State(shared): St, body: Bytes) -> Result<Response, ApiError> {
    let start = TokioInstant::now();
    let request = parse_chat(&body, shared.max_new_tokens)?;
    drop(body);
    let ChatRequest {
        image,
        opts,
        stream,
        include_usage,
    } = request;
    let pages = tokio::task::spawn_blocking(move || decode_upload(&image, "image_url", None))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decoding the image failed",
            )
        })??;
    let submitted = submit(&shared, pages, &opts, start)?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!(
        "chatcmpl-{created:x}{:06x}",
        CHAT_IDS.fetch_add(1, Ordering::Relaxed)
    );
    let model = shared.model_id.clone();
    let usage = |f: &Finished| {
        json!({
            "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.generated_tokens,
            "total_tokens": f.prompt_tokens + f.generated_tokens,
        })
    };
    let finish_reason = |f: &Finished| if f.hit_token_limit { "length" } else { "stop" };
    if !stream {
        let done = collect(&shared, submitted).await?;
        let f = &done[0];
        return Ok(axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": f.text},
                "logprobs": null,
                "finish_reason": finish_reason(f),
            }],
            "usage": usage(f),
        }))
        .into_response());
    }
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let data = |v: &Value| SseEvent::default().data(v.to_string());
    let shared2 = shared.clone();
    let mut started = false;
    Ok(sse_response(submitted, move |step| {
        let mut out = Vec::new();
        if !started {
            started = true;
            out.push(data(&chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            )));
        }
        let stop = match step {
            Step::Event(_, JobEvent::Text { piece, .. }) => {
                if !piece.is_empty() {
                    out.push(data(&chunk(json!({"content": piece}), None)));
                }
                false
            }
            Step::Event(_, JobEvent::Phase(_)) => false,
            Step::Event(_, JobEvent::Done(Ok(f))) => {
                out.push(data(&chunk(json!({}), Some(finish_reason(&f)))));
                if include_usage {
                    let mut last = chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage(&f);
                    out.push(data(&last));
                }
                out.push(SseEvent::default().data("[DONE]"));
                true
            }
            Step::Event(_, JobEvent::Done(Err(e))) => {
                out.push(data(&ApiError::job(e, &shared2).body()));
                true
            }
            Step::Timeout => {
                out.push(data(&ApiError::timeout(&shared2).body()));
                true
            }
            Step::EngineGone => {
                out.push(data(&engine_gone().body()));
                true
            }
            Step::End | Step::Gone => true,
        };
        (out, stop)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_specs() {
        assert_eq!(parse_pages("all").ok().flatten(), None);
        assert_eq!(parse_pages("1").ok().flatten(), Some(vec![1]));
        assert_eq!(parse_pages("3-4, 1,4").ok().flatten(), Some(vec![1, 3, 4]));
        for bad in ["0", "2-1", "x", "1-", "1,,2"] {
            assert!(parse_pages(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_lose_folders_and_control_characters() {
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\x\\scan.png"), "scan.png");
        assert_eq!(sanitize_name("a\nb.png"), "ab.png");
        assert_eq!(sanitize_name(".."), "upload");
    }

    #[test]
    fn chat_prompts_and_images() {
        let png = {
            let mut bytes = Vec::new();
            image::RgbImage::new(2, 2)
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .expect("png");
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let body = |content: Value| {
            json!({"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 5})
                .to_string()
        };
        let url = format!("data:image/png;base64,{png}");
        let r = parse_chat(
            body(json!([{"type": "text", "text": "Free OCR."}, {"type": "image_url", "image_url": {"url": url}}])).as_bytes(),
            100,
        )
        .expect("valid");
        assert_eq!(r.opts.prompt, "<image>\nFree OCR.");
        assert_eq!(r.opts.max_new_tokens, 5);
        assert!(!r.stream);
        let r = parse_chat(
            body(json!([{"type": "image_url", "image_url": {"url": url}}])).as_bytes(),
            3,
        )
        .expect("valid");
        assert_eq!(r.opts.prompt, Preset::Document.prompt());
        assert_eq!(r.opts.max_new_tokens, 3, "clamped to the server's ceiling");
        for (content, expect) in [
            (json!("just text"), "exactly one image"),
            (
                json!([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]),
                "data: URI",
            ),
            (
                json!([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]),
                "base64",
            ),
            (json!([{"type": "audio"}]), "text` or `image_url"),
        ] {
            let err = parse_chat(body(content).as_bytes(), 10)
                .err()
                .expect("invalid");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(expect), "{}", err.message);
        }
        let err = parse_chat(b"{not json", 10).err().expect("invalid");
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
    }
}
