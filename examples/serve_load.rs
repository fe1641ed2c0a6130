//! A small load generator for `dsocr serve`: it posts one image to `/v1/ocr` from C concurrent
//! clients until N requests are done, for each concurrency given, and prints latency
//! percentiles and pages per second as a markdown table.
//!
//! ```text
//! dsocr serve --model DIR --device cpu &
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8000 --image page.png \
//!     --concurrency 1,8,32 --requests 64 --mode tiny --max-tokens 16
//! ```
//! `--key KEY` sends `Authorization: Bearer KEY`. Every answer must be 200 (a failed request is
//! counted and reported, not timed).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Args {
    url: String,
    image: String,
    concurrency: Vec<usize>,
    requests: usize,
    mode: String,
    max_tokens: usize,
    key: Option<String>,
}

fn parse() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |flag: &str, default: usize| -> Result<usize, String> {
        value(flag).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("{flag} takes a number"))
        })
    };
    Ok(Args {
        url: value("--url").unwrap_or_else(|| "http://127.0.0.1:8000".into()),
        image: value("--image").ok_or("--image PATH is required")?,
        concurrency: value("--concurrency")
            .unwrap_or_else(|| "1,8,32".into())
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .map_err(|_| "--concurrency takes numbers like 1,8,32".to_string())
            })
            .collect::<Result<_, _>>()?,
        requests: number("--requests", 64)?,
        mode: value("--mode").unwrap_or_else(|| "tiny".into()),
        max_tokens: number("--max-tokens", 16)?,
        key: value("--key"),
    })
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let image = std::fs::read(&args.image).map_err(|e| format!("{}: {e}", args.image))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(|e| e.to_string())?;
    let body = Arc::new(
        serde_json::json!({
            "data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &image),
            "mode": args.mode,
            "max_tokens": args.max_tokens,
        })
        .to_string(),
    );
    println!("| concurrency | requests | failed | p50 s | p99 s | max s | pages/s | tokens/page |");
    println!("|---|---|---|---|---|---|---|---|");
    for &c in &args.concurrency {
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let results = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..c.max(1) {
                let (client, next, body) = (client.clone(), next.clone(), body.clone());
                let url = format!("{}/v1/ocr", args.url);
                let key = args.key.clone();
                let total = args.requests;
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        let t = Instant::now();
                        let mut req = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.as_str().to_owned());
                        if let Some(k) = &key {
                            req = req.bearer_auth(k);
                        }
                        let answer = match req.send().await {
                            Ok(r) if r.status() == 200 => r
                                .json::<serde_json::Value>()
                                .await
                                .ok()
                                .and_then(|v| v[0]["generated_tokens"].as_u64()),
                            _ => None,
                        };
                        out.push((t.elapsed(), answer));
                    }
                    out
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            all
        });
        let wall = start.elapsed().as_secs_f64();
        let mut ok: Vec<f64> = results
            .iter()
            .filter(|r| r.1.is_some())
            .map(|r| r.0.as_secs_f64())
            .collect();
        let tokens: u64 = results.iter().filter_map(|r| r.1).sum();
        let failed = results.len() - ok.len();
        ok.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if ok.is_empty() {
                f64::NAN
            } else {
                ok[((ok.len() as f64 * p).ceil() as usize).clamp(1, ok.len()) - 1]
            }
        };
        println!(
            "| {c} | {} | {failed} | {:.3} | {:.3} | {:.3} | {:.2} | {:.1} |",
            results.len(),
            pct(0.50),
            pct(0.99),
            ok.last().copied().unwrap_or(f64::NAN),
            ok.len() as f64 / wall,
            tokens as f64 / ok.len().max(1) as f64,
        );
    }
    Ok(())
}
