//! The OpenAI-compatible server driven over real HTTP on a random loopback port, with the
//! deterministic fake engine: responses, streaming, `n`, concurrency, continuous batching, limits
//! and error shapes, graceful shutdown.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trainer::serve::api::Limits;
use trainer::serve::engine::{ChatMessage, ContentPart, GenerationRequest, SamplingParams, SeqId};
use trainer::serve::fake::{FakeEngine, REJECT_MARKER};
use trainer::serve::scheduler::SchedulerConfig;
use trainer::serve::{run_server, ServerConfig};

const KEY: &str = "test-key";

/// A running server and the fake engine's step log.
struct Server {
    addr: SocketAddr,
    steps: Arc<Mutex<Vec<Vec<SeqId>>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(step_ms: u64, scheduler: SchedulerConfig, limits: Limits) -> Server {
    let engine = FakeEngine::new("fake-model", Duration::from_millis(step_ms));
    let steps = engine.step_log.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        limits,
        scheduler,
        api_key: Some(KEY.into()),
    };
    let task = tokio::spawn(run_server(listener, Box::new(engine), config, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        steps,
        stop: Some(tx),
        task,
    }
}

fn default_scheduler() -> SchedulerConfig {
    SchedulerConfig {
        max_batch: 16,
        max_queue: 64,
    }
}

/// A minimal HTTP/1.1 client: returns status, headers (lower-cased names) and the de-chunked body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading an oversized body to the end.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status: u16 = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut rest = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = rest[line_end + 2 + size + 2..].to_vec();
        }
        rest = out;
    }
    (status, headers, rest)
}

async fn post(addr: SocketAddr, body: &Value) -> (u16, Value) {
    let (status, _, b) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        &serde_json::to_vec(body).unwrap(),
    )
    .await;
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn text_request(text: &str, temperature: f32, seed: u64, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: vec![ContentPart::Text(text.into())],
        }],
        params: SamplingParams {
            temperature,
            top_p: 1.0,
            max_tokens,
            seed,
        },
    }
}

fn png_data_url(w: u32, h: u32) -> String {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(buf)
    )
}

/// (name, path, key, body, expected status) of one bad request.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16);

