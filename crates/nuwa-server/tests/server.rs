//! The server on an ephemeral loopback port over the fixture model, driven by a real HTTP client:
//! answers equal the library's, streams concatenate to them, concurrency keeps answers apart, the
//! queue overflows into 429, a dropped stream frees the worker, bad requests get their status and error
//! object, and nothing takes the process down.
use base64::Engine as _;
use nuwa::prune::nuwa::NuwaConfig;
use nuwa::{Engine, GenerateRequest, ImageInput, LoadOptions, Method, Sampling};
use nuwa_server::{Server, ServerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llava-1.5")
}

fn engine() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| Arc::new(Engine::load(&tiny_dir(), &LoadOptions::default()).unwrap())).clone()
}

const QUESTION: &str = "What is shown in this image?";

fn image_url() -> String {
    let bytes = std::fs::read(tiny_dir().join("image.png")).unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

async fn start(config: ServerConfig) -> SocketAddr {
    let server = Server::bind(engine(), config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

fn chat_body(question: &str, with_image: bool, max_tokens: usize, pruning: Value) -> Value {
    let mut content = vec![];
    if with_image {
        content.push(json!({"type": "image_url", "image_url": {"url": image_url()}}));
    }
    content.push(json!({"type": "text", "text": question}));
    json!({"model": "nuwa", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "pruning": pruning})
}

async fn post(addr: SocketAddr, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("http://{addr}/v1/chat/completions")).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The library's answer for the same question, image and method.
fn library_answer(question: &str, with_image: bool, max_tokens: usize, method: Method) -> nuwa::Generation {
    let req = GenerateRequest {
        prompt: question.into(),
        image: with_image.then(|| ImageInput::Path(tiny_dir().join("image.png"))),
        method,
        positions: None,
        sampling: Sampling::default(),
        max_new_tokens: max_tokens,
        stop: vec![],
    };
    engine().generate(&req, &mut |_| {}).unwrap()
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_equals_the_library_answer_and_its_stream_concatenates_to_it() {
    let addr = start(ServerConfig::default()).await;
    let expected = library_answer(QUESTION, true, 8, Method::Nuwa(NuwaConfig { budget: 64, ..NuwaConfig::default() }));
    let (status, v) = post(addr, &chat_body(QUESTION, true, 8, json!({"method": "nuwa", "budget": 64}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], expected.text);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let k1 = expected.vision.as_ref().unwrap().k1;
    assert_eq!(v["usage"]["vision_tokens"], k1);
    assert_eq!(v["usage"]["prompt_tokens"], expected.prompt_tokens + k1);
    assert_eq!(v["usage"]["completion_tokens"], expected.tokens.len());
    assert_eq!(v["usage"]["total_tokens"], expected.prompt_tokens + k1 + expected.tokens.len());
    assert_eq!(v["pruning"]["method"], "nuwa");
    assert_eq!(v["pruning"]["avg_vision_tokens"], 64.0);

    let mut body = chat_body(QUESTION, true, 8, json!({"budget": 64}));
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new().post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, expected.text);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], expected.tokens.len());

    // Unpruned, as `nuwa generate --prune none` answers.
    let expected = library_answer(QUESTION, true, 8, Method::NONE);
    let (_, v) = post(addr, &chat_body(QUESTION, true, 8, json!({"method": "none"}))).await;
    assert_eq!(v["choices"][0]["message"]["content"], expected.text);
    assert_eq!(v["usage"]["vision_tokens"], 576);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_clients_each_get_their_own_answer() {
    let addr = start(ServerConfig { max_queue: 16, ..ServerConfig::default() }).await;
    let questions: Vec<String> = (0..16).map(|i| format!("Question number {i}: what is this?")).collect();
    let serial: Vec<String> = questions.iter().map(|q| library_answer(q, false, 6, Method::NONE).text).collect();
    let tasks: Vec<_> = questions
        .iter()
        .map(|q| {
            let body = chat_body(q, false, 6, json!({"method": "none"}));
            tokio::spawn(async move { post(addr, &body).await })
        })
        .collect();
    for (task, want) in tasks.into_iter().zip(serial) {
        let (status, v) = task.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let addr = start(ServerConfig { max_queue: 2, ..ServerConfig::default() }).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let body = chat_body(&format!("Tell me a long story {i}"), false, 64, json!({"method": "none"}));
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").map(|h| h.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut statuses = vec![];
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        if status == 429 {
            assert_eq!(retry.as_deref(), Some("1"));
            assert_eq!(v["error"]["code"], "queue_full", "{v}");
        } else {
            assert_eq!(status, 200, "{v}");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Whatever the queue accepted is served: at least its two places (a third when the worker had
    // already taken the first request off the queue when the others arrived).
    assert!(statuses.iter().filter(|&&s| s == 200).count() >= 2, "the queued requests succeed: {statuses:?}");
}

async fn completion_tokens_counted(addr: SocketAddr) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("nuwa_completion_tokens_total ")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_mid_stream_frees_the_worker() {
    let addr = start(ServerConfig::default()).await;
    let mut body = chat_body("Write forever", false, 3000, json!({"method": "none"}));
    body["stream"] = json!(true);
    let mut r =
        reqwest::Client::new().post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Read a few chunks, then hang up.
    for _ in 0..3 {
        r.chunk().await.unwrap().unwrap();
    }
    drop(r);
    // The next request is served (the worker stopped decoding the abandoned one) …
    let (status, v) = post(addr, &chat_body("Hello", false, 2, json!({"method": "none"}))).await;
    assert_eq!(status, 200, "{v}");
    // … and the abandoned one was cut far short of its 3000 tokens.
    let counted = completion_tokens_counted(addr).await;
    assert!(counted < 1500, "the dropped stream kept decoding: {counted} tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_an_error_object() {
    let addr = start(ServerConfig { max_body_bytes: 64 << 10, ..ServerConfig::default() }).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let raw = |body: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut b = chat_body("hi", false, 2, json!({}));
        edit(&mut b);
        b.to_string()
    };
    let tiny_png = {
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(2, 2).write_to(&mut png, image::ImageFormat::Png).unwrap();
        png.into_inner()
    };
    let png_url =
        |bytes: &[u8]| format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes));
    // A PNG header claiming 100000 × 100000 pixels: refused before decoding.
    let bomb = {
        let mut b = tiny_png.clone();
        b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        b[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        b
    };
    let image_msg = |url: String| {
        move |b: &mut Value| {
            b["messages"][0]["content"] =
                json!([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]);
        }
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", "{not json".into(), 400, "invalid_json"),
        ("no messages", json!({"max_tokens": 2}).to_string(), 400, "invalid_json"),
        ("empty messages", with(&|b| b["messages"] = json!([])), 400, ""),
        ("last message not from the user", with(&|b| b["messages"][0]["role"] = json!("assistant")), 400, ""),
        ("unknown role", with(&|b| b["messages"][0]["role"] = json!("tool")), 400, ""),
        ("bad base64", with(&image_msg("data:image/png;base64,@@@".into())), 400, "invalid_image"),
        ("not an image", with(&image_msg(png_url(b"hello world"))), 400, "invalid_image"),
        ("decompression bomb", with(&image_msg(png_url(&bomb))), 400, "invalid_image"),
        ("remote URL", with(&image_msg("https://example.com/a.png".into())), 400, "invalid_image"),
        ("file URL without permission", with(&image_msg("file:///etc/passwd".into())), 400, "invalid_image"),
        ("unknown method", with(&|b| b["pruning"] = json!({"method": "magic"})), 400, "invalid_value"),
        (
            "impossible budget",
            with(&|b| b["pruning"] = json!({"method": "pdrop", "budget": 100})),
            400,
            "invalid_value",
        ),
        ("zero budget", with(&|b| b["pruning"] = json!({"budget": 0})), 400, "invalid_value"),
        ("unknown pruning knob", with(&|b| b["pruning"] = json!({"budgte": 64})), 400, ""),
        ("ill-typed pruning knob", with(&|b| b["pruning"] = json!({"budget": "lots"})), 400, ""),
        (
            "keep without manual",
            with(&|b| b["pruning"] = json!({"method": "nuwa", "keep": [1, 2]})),
            400,
            "invalid_value",
        ),
        ("n > 1", with(&|b| b["n"] = json!(2)), 400, ""),
        ("tools", with(&|b| b["tools"] = json!([{"type": "function"}])), 400, ""),
        ("logprobs", with(&|b| b["logprobs"] = json!(true)), 400, ""),
        ("negative temperature", with(&|b| b["temperature"] = json!(-1.0)), 400, ""),
        ("zero max_tokens", with(&|b| b["max_tokens"] = json!(0)), 400, ""),
        ("empty stop", with(&|b| b["stop"] = json!([""])), 400, ""),
        ("unknown model", with(&|b| b["model"] = json!("gpt-4")), 404, "model_not_found"),
        // Far beyond the socket buffers: the client is still uploading when the server has its answer.
        ("too large", with(&|b| b["messages"][0]["content"] = json!("x".repeat(8 << 20))), 413, "request_too_large"),
        (
            "prompt beyond the context",
            with(&|b| b["messages"][0]["content"] = json!("word ".repeat(5000))),
            400,
            "context_length_exceeded",
        ),
    ];
    for (what, body, status, code) in cases {
        let (got, v) = raw(body).await;
        assert_eq!(got, status, "{what}: {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()) && e["type"].is_string(), "{what}: {v}");
        if !code.is_empty() {
            assert_eq!(e["code"], code, "{what}: {v}");
        }
    }
    let r = client.get(format!("http://{addr}/no/such/path")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    // Still alive and serving.
    assert_eq!(client.get(format!("http://{addr}/health")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("http://{addr}/ready")).send().await.unwrap().status(), 200);
    let (status, _) = post(addr, &chat_body("hi", false, 1, json!({}))).await;
    assert_eq!(status, 200);
    let models: Value = client.get(format!("http://{addr}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "nuwa");
    let metrics = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    for key in ["nuwa_requests_total{status=\"400\"}", "nuwa_queue_depth", "nuwa_time_to_first_token_seconds_bucket"] {
        assert!(metrics.contains(key), "{key} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_gets_504_and_the_server_goes_on() {
    let addr =
        start(ServerConfig { request_timeout: std::time::Duration::from_millis(1), ..ServerConfig::default() }).await;
    let (status, v) = post(addr, &chat_body("Write a long answer", false, 3000, json!({"method": "none"}))).await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"]["code"], "timeout");
    let r = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(r.status(), 200);
}
