//! Load benchmark: starts the server in-process on a model (the fixture by default) and measures
//! throughput and time to first token at concurrency 1, 4 and 16, unpruned vs Nüwa at budget 64.
//!
//! `cargo run --release -p nuwa-server --example load -- [MODEL_DIR] [REQUESTS_PER_LEVEL]`
use base64::Engine as _;
use nuwa::{Engine, LoadOptions};
use nuwa_server::{Server, ServerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llava-1.5"));
    let per_level: usize = args.next().map_or(32, |n| n.parse().expect("REQUESTS_PER_LEVEL: a number"));
    let engine = Arc::new(Engine::load(&dir, &LoadOptions::default()).expect("loading the model"));
    let config = ServerConfig { max_queue: 64, ..ServerConfig::default() };
    let server = Server::bind(engine, config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let image = std::fs::read(dir.join("image.png")).expect("MODEL_DIR/image.png");
    let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(image));

    println!(
        "| pruning | concurrency | requests | throughput (req/s) | streamed chunks/s | TTFT p50 (ms) | TTFT p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, pruning) in [("none", json!({"method": "none"})), ("nuwa@64", json!({"method": "nuwa", "budget": 64}))]
    {
        for concurrency in [1usize, 4, 16] {
            let body = json!({
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is shown in this image?"}]}],
                "max_tokens": 16, "stream": true, "pruning": pruning,
            });
            let t0 = Instant::now();
            let mut ttfts = Vec::new();
            let mut tokens = 0;
            let mut remaining = per_level;
            while remaining > 0 {
                let wave = remaining.min(concurrency);
                remaining -= wave;
                let tasks: Vec<_> = (0..wave).map(|_| tokio::spawn(one(addr, body.clone()))).collect();
                for t in tasks {
                    let (ttft, n) = t.await.unwrap();
                    ttfts.push(ttft);
                    tokens += n;
                }
            }
            let wall = t0.elapsed().as_secs_f64();
            ttfts.sort();
            let pct = |p: f64| ttfts[((ttfts.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
            println!(
                "| {label} | {concurrency} | {per_level} | {:.2} | {:.1} | {:.0} | {:.0} |",
                per_level as f64 / wall,
                tokens as f64 / wall,
                pct(0.5),
                pct(0.99)
            );
        }
    }
}

/// One streamed request: time to the first content chunk, and the chunks received.
async fn one(addr: SocketAddr, body: Value) -> (Duration, usize) {
    let t0 = Instant::now();
    let mut r =
        reqwest::Client::new().post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (mut first, mut chunks, mut buf) = (None, 0, String::new());
    while let Some(bytes) = r.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        let n = buf.matches("\"content\":\"").count().saturating_sub(1); // the first chunk carries the role
        if n > 0 && first.is_none() {
            first = Some(t0.elapsed());
        }
        chunks = n;
    }
    (first.unwrap_or_else(|| t0.elapsed()), chunks)
}