fn assert_error_shape(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].as_str().is_some(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_match_the_engine_run_alone() {
    let srv = start(0, default_scheduler(), Limits::default()).await;
    let a = srv.addr;

    // Health needs no key; models needs it.
    let (st, _, b) = http(a, "GET", "/health", None, b"").await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["status"], "ok");
    let (st, _, b) = http(a, "GET", "/v1/models", Some(KEY), b"").await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["data"][0]["id"],
        "fake-model"
    );

    // Plain greedy request equals the engine's own output for the same request.
    let (st, v) = post(
        a,
        &json!({"model": "fake-model", "temperature": 0, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Where is the man?"}]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let expected = FakeEngine::expected_text(&text_request("Where is the man?", 0.0, 0, 64));
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["object"], "chat.completion");
    let words = expected.split(' ').count();
    assert_eq!(v["usage"]["completion_tokens"], words);
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], words + 4);

    // max_tokens cuts with finish_reason "length".
    let (_, v) = post(
        a,
        &json!({"temperature": 0, "max_tokens": 2,
        "messages": [{"role": "user", "content": "Where is the man?"}]}),
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let two: Vec<&str> = expected.split(' ').take(2).collect();
    assert_eq!(v["choices"][0]["message"]["content"], two.join(" "));

    // Image parts are decoded: the fake engine names the image size first.
    let (st, v) = post(
        a,
        &json!({"temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(5, 4)}},
        {"type": "text", "text": "What is left of the tree?"}]}]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("image5x4"),
        "{v}"
    );

    // n = 2 with sampling: choice i is the engine's output with seed + i.
    let (st, v) = post(
        a,
        &json!({"temperature": 0.7, "seed": 3, "n": 2,
        "messages": [{"role": "user", "content": "Q"}]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for i in 0..2u64 {
        let want = FakeEngine::expected_text(&text_request("Q", 0.7, 3 + i, 2048));
        assert_eq!(
            v["choices"][i as usize]["message"]["content"],
            want.as_str()
        );
        assert_eq!(v["choices"][i as usize]["index"], i);
    }

    // Streaming: deltas concatenate to the non-streamed text; usage chunk; [DONE] last.
    let body = json!({"temperature": 0, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Where is the man?"}]});
    let (st, headers, b) = http(
        a,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        &serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        headers.contains("content-type: text/event-stream"),
        "{headers}"
    );
    let text = String::from_utf8(b).unwrap();
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*datas.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, expected);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], words);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));

    let mut srv = srv;
    srv.stop.take().unwrap().send(()).unwrap();
    srv.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_not_mixed_up() {
    let srv = start(5, default_scheduler(), Limits::default()).await;
    let a = srv.addr;
    let prompts: Vec<String> = (0..16).map(|i| format!("question number {i}")).collect();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = json!({"temperature": 0, "messages": [{"role": "user", "content": p}]});
            tokio::spawn(async move { post(a, &body).await })
        })
        .collect();
    for (p, t) in prompts.iter().zip(tasks) {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        let alone = FakeEngine::expected_text(&text_request(p, 0.0, 0, 2048));
        assert_eq!(
            v["choices"][0]["message"]["content"],
            alone.as_str(),
            "prompt {p}"
        );
    }
    let steps = srv.steps.lock().unwrap().clone();
    let widest = steps.iter().map(Vec::len).max().unwrap();
    assert!(
        widest > 1,
        "requests were never decoded together: {steps:?}"
    );
    assert!(widest <= 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_request_joins_the_running_batch() {
    let srv = start(20, default_scheduler(), Limits::default()).await;
    let a = srv.addr;
    // A long request (at least 12 tokens at 20 ms/step); a second one arrives while it decodes.
    let first = (0..200)
        .map(|k| format!("first {k}"))
        .find(|p| {
            FakeEngine::expected_text(&text_request(p, 0.0, 0, 2048))
                .split(' ')
                .count()
                >= 12
        })
        .unwrap();
    let long = tokio::spawn(async move {
        post(a, &json!({"temperature": 0, "max_tokens": 2048, "messages": [{"role": "user", "content": first}]})).await
    });
    tokio::time::sleep(Duration::from_millis(70)).await;
    let (st, _) = post(a, &json!({"temperature": 0, "max_tokens": 3, "messages": [{"role": "user", "content": "second"}]})).await;
    assert_eq!(st, 200);
    assert_eq!(long.await.unwrap().0, 200);
    let steps = srv.steps.lock().unwrap().clone();
    // Sequence 0 ran alone first, then shared steps with sequence 1, and kept going after it.
    let first_joint = steps.iter().position(|s| s.contains(&1)).unwrap();
    assert!(
        first_joint >= 1 && steps[..first_joint].iter().all(|s| s == &vec![0]),
        "{steps:?}"
    );
    assert_eq!(steps[first_joint], vec![0, 1], "{steps:?}");
    let joint = steps.iter().filter(|s| s.contains(&1)).count();
    assert_eq!(joint, 3, "max_tokens 3 means three steps: {steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clean_4xx_and_the_server_stays_up() {
    let limits = Limits {
        max_body_bytes: 64 * 1024,
        max_image_pixels: 100,
        ..Limits::default()
    };
    let srv = start(0, default_scheduler(), limits).await;
    let a = srv.addr;
    let ok = json!({"messages": [{"role": "user", "content": "hi"}]});
    let ok_bytes = serde_json::to_vec(&ok).unwrap();

    let cases: Vec<Case> = vec![
        (
            "bad key",
            "/v1/chat/completions",
            Some("wrong"),
            ok_bytes.clone(),
            401,
        ),
        (
            "no key",
            "/v1/chat/completions",
            None,
            ok_bytes.clone(),
            401,
        ),
        (
            "models bad key",
            "/v1/models",
            Some("wrong"),
            Vec::new(),
            401,
        ),
        (
            "malformed json",
            "/v1/chat/completions",
            Some(KEY),
            b"{\"messages\": [".to_vec(),
            400,
        ),
        (
            "wrong type",
            "/v1/chat/completions",
            Some(KEY),
            br#"{"messages": "hi"}"#.to_vec(),
            400,
        ),
        (
            "oversized body",
            "/v1/chat/completions",
            Some(KEY),
            vec![b' '; 100 * 1024],
            413,
        ),
        ("unknown path", "/v1/nothing", Some(KEY), Vec::new(), 404),
    ];
    for (name, path, key, body, want) in cases {
        let method = if path == "/v1/models" { "GET" } else { "POST" };
        let (st, _, b) = http(a, method, path, key, &body).await;
        assert_eq!(st, want, "{name}: {}", String::from_utf8_lossy(&b));
        assert_error_shape(&serde_json::from_slice(&b).unwrap());
    }
    let (st, _, b) = http(a, "GET", "/v1/chat/completions", Some(KEY), b"").await;
    assert_eq!(st, 405);
    assert_error_shape(&serde_json::from_slice(&b).unwrap());

    let (st, v) = post(
        a,
        &json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(20, 10)}}]}]}),
    )
    .await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["param"], "messages[0].content[0].image_url");
    // An engine-side rejection is a 400 in both modes.
    for stream in [false, true] {
        let (st, v) = post(
            a,
            &json!({"stream": stream, "messages": [{"role": "user", "content": REJECT_MARKER}]}),
        )
        .await;
        assert_eq!(st, 400, "{v}");
        assert_error_shape(&v);
    }
    // Still serving.
    let (st, v) = post(a, &ok).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429() {
    let scheduler = SchedulerConfig {
        max_batch: 1,
        max_queue: 1,
    };
    let srv = start(30, scheduler, Limits::default()).await;
    let a = srv.addr;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let body = json!({"temperature": 0, "messages": [{"role": "user", "content": format!("q{i}")}]});
            tokio::spawn(async move { post(a, &body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let (st, v) = t.await.unwrap();
        if st == 429 {
            assert_eq!(v["error"]["code"], "queue_full");
        }
        statuses.push(st);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    let (st, _) = post(
        a,
        &json!({"messages": [{"role": "user", "content": "after"}]}),
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let mut srv = start(20, default_scheduler(), Limits::default()).await;
    let a = srv.addr;
    let pending = tokio::spawn(async move {
        post(
            a,
            &json!({"temperature": 0, "messages": [{"role": "user", "content": "slow one"}]}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    srv.stop.take().unwrap().send(()).unwrap();
    let (st, v) = pending.await.unwrap();
    assert_eq!(st, 200, "{v}");
    let want = FakeEngine::expected_text(&text_request("slow one", 0.0, 0, 2048));
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    tokio::time::timeout(Duration::from_secs(10), srv.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(a).await.is_err(),
        "still accepting after shutdown"
    );
}
