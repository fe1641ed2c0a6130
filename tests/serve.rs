//! `dsocr serve` over real loopback HTTP: the built binary on a free port, the seeded tiny model
//! (`common::make_model`), answers checked against `dsocr ocr --format json` on the same
//! images; keys, limits, disconnects, SIGTERM, readiness with the mock hub, and the official
//! `openai` Python client (from the venv; its interpreter is `DSOCR_PYTHON`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dsocr::hub::mock::{self, Access, MockConfig, MockFile, MockHub, MockRepo};
use dsocr::ocr::grounding;
use image::RgbImage;
use serde_json::{Value, json};

mod common;
use common::make_model;

/// New tokens per request in most tests: enough to tell outputs apart, quick on the tiny model.
const TOKENS: usize = 6;
/// Distinct test images.
const IMAGES: usize = 4;

/// The tests that time things or load the engine hard run one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The shared scratch folder: the model, the images and the CLI's reports, made once.
struct Fixture {
    /// The scratch folder (removed when the test binary exits: see [`fixture`]).
    root: PathBuf,
    model: PathBuf,
    images: Vec<PathBuf>,
    /// `dsocr ocr --format json` for each image (tiny mode, TOKENS tokens).
    cli: Vec<Value>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    // A static is never dropped, so the folder is dropped (removed) when the process exits.
    static SCRATCH: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);
    extern "C" fn remove_scratch() {
        if let Ok(mut scratch) = SCRATCH.lock() {
            drop(scratch.take());
        }
    }
    F.get_or_init(|| {
        let scratch = common::scratch("serve");
        let root = scratch.path().to_path_buf();
        *SCRATCH.lock().expect("scratch lock") = Some(scratch);
        // SAFETY: `remove_scratch` is a plain function that neither unwinds nor calls `exit`.
        // It runs once, as the test binary exits (returning from main or `process::exit`).
        assert_eq!(unsafe { libc::atexit(remove_scratch) }, 0, "atexit");
        let model = root.join("tiny-ocr");
        make_model(&model);
        let dir = root.join("images");
        std::fs::create_dir_all(&dir).expect("images dir");
        let images: Vec<PathBuf> = (0..IMAGES)
            .map(|i| {
                let (w, h) = (300 + 97 * i as u32, 200 + 131 * i as u32);
                let img = RgbImage::from_fn(w, h, |x, y| {
                    let k = i as u32 + 1;
                    image::Rgb([
                        (x * 7 * k) as u8,
                        (y * 11 + 40 * k) as u8,
                        ((x ^ y) * k) as u8,
                    ])
                });
                let path = dir.join(format!("{}.png", (b'a' + i as u8) as char));
                img.save(&path).expect("save png");
                path
            })
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_dsocr"))
            .args(["ocr", dir.to_str().expect("utf-8"), "--model"])
            .arg(&model)
            .args(["--mode", "tiny", "--device", "cpu", "--format", "json"])
            .args(["--max-new-tokens", &TOKENS.to_string(), "--out"])
            .arg(root.join("cli-out"))
            .output()
            .expect("run dsocr ocr");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dsocr ocr failed:\n{stderr}");
        let cli: Vec<Value> = serde_json::from_slice(&out.stdout).expect("CLI JSON");
        assert_eq!(cli.len(), IMAGES);
        let distinct: std::collections::HashSet<String> =
            cli.iter().map(|r| r["markdown"].to_string()).collect();
        assert!(
            distinct.len() >= 3,
            "the test images must give different outputs, or a mixed-up answer would pass: {cli:?}"
        );
        Fixture {
            root,
            model,
            images,
            cli,
        }
    })
}

