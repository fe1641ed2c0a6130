//! Runs the mock hub standalone on 127.0.0.1, for trying `dsocr` (or the dashboard) by hand:
//!
//! ```text
//! cargo run --release --features mock --example mock_hub -- --scenario ok --port 8765
//! HF_ENDPOINT=http://127.0.0.1:8765 HF_HOME=/tmp/hf dsocr doctor
//! ```
//! Scenarios: see `dsocr::hub::mock::SCENARIOS`. It prints the endpoint and the tokens it
//! accepts, then serves until killed.

use dsocr::hub::mock::{self, MockHub};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let name = value("--scenario").unwrap_or_else(|| "ok".into());
    let port: u16 = match value("--port").map(|p| p.parse()) {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            eprintln!("error: --port takes a number");
            return std::process::ExitCode::FAILURE;
        }
    };
    let Some(config) = mock::scenario(&name) else {
        eprintln!(
            "error: unknown scenario {name:?}; known: {}",
            mock::SCENARIOS.join(", ")
        );
        return std::process::ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let hub = match MockHub::start_on(config, port).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        println!("HF_ENDPOINT={}", hub.endpoint);
        println!("scenario={name} repo={} cdn={}", mock::DEMO_REPO, hub.cdn);
        println!("granted token:     {}", mock::TOKEN_GRANTED);
        println!("not-granted token: {}", mock::TOKEN_NOT_GRANTED);
        println!("rejected token:    {}", mock::TOKEN_INVALID);
        let _ = tokio::signal::ctrl_c().await;
        std::process::ExitCode::SUCCESS
    })
}
