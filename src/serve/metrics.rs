//! The server's counters, rendered as Prometheus text (exposition format 0.0.4) by `/metrics`.
//!
//! Few series and no labels from user input (routes come from the router's patterns), so the
//! text is written by hand.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A cumulative histogram of durations.
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, n) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (route, status) → answers.
    requests: BTreeMap<(String, u16), u64>,
    /// route → time to the response head.
    latency: BTreeMap<String, Histogram>,
    /// Time a page waited in the queue.
    queue_wait: Histogram,
    /// Time the engine spent on a page.
    page: Histogram,
    /// Decode seconds, summed (tokens/s = tokens over this).
    decode_seconds: f64,
    /// Decode speed of the last page.
    last_tokens_per_second: f64,
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Jobs waiting for the engine.
    pub queue_depth: AtomicUsize,
    /// Jobs the engine is running.
    pub running: AtomicUsize,
    /// Pages done.
    pub pages: AtomicU64,
    /// Tokens generated, counted as they come (cancelled pages included).
    pub tokens: AtomicU64,
    /// Jobs stopped because the client went away or the request timed out.
    pub cancelled: AtomicU64,
    /// Requests refused with 429 because the queue was full.
    pub rejected: AtomicU64,
    /// 1 once the model is loaded.
    pub ready: AtomicU64,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered request.
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        let mut inner = self.lock();
        *inner
            .requests
            .entry((route.to_string(), status))
            .or_default() += 1;
        inner
            .latency
            .entry(route.to_string())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// A page the engine finished.
    pub fn page(&self, queued: Duration, run: Duration, decode: Duration, tps: f64) {
        self.pages.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.queue_wait.observe(queued.as_secs_f64());
        inner.page.observe(run.as_secs_f64());
        inner.decode_seconds += decode.as_secs_f64();
        inner.last_tokens_per_second = tps;
    }

    /// A job that waited in the queue and was then cancelled or failed.
    pub fn waited(&self, queued: Duration) {
        self.lock().queue_wait.observe(queued.as_secs_f64());
    }

    /// Mean engine seconds per page so far (for `Retry-After`), if any page was done.
    pub fn mean_page_seconds(&self) -> Option<f64> {
        let inner = self.lock();
        (inner.page.count > 0).then(|| inner.page.sum / inner.page.count as f64)
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let _ = writeln!(
            out,
            "# HELP dsocr_http_requests_total HTTP requests answered, by route and status code."
        );
        let _ = writeln!(out, "# TYPE dsocr_http_requests_total counter");
        for ((route, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "dsocr_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP dsocr_http_request_duration_seconds Time from the request to the response head, by route."
        );
        let _ = writeln!(out, "# TYPE dsocr_http_request_duration_seconds histogram");
        for (route, h) in &inner.latency {
            h.render(
                &mut out,
                "dsocr_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        gauge(
            &mut out,
            "dsocr_model_ready",
            "1 once the model is loaded and requests are served.",
            "gauge",
            load(&self.ready),
        );
        gauge(
            &mut out,
            "dsocr_queue_depth",
            "Pages waiting for the engine.",
            "gauge",
            self.queue_depth.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "dsocr_running",
            "Pages the engine is working on.",
            "gauge",
            self.running.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "dsocr_pages_total",
            "Pages OCRed.",
            "counter",
            load(&self.pages),
        );
        gauge(
            &mut out,
            "dsocr_generated_tokens_total",
            "Tokens generated, counted as they are generated (cancelled pages included).",
            "counter",
            load(&self.tokens),
        );
        gauge(
            &mut out,
            "dsocr_decode_seconds_total",
            "Seconds spent decoding (tokens per second = rate of tokens over rate of this).",
            "counter",
            inner.decode_seconds.to_string(),
        );
        gauge(
            &mut out,
            "dsocr_tokens_per_second",
            "Decode speed of the last page.",
            "gauge",
            inner.last_tokens_per_second.to_string(),
        );
        gauge(
            &mut out,
            "dsocr_cancelled_total",
            "Pages stopped because the client disconnected or the request timed out.",
            "counter",
            load(&self.cancelled),
        );
        gauge(
            &mut out,
            "dsocr_rejected_total",
            "Requests refused with 429 because the queue was full.",
            "counter",
            load(&self.rejected),
        );
        for (name, help, h) in [
            (
                "dsocr_queue_wait_seconds",
                "Time a page waited for the engine.",
                &inner.queue_wait,
            ),
            (
                "dsocr_page_seconds",
                "Time the engine spent on a page (preprocess to last token).",
                &inner.page,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_parses_back() {
        let m = Metrics::default();
        m.request("/v1/ocr", 200, Duration::from_millis(30));
        m.request("/v1/ocr", 200, Duration::from_millis(700));
        m.request("/v1/ocr", 413, Duration::from_millis(1));
        let text = m.render();
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        assert_eq!(
            value("dsocr_http_requests_total{route=\"/v1/ocr\",code=\"200\"}"),
            2.0
        );
        assert_eq!(
            value("dsocr_http_requests_total{route=\"/v1/ocr\",code=\"413\"}"),
            1.0
        );
        let bucket = |le: &str| {
            value(&format!(
                "dsocr_http_request_duration_seconds_bucket{{route=\"/v1/ocr\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.025"), 1.0);
        assert_eq!(bucket("0.05"), 2.0);
        assert_eq!(bucket("0.5"), 2.0);
        assert_eq!(bucket("1"), 3.0);
        assert_eq!(bucket("+Inf"), 3.0);
        assert_eq!(
            value("dsocr_http_request_duration_seconds_count{route=\"/v1/ocr\"}"),
            3.0
        );
        // Every sample line is `name{labels} number` or `name number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').expect("value");
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