/// The fields of a report that must match the CLI's for the same image and options.
fn same_page(server: &Value, cli: &Value) {
    for key in [
        "markdown",
        "generated_tokens",
        "stop",
        "hit_token_limit",
        "prompt_tokens",
        "image_tokens",
        "width",
        "height",
        "mode",
        "spatial_crop",
        "boxes",
    ] {
        assert_eq!(
            server[key], cli[key],
            "{key} differs: server {server}, CLI {cli}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The server process

struct Server {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Start `dsocr serve` on a free loopback port with these extra arguments and variables.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dsocr"));
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        isolate(&mut cmd, env);
        let mut child = cmd.spawn().expect("start dsocr serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let pipe = child.stderr.take().expect("stderr");
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().expect("lock");
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read stdout");
        let Some(base) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "no `listening on` line (got {first:?}):\n{}",
                stderr.lock().expect("lock")
            );
        };
        Server {
            base: base.to_string(),
            child,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    async fn wait_ready(&self, client: &reqwest::Client, within: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                start.elapsed() < within,
                "not ready after {within:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One series of `/metrics` (with its labels, exactly as written).
    async fn metric(&self, client: &reqwest::Client, series: &str) -> f64 {
        let text = client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait_metric(
        &self,
        client: &reqwest::Client,
        series: &str,
        ok: impl Fn(f64) -> bool,
        within: Duration,
    ) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.metric(client, series).await;
            if ok(v) {
                return v;
            }
            assert!(
                start.elapsed() < within,
                "{series} = {v} after {within:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the server's stderr ---\n{}", self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// No proxy, token or hub setting from the outside; a private `HF_HOME` unless one is given.
fn isolate(cmd: &mut Command, env: &[(&str, &str)]) {
    common::remove_outside_hub_env(cmd);
    for k in ["DSOCR_API_KEY_FILE", "DSOCR_LOG"] {
        cmd.env_remove(k);
    }
    cmd.env("HF_HOME", fixture().root.join("hf-home"));
    cmd.env("HF_ENDPOINT", "http://127.0.0.1:9");
    cmd.env("NO_PROXY", "*");
    for (k, v) in env {
        cmd.env(k, v);
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        // A fresh connection per request: a server that answers before reading a body (401,
        // 413) closes its connection, and a pooled one reused right after fails with
        // "IncompleteMessage" on the client's side.
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A multipart/form-data body with a `file` part and text fields.
fn multipart(file: &[u8], filename: &str, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "dsocr-test-boundary-7f3a9c";
    let mut body = Vec::new();
    for (k, v) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        )
        .expect("write");
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .expect("write");
    body.extend_from_slice(file);
    write!(body, "\r\n--{boundary}--\r\n").expect("write");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn image_bytes(i: usize) -> Vec<u8> {
    std::fs::read(&fixture().images[i]).expect("image")
}

async fn post_multipart(
    client: &reqwest::Client,
    url: &str,
    file: &[u8],
    filename: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let (ct, body) = multipart(file, filename, fields);
    client
        .post(url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("POST")
}

async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST")
}

/// `(event, data)` of every server-sent event in `text`.
fn sse(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            (!data.is_empty()).then(|| (event, data.join("\n")))
        })
        .collect()
}

/// The markdown the CLI derives from raw streamed text.
fn markdown_of(raw: &str) -> String {
    let text = raw.trim();
    grounding::markdown(text, &grounding::find_spans(text))
}

async fn error_of(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.expect("JSON error body");
    assert_eq!(v["error"]["code"], status, "{v}");
    v["error"]["message"].as_str().expect("message").to_string()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_the_clis_answers_to_many_clients_and_to_the_openai_client() {
    let f = fixture();
    let _serial = serial().await;
    let server = Server::start(&["--model", f.model.to_str().expect("utf-8")], &[]);
    let client = client();
    let health = client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(
        health.status(),
        200,
        "healthz answers while the model loads"
    );
    server.wait_ready(&client, Duration::from_secs(60)).await;
    let ready: Value = client
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["status"], "ready");

    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "tiny-ocr");
    let tokens = TOKENS.to_string();
    let opts = [("mode", "tiny"), ("max_tokens", tokens.as_str())];

    // Multipart: 200 with the CLI's report.
    let r = post_multipart(
        &client,
        &server.url("/v1/ocr"),
        &image_bytes(0),
        "a.png",
        &opts,
    )
    .await;
    assert_eq!(r.status(), 200);
    let reports: Value = r.json().await.expect("json");
    assert_eq!(reports.as_array().map(Vec::len), Some(1));
    same_page(&reports[0], &f.cli[0]);
    assert_eq!(reports[0]["image"], "a.png");

    // JSON with base64 data.
    let r = post_json(
        &client,
        &server.url("/v1/ocr"),
        &json!({"data": b64(&image_bytes(1)), "filename": "b.png", "mode": "tiny", "max_tokens": TOKENS}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let reports: Value = r.json().await.expect("json");
    same_page(&reports[0], &f.cli[1]);

    // Streaming: phases in order, text deltas that add up to the report, then done.
    let r = post_multipart(
        &client,
        &server.url("/v1/ocr?stream=true"),
        &image_bytes(2),
        "c.png",
        &opts,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let events = sse(&r.text().await.expect("body"));
    let phases: Vec<String> = events
        .iter()
        .filter(|(e, _)| e == "phase")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("json")["phase"]
                .as_str()
                .expect("phase")
                .to_string()
        })
        .collect();
    assert_eq!(phases, ["preprocess", "vision", "prefill", "decode"]);
    let streamed: String = events
        .iter()
        .filter(|(e, _)| e == "text")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("json")["delta"]
                .as_str()
                .expect("delta")
                .to_string()
        })
        .collect();
    let report: Value = events
        .iter()
        .find(|(e, _)| e == "report")
        .map(|(_, d)| serde_json::from_str(d).expect("json"))
        .expect("a report event");
    same_page(&report, &f.cli[2]);
    assert_eq!(
        markdown_of(&streamed),
        f.cli[2]["markdown"].as_str().expect("md")
    );
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("done"));

    // Chat completions, not streamed.
    let url = format!("data:image/png;base64,{}", b64(&image_bytes(3)));
    let r = post_json(
        &client,
        &server.url("/v1/chat/completions"),
        &json!({"model": "tiny-ocr", "mode": "tiny", "max_tokens": TOKENS, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let chat: Value = r.json().await.expect("json");
    assert_eq!(chat["object"], "chat.completion");
    let content = chat["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(
        markdown_of(content),
        f.cli[3]["markdown"].as_str().expect("md")
    );
    assert_eq!(
        chat["usage"]["completion_tokens"],
        f.cli[3]["generated_tokens"]
    );
    assert_eq!(
        chat["choices"][0]["finish_reason"],
        if f.cli[3]["hit_token_limit"] == true {
            "length"
        } else {
            "stop"
        }
    );

    // 32 clients, 3 requests each, alternating multipart and JSON: every answer is the CLI's for
    // that image, under the name that client gave it (nothing lost, duplicated or swapped).
    let pages_before = server.metric(&client, "dsocr_pages_total").await;
    let mut tasks = Vec::new();
    for c in 0..32 {
        let client = client.clone();
        let url = server.url("/v1/ocr");
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for k in 0..3 {
                let i = (c + k) % IMAGES;
                let name = format!("client{c}-req{k}.png");
                let r = if (c + k) % 2 == 0 {
                    let tokens = TOKENS.to_string();
                    post_multipart(&client, &url, &image_bytes(i), &name, &[("mode", "tiny"), ("max_tokens", &tokens)]).await
                } else {
                    post_json(&client, &url, &json!({"data": b64(&image_bytes(i)), "filename": name, "mode": "tiny", "max_tokens": TOKENS})).await
                };
                let status = r.status().as_u16();
                let body: Value = r.json().await.expect("json");
                answers.push((i, name, status, body));
            }
            answers
        }));
    }
    let mut count = 0;
    for t in tasks {
        for (i, name, status, body) in t.await.expect("client task") {
            assert_eq!(status, 200, "{name}: {body}");
            let reports = body.as_array().expect("array");
            assert_eq!(reports.len(), 1);
            assert_eq!(reports[0]["image"], name.as_str());
            same_page(&reports[0], &f.cli[i]);
            count += 1;
        }
    }
    assert_eq!(count, 96);
    let pages_after = server.metric(&client, "dsocr_pages_total").await;
    assert_eq!(
        pages_after - pages_before,
        96.0,
        "each request ran exactly once"
    );

    // The official openai client, streamed and not.
    let python = std::env::var("DSOCR_PYTHON")
        .expect("DSOCR_PYTHON is not set: source scripts/env.sh (the venv has the openai client)");
    let script = r#"
import base64, json, sys
import openai
base, path, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=base + "/v1", api_key="unused-on-loopback")
model = client.models.list().data[0].id
url = "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()
messages = [{"role": "user", "content": [
    {"type": "text", "text": "<image>\n<|grounding|>Convert the document to markdown."},
    {"type": "image_url", "image_url": {"url": url}}]}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=tokens,
                                   extra_body={"mode": "tiny"})
streamed, finish, usage = "", None, None
for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=tokens,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"mode": "tiny"}):
    if chunk.choices:
        streamed += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage.completion_tokens
print(json.dumps({"model": model, "content": r.choices[0].message.content,
                  "finish": r.choices[0].finish_reason, "tokens": r.usage.completion_tokens,
                  "streamed": streamed, "stream_finish": finish, "stream_tokens": usage}))
"#;
    let base = server.base.clone();
    let image = f.images[1].clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", script, &base])
            .arg(image)
            .arg(TOKENS.to_string())
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("OPENAI_BASE_URL")
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "the openai client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("python printed JSON");
    assert_eq!(got["model"], "tiny-ocr");
    let cli = &f.cli[1];
    assert_eq!(
        markdown_of(got["content"].as_str().expect("content")),
        cli["markdown"].as_str().expect("md")
    );
    assert_eq!(
        got["streamed"], got["content"],
        "streamed deltas add up to the answer"
    );
    assert_eq!(got["tokens"], cli["generated_tokens"]);
    assert_eq!(got["stream_tokens"], cli["generated_tokens"]);
    let finish = if cli["hit_token_limit"] == true {
        "length"
    } else {
        "stop"
    };
    assert_eq!(got["finish"], finish);
    assert_eq!(got["stream_finish"], finish);

    // Malformed requests: 400 (415 for what the server cannot take) with a clear message.
    let ocr = server.url("/v1/ocr");
    let png = image_bytes(0);
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (
            client
                .post(&ocr)
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .expect("post"),
            400,
            "not valid JSON",
        ),
        (
            post_json(&client, &ocr, &json!({"mode": "tiny"})).await,
            400,
            "needs `data`",
        ),
        (
            post_json(&client, &ocr, &json!({"data": "%%%"})).await,
            400,
            "not valid base64",
        ),
        (
            post_json(&client, &ocr, &json!({"data": b64(b"hello, not an image")})).await,
            400,
            "not a usable image",
        ),
        (
            post_multipart(&client, &ocr, &png, "a.png", &[("mode", "huge")]).await,
            400,
            "mode",
        ),
        (
            post_multipart(&client, &ocr, &png, "a.png", &[("colour", "blue")]).await,
            400,
            "unknown field \"colour\"",
        ),
        (
            post_multipart(
                &client,
                &ocr,
                &png,
                "a.png",
                &[("prompt", "<image><image>")],
            )
            .await,
            400,
            "<image>",
        ),
        (
            post_multipart(&client, &ocr, &png, "a.png", &[("pages", "2")]).await,
            400,
            "one page",
        ),
        (
            post_multipart(&client, &ocr, &png, "a.png", &[("max_tokens", "0")]).await,
            400,
            "max_tokens",
        ),
        (
            post_multipart(&client, &ocr, &png, "a.png", &[("stream", "perhaps")]).await,
            400,
            "stream",
        ),
        (
            post_multipart(&client, &ocr, b"", "a.png", &[]).await,
            400,
            "empty",
        ),
        (
            post_multipart(&client, &ocr, b"%PDF-1.7\n...", "doc.pdf", &[]).await,
            415,
            "PDF input needs",
        ),
        (
            client
                .post(&ocr)
                .body("raw bytes")
                .send()
                .await
                .expect("post"),
            415,
            "multipart/form-data",
        ),
        (
            post_json(
                &client,
                &server.url("/v1/chat/completions"),
                &json!({"messages": []}),
            )
            .await,
            400,
            "messages",
        ),
        (
            client
                .get(server.url("/v2/nothing"))
                .send()
                .await
                .expect("get"),
            404,
            "no such endpoint",
        ),
    ];
    for (i, (r, status, expect)) in cases.into_iter().enumerate() {
        let message = error_of(r, status).await;
        assert!(
            message.contains(expect),
            "case {i}: {message:?} lacks {expect:?}"
        );
    }
    assert!(
        server
            .metric(
                &client,
                "dsocr_http_requests_total{route=\"/v1/ocr\",code=\"400\"}"
            )
            .await
            >= 10.0
    );
    assert!(
        server
            .metric(
                &client,
                "dsocr_http_requests_total{route=\"/v1/ocr\",code=\"200\"}"
            )
            .await
            >= 99.0
    );
    assert_eq!(server.metric(&client, "dsocr_model_ready").await, 1.0);
    let stderr = server.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("iVBOR"),
        "image data in the log:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_bodies_are_limited() {
    let f = fixture();
    // No keys: only loopback.
    let out = Command::new(env!("CARGO_BIN_EXE_dsocr"))
        .args(["serve", "--bind", "0.0.0.0:0", "--model"])
        .arg(&f.model)
        .env_remove("DSOCR_API_KEY_FILE")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without API keys")
            && err.contains("--api-key-file"),
        "{err}"
    );

    let key = "k3y-for-the-serve-test-0123456789";
    let keys = f.root.join("keys.txt");
    std::fs::write(&keys, format!("# test keys\n{key}\n")).expect("keys");
    let server = Server::start(
        &[
            "--model",
            f.model.to_str().expect("utf-8"),
            "--api-key-file",
            keys.to_str().expect("utf-8"),
            "--max-body-mb",
            "1",
        ],
        &[],
    );
    let client = client();
    server.wait_ready(&client, Duration::from_secs(60)).await;
    let models = server.url("/v1/models");
    let r = client.get(&models).send().await.expect("get");
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(error_of(r, 401).await.contains("needs an API key"));
    let r = client
        .get(&models)
        .bearer_auth("k3y-for-the-serve-test-0123456788")
        .send()
        .await
        .expect("get");
    assert!(error_of(r, 401).await.contains("not valid"));
    let r = client
        .get(&models)
        .header("x-api-key", "nope")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    assert_eq!(
        client
            .get(&models)
            .bearer_auth(key)
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    assert_eq!(
        client
            .get(&models)
            .header("x-api-key", key)
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    // The probes stay open (for the orchestrator).
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );

    // OCR: 401 without the key, 200 with it.
    let tokens = TOKENS.to_string();
    let (ct, body) = multipart(
        &image_bytes(0),
        "a.png",
        &[("mode", "tiny"), ("max_tokens", &tokens)],
    );
    let r = client
        .post(server.url("/v1/ocr"))
        .header("content-type", &ct)
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = client
        .post(server.url("/v1/ocr"))
        .bearer_auth(key)
        .header("content-type", &ct)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let reports: Value = r.json().await.expect("json");
    same_page(&reports[0], &f.cli[0]);

    // Over 1 MB: 413, multipart or JSON.
    let big = vec![7u8; 1024 * 1024 + 10];
    let (ct, body) = multipart(&big, "big.png", &[]);
    let r = client
        .post(server.url("/v1/ocr"))
        .bearer_auth(key)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    let r = client
        .post(server.url("/v1/ocr"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(json!({"data": b64(&big)}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    let r = client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(json!({"messages": [], "pad": b64(&big)}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);

    let stderr = server.stderr();
    assert!(!stderr.contains(key), "the key was logged:\n{stderr}");
    assert!(
        !stderr.contains("0123456788"),
        "a presented key was logged:\n{stderr}"
    );
    assert!(stderr.contains("401"), "requests are logged:\n{stderr}");
}

/// No token is generated any more (the engine is idle and stays so).
async fn assert_tokens_stopped(server: &Server, client: &reqwest::Client) {
    let a = server.metric(client, "dsocr_generated_tokens_total").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = server.metric(client, "dsocr_generated_tokens_total").await;
    assert_eq!(a, b, "tokens still being generated after the cancel");
    assert!(a < 8000.0, "{a} tokens: the long job ran to its end");
}

/// Reads a streamed response until its first `text` event.
async fn until_first_text(r: &mut reqwest::Response) {
    let mut seen = String::new();
    while !seen.contains("event: text") {
        let Some(chunk) = r.chunk().await.expect("chunk") else {
            panic!("the stream ended before any text:\n{seen}");
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_cancel_full_queues_refuse_and_slow_requests_time_out() {
    let f = fixture();
    let _serial = serial().await;
    let server = Server::start(
        &[
            "--model",
            f.model.to_str().expect("utf-8"),
            "--max-queue",
            "1",
            "--timeout-s",
            "15",
            // One page at a time, so that a second request waits in the queue (with a larger
            // batch it would join the running one).
            "--batch",
            "1",
        ],
        &[],
    );
    let client = client();
    server.wait_ready(&client, Duration::from_secs(60)).await;
    // A long job: far more tokens than fit in the test's waits.
    let long = [("mode", "base"), ("max_tokens", "8000")];

    // A streaming client that goes away after the first token: its generation stops.
    let mut r = post_multipart(
        &client,
        &server.url("/v1/ocr?stream=true"),
        &image_bytes(0),
        "a.png",
        &long,
    )
    .await;
    assert_eq!(r.status(), 200);
    until_first_text(&mut r).await;
    assert_eq!(server.metric(&client, "dsocr_running").await, 1.0);
    let gone = Instant::now();
    drop(r);
    server
        .wait_metric(
            &client,
            "dsocr_cancelled_total",
            |v| v == 1.0,
            Duration::from_secs(3),
        )
        .await;
    server
        .wait_metric(
            &client,
            "dsocr_running",
            |v| v == 0.0,
            Duration::from_secs(1),
        )
        .await;
    eprintln!(
        "stream: generation stopped {:?} after the disconnect",
        gone.elapsed()
    );
    assert!(
        gone.elapsed() < Duration::from_secs(2),
        "stopped by the disconnect, not the timeout"
    );
    assert_tokens_stopped(&server, &client).await;

    // The same for a plain (non-streaming) request whose connection closes.
    let (ct, body) = multipart(&image_bytes(1), "b.png", &long);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    write!(
        tcp,
        "POST /v1/ocr HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("write head");
    tcp.write_all(&body).expect("write body");
    // Once it decodes (tokens are counted as they come), close the connection.
    let before = server.metric(&client, "dsocr_generated_tokens_total").await;
    server
        .wait_metric(
            &client,
            "dsocr_generated_tokens_total",
            |v| v > before + 2.0,
            Duration::from_secs(30),
        )
        .await;
    let gone = Instant::now();
    drop(tcp);
    server
        .wait_metric(
            &client,
            "dsocr_cancelled_total",
            |v| v == 2.0,
            Duration::from_secs(3),
        )
        .await;
    server
        .wait_metric(
            &client,
            "dsocr_running",
            |v| v == 0.0,
            Duration::from_secs(1),
        )
        .await;
    eprintln!(
        "plain: generation stopped {:?} after the disconnect",
        gone.elapsed()
    );
    assert!(
        gone.elapsed() < Duration::from_secs(2),
        "stopped by the disconnect, not the timeout"
    );
    assert_tokens_stopped(&server, &client).await;
    assert_eq!(server.metric(&client, "dsocr_pages_total").await, 0.0);

    // Queue of one: with one page running and one waiting, the next gets 429 + Retry-After.
    let mut running = post_multipart(
        &client,
        &server.url("/v1/ocr?stream=true"),
        &image_bytes(0),
        "a.png",
        &long,
    )
    .await;
    until_first_text(&mut running).await;
    let waiting = {
        let client = client.clone();
        let url = server.url("/v1/ocr");
        let bytes = image_bytes(1);
        tokio::spawn(async move { post_multipart(&client, &url, &bytes, "b.png", &long).await })
    };
    server
        .wait_metric(
            &client,
            "dsocr_queue_depth",
            |v| v == 1.0,
            Duration::from_secs(3),
        )
        .await;
    let r = post_multipart(
        &client,
        &server.url("/v1/ocr"),
        &image_bytes(2),
        "c.png",
        &long,
    )
    .await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(error_of(r, 429).await.contains("queue is full"));
    assert_eq!(server.metric(&client, "dsocr_rejected_total").await, 1.0);

    // The waiting request runs out of time (15 s, queue included): 504, and its job is cancelled.
    drop(running);
    let r = waiting.await.expect("join");
    assert!(error_of(r, 504).await.contains("longer than"));
    server
        .wait_metric(
            &client,
            "dsocr_running",
            |v| v == 0.0,
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(server.metric(&client, "dsocr_pages_total").await, 0.0);
    assert!(!server.stderr().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let f = fixture();
    let _serial = serial().await;
    let mut server = Server::start(
        &[
            "--model",
            f.model.to_str().expect("utf-8"),
            "--grace-s",
            "60",
        ],
        &[],
    );
    let client = client();
    server.wait_ready(&client, Duration::from_secs(60)).await;
    let request = {
        let client = client.clone();
        let url = server.url("/v1/ocr");
        let (ct, body) = multipart(
            &image_bytes(0),
            "a.png",
            &[("mode", "base"), ("max_tokens", "200")],
        );
        tokio::spawn(async move {
            client
                .post(&url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
        })
    };
    server
        .wait_metric(
            &client,
            "dsocr_running",
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
    let pid = i32::try_from(server.child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let r = match request.await.expect("join") {
        Ok(r) => r,
        Err(e) => {
            std::thread::sleep(Duration::from_millis(500));
            panic!(
                "the request in flight failed: {e}; server {:?}:\n{}",
                server.child.try_wait(),
                server.stderr()
            );
        }
    };
    assert_eq!(r.status(), 200, "the request in flight completes");
    let reports: Value = r.json().await.expect("json");
    let generated = reports[0]["generated_tokens"].as_u64().expect("tokens");
    assert!(
        generated == 200 || reports[0]["stop"] == "eos",
        "the whole generation ran: {}",
        reports[0]
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still running after SIGTERM:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err(),
        "still accepting after SIGTERM"
    );
    let stderr = server.stderr();
    assert!(stderr.contains("stopping"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_the_doctor_until_the_model_is_downloaded() {
    let f = fixture();
    let repo = "acme/tiny-ocr";
    let file = |name: &str| std::fs::read(f.model.join(name)).expect("model file");
    let hub = MockHub::start(MockConfig {
        repos: vec![MockRepo {
            id: repo.into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            access: Access::Public,
            files: vec![
                MockFile::git("config.json", &file("config.json")),
                MockFile::git("tokenizer_config.json", b"{}"),
                MockFile::lfs("tokenizer.json", file("tokenizer.json")),
                MockFile::lfs("model.safetensors", file("model.safetensors")),
            ],
        }],
        ..MockConfig::default()
    })
    .await
    .expect("mock hub");
    let home = f.root.join("hf-home-readyz");
    let home_s = home.to_str().expect("utf-8");
    let env = [
        ("HF_HOME", home_s),
        ("HF_ENDPOINT", hub.endpoint.as_str()),
        ("HF_TOKEN", mock::TOKEN_INVALID),
    ];
    let server = Server::start(&["--model", repo], &env);
    let client = client();

    // Not in the cache, invalid token: 503 with the doctor's findings, token.invalid among them.
    let start = Instant::now();
    let ready = loop {
        let r = client
            .get(server.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.expect("json");
        if v["findings"].as_array().is_some_and(|a| !a.is_empty()) {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no findings: {v}\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["status"], "model_missing");
    assert!(
        ready["message"]
            .as_str()
            .expect("message")
            .contains("dsocr download acme/tiny-ocr"),
        "{ready}"
    );
    let codes: Vec<&str> = ready["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["code"].as_str().expect("code"))
        .collect();
    assert!(codes.contains(&"token.invalid"), "{codes:?}");
    assert!(codes.contains(&"cache.missing"), "{codes:?}");
    let invalid = ready["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["code"] == "token.invalid")
        .expect("token.invalid");
    assert_eq!(invalid["severity"], "error");
    assert!(!invalid["fix"].as_str().expect("fix").is_empty());
    assert!(
        !ready.to_string().contains(mock::TOKEN_INVALID),
        "the token leaked into /readyz"
    );
    // The same findings `dsocr doctor --json` prints.
    let mut doctor = Command::new(env!("CARGO_BIN_EXE_dsocr"));
    doctor.args(["doctor", "--repo", repo, "--json"]);
    isolate(&mut doctor, &env);
    let doctor = tokio::task::spawn_blocking(move || doctor.output().expect("doctor"))
        .await
        .expect("join");
    let doctor: Value = serde_json::from_slice(&doctor.stdout).expect("doctor JSON");
    let doctor_codes: Vec<&str> = doctor["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes, doctor_codes);
    // No OCR before the model is there.
    let r = post_multipart(
        &client,
        &server.url("/v1/ocr"),
        &image_bytes(0),
        "a.png",
        &[],
    )
    .await;
    assert!(error_of(r, 503).await.contains("/readyz"));

    // Downloaded next to the running server: it loads the model and turns ready.
    let mut download = Command::new(env!("CARGO_BIN_EXE_dsocr"));
    download.args(["download", repo]);
    isolate(
        &mut download,
        &[env[0], env[1], ("HF_TOKEN", mock::TOKEN_GRANTED)],
    );
    let out = tokio::task::spawn_blocking(move || download.output().expect("download"))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_ready(&client, Duration::from_secs(60)).await;
    let v: Value = client
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["findings"], json!([]));
    let tokens = TOKENS.to_string();
    let r = post_multipart(
        &client,
        &server.url("/v1/ocr"),
        &image_bytes(3),
        "d.png",
        &[("mode", "tiny"), ("max_tokens", &tokens)],
    )
    .await;
    assert_eq!(r.status(), 200);
    let reports: Value = r.json().await.expect("json");
    same_page(&reports[0], &f.cli[3]);
    let stderr = server.stderr();
    assert!(
        stderr.contains("token.invalid"),
        "the doctor's errors are logged:\n{stderr}"
    );
    assert!(
        !stderr.contains(mock::TOKEN_INVALID),
        "the token was logged:\n{stderr}"
    );
}
