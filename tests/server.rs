//! The OpenAI-compatible server, started on 127.0.0.1 with a random port and driven over
//! TCP by a real HTTP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use ember::engine::{Engine, EngineConfig};
use ember::server::{Server, ServerConfig};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{fixture, load};

const MODEL: &str = "tiny";

struct TestServer {
    server: Option<Server>,
    base: String,
    agent: ureq::Agent,
}

fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let engine = Engine::new(load("llama-tiny-f16", Device::flex()), &EngineConfig::default()).expect("engine");
    let mut config = ServerConfig::new(MODEL);
    config.addr = "127.0.0.1:0".parse().unwrap();
    configure(&mut config);
    let server = Server::start(engine, config).expect("server starts");
    let base = format!("http://{}", server.local_addr());
    TestServer { server: Some(server), base, agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build() }
}

fn start() -> TestServer {
    start_with(|_| {})
}

fn status_and_body(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(response) => (response.status(), response.into_string().expect("body")),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().expect("body")),
        Err(e) => panic!("transport error: {e}"),
    }
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn raw(&self, method: &str, path: &str, body: Option<&str>, key: Option<&str>) -> (u16, String) {
        let mut request = self.agent.request(method, &self.url(path)).set("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        status_and_body(match body {
            Some(body) => request.send_string(body),
            None => request.call(),
        })
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.raw("POST", path, Some(&body.to_string()), None);
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    }

    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, value) = self.post(path, body);
        assert_eq!(status, 200, "{value}");
        value
    }

    /// A streaming request, read to its end: the parsed chunks before `[DONE]`.
    fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let response = self.agent.post(&self.url(path)).send_string(&body.to_string()).expect("stream starts");
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        read_events(BufReader::new(response.into_reader()), usize::MAX).expect("the stream ends with [DONE]")
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let (status, text) = self.raw("GET", "/metrics", None, None);
        assert_eq!(status, 200);
        let line = text.lines().find(|l| l.starts_with(line_prefix)).unwrap_or_else(|| panic!("no {line_prefix} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Waits for the engine to hold no request and no KV block.
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let gauges = ["ember_kv_cache_blocks_used ", "ember_num_requests_running ", "ember_num_requests_waiting "].map(|g| self.metric(g));
            if gauges == [0.0; 3] {
                return;
            }
            assert!(Instant::now() < deadline, "the engine did not drain: blocks, running, waiting = {gauges:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn shutdown(&mut self) {
        self.server.take().unwrap().shutdown().expect("clean shutdown");
    }
}

/// Parses server-sent events: up to `limit` data chunks, `None` when the stream ends
/// without `[DONE]` inside the limit.
fn read_events(reader: impl BufRead, limit: usize) -> Option<Vec<Value>> {
    let mut chunks = Vec::new();
    for line in reader.lines() {
        let line = line.ok()?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            return Some(chunks);
        }
        chunks.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("chunk is not JSON ({e}): {data}")));
        if chunks.len() >= limit {
            return None;
        }
    }
    None
}

fn greedy(prompt: &str, max_tokens: usize) -> Value {
    json!({ "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0 })
}

/// A greedy stream of exactly `max_tokens` tokens.
fn endless_stream(prompt: &str, max_tokens: usize) -> Value {
    let mut request = greedy(prompt, max_tokens);
    request["stream"] = json!(true);
    request["ignore_eos"] = json!(true);
    request
}

fn chat(content: &str, max_tokens: usize) -> Value {
    json!({ "model": MODEL, "messages": [{ "role": "user", "content": content }], "max_tokens": max_tokens, "temperature": 0 })
}

/// What `ember run` prints for the same request (stdout, without the echoed prompt).
fn ember_run(args: &[&str]) -> String {
    let cache = TempDir::new().unwrap();
    let model = fixture("llama-tiny-f16");
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["run", "--model", model.to_str().unwrap(), "--temperature", "0"])
        .args(args)
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .expect("ember runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.strip_suffix('\n').unwrap_or(&stdout).to_string()
}

fn streamed_text(chunks: &[Value], chat: bool) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|choice| if chat { choice["delta"]["content"].as_str() } else { choice["text"].as_str() })
        .collect()
}

#[test]
fn completions_and_chat_equal_ember_run_streaming_or_not() {
    let server = start();
    let prompt = "The government said";
    let expected = ember_run(&["--prompt", prompt, "--max-tokens", "12"]);
    let expected = expected.strip_prefix(prompt).expect("run echoes the prompt");

    let body = server.ok("/v1/completions", &greedy(prompt, 12));
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["model"], MODEL);
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["choices"][0]["text"], expected);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 12);
    assert_eq!(body["usage"]["total_tokens"], body["usage"]["prompt_tokens"].as_u64().unwrap() + 12);

    let mut request = greedy(prompt, 12);
    request["stream"] = json!(true);
    request["stream_options"] = json!({ "include_usage": true });
    let chunks = server.stream("/v1/completions", &request);
    assert_eq!(streamed_text(&chunks, false), expected);
    let id = chunks[0]["id"].as_str().unwrap();
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["model"], MODEL);
    }
    let (last, body_chunks) = chunks.split_last().unwrap();
    assert!(body_chunks.iter().all(|c| c.get("usage") == Some(&Value::Null)), "chunks carry usage: null until the usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 12);
    assert_eq!(body_chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    assert!(body_chunks[..body_chunks.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));

    let expected_chat = ember_run(&["--prompt", "Hello", "--chat", "--max-tokens", "10"]);
    let body = server.ok("/v1/chat/completions", &chat("Hello", 10));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], expected_chat.as_str());

    let mut request = chat("Hello", 10);
    request["stream"] = json!(true);
    let chunks = server.stream("/v1/chat/completions", &request);
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({ "role": "assistant", "content": "" }));
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c.get("usage").is_none()));
    assert_eq!(streamed_text(&chunks, true), expected_chat);
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
}

#[test]
fn sampling_fields_logprobs_several_prompts_and_n() {
    let server = start();
    let request = json!({
        "prompt": ["The government said", "In the morning"],
        "n": 2, "max_tokens": 6, "temperature": 0.9, "seed": 7, "logprobs": 3, "ignore_eos": true,
    });
    let body = server.ok("/v1/completions", &request);
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let logprobs = &choice["logprobs"];
        assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 6);
        assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 6);
        assert!(logprobs["token_logprobs"].as_array().unwrap().iter().all(|lp| lp.as_f64().unwrap() <= 0.0));
        assert!(logprobs["top_logprobs"].as_array().unwrap().iter().all(|top| (1..=3).contains(&top.as_object().unwrap().len())));
        let offsets: Vec<u64> = logprobs["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0);
    }
    assert_eq!(body["usage"]["completion_tokens"], 24);
    // Seeded: the same request gives the same choices, and completion i of a prompt
    // equals a lone request seeded `seed + i`.
    assert_eq!(server.ok("/v1/completions", &request)["choices"], body["choices"]);
    let lone = json!({ "prompt": "In the morning", "max_tokens": 6, "temperature": 0.9, "seed": 8, "ignore_eos": true });
    assert_eq!(server.ok("/v1/completions", &lone)["choices"][0]["text"], choices[3]["text"]);

    // Explicit nulls mean "unset", as in OpenAI's API.
    let nulls = json!({ "prompt": "In the morning", "max_tokens": 3, "stream": null, "echo": null, "logprobs": null, "stream_options": null, "n": null });
    assert_eq!(server.ok("/v1/completions", &nulls)["choices"].as_array().unwrap().len(), 1);
    let echo = server.ok("/v1/completions", &json!({ "prompt": "In the morning", "max_tokens": 3, "echo": true }));
    assert!(echo["choices"][0]["text"].as_str().unwrap().starts_with("In the morning"));

    let mut request = chat("Hello", 5);
    request["logprobs"] = json!(true);
    request["top_logprobs"] = json!(2);
    request["stop"] = json!(["zzzz"]);
    let body = server.ok("/v1/chat/completions", &request);
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, body["usage"]["completion_tokens"].as_u64().unwrap());
    assert!(content.iter().all(|entry| entry["top_logprobs"].as_array().unwrap().len() == 2 && entry["bytes"].is_array()));

    // A stop string cuts the text before it.
    let full = server.ok("/v1/completions", &greedy("The government said", 12))["choices"][0]["text"].as_str().unwrap().to_string();
    let stop = full.trim_start().split(' ').nth(1).expect("two words").to_string();
    let mut request = greedy("The government said", 12);
    request["stop"] = json!(stop);
    let cut = server.ok("/v1/completions", &request);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    assert_eq!(cut["choices"][0]["text"].as_str().unwrap(), &full[..full.find(&stop).unwrap()]);

    let (status, models) = server.raw("GET", "/v1/models", None, None);
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], 512);
    assert_eq!(server.raw("GET", "/health", None, None).0, 200);
    assert!(server.metric("ember_requests_total{outcome=\"finished\"}") >= 7.0);
    assert!(server.metric("ember_time_to_first_token_seconds_count") >= 7.0);
    assert_eq!(server.metric("ember_kv_cache_blocks_total"), server.server.as_ref().unwrap().metrics().engine_stats().kv_blocks_total as f64);
}

#[test]
fn bad_requests_get_openai_errors_and_leave_the_server_as_it_was() {
    let server = start_with(|c| c.max_body_bytes = 64 << 10);
    let good = greedy("The government said", 8);
    let before = server.ok("/v1/completions", &good);
    let long_prompt = "word ".repeat(600);
    let cases: Vec<(&str, &str, String, u16, Option<&str>)> = vec![
        ("POST", "/v1/completions", "{\"prompt\": ".into(), 400, Some("invalid_json")),
        ("POST", "/v1/completions", "[1, 2]".into(), 400, None),
        ("POST", "/v1/completions", json!({ "max_tokens": 4 }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": "a", "temperature": -1 }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": "a", "max_tokens": "many" }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": "a", "n": 0 }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": "a", "logprobs": 50 }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": [] }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": [[]] }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": [99999] }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": "a", "logit_bias": { "5": 1.0 } }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": "a", "stop": vec!["x"; 17] }).to_string(), 400, None),
        ("POST", "/v1/completions", json!({ "prompt": "a", "max_tokens": u64::MAX }).to_string(), 400, Some("context_length_exceeded")),
        ("POST", "/v1/completions", json!({ "prompt": "a", "model": "gpt-4" }).to_string(), 404, Some("model_not_found")),
        ("POST", "/v1/completions", json!({ "prompt": long_prompt }).to_string(), 400, Some("context_length_exceeded")),
        ("POST", "/v1/completions", json!({ "prompt": "a", "max_tokens": 100000 }).to_string(), 400, Some("context_length_exceeded")),
        ("POST", "/v1/completions", json!({ "prompt": "x".repeat(70_000) }).to_string(), 413, None),
        ("POST", "/v1/completions", json!({ "prompt": "x".repeat(3 << 20) }).to_string(), 413, None),
        ("POST", "/v1/chat/completions", json!({ "messages": [] }).to_string(), 400, None),
        ("POST", "/v1/chat/completions", json!({ "messages": [{ "role": "user" , "content": [{ "type": "image_url" }] }] }).to_string(), 400, None),
        ("POST", "/v1/chat/completions", json!({ "messages": [{ "role": "user", "content": "hi" }], "top_logprobs": 2 }).to_string(), 400, None),
        ("POST", "/v1/chat/completions", json!({ "messages": [{ "role": "user", "content": "hi" }], "tools": [{ "type": "function" }] }).to_string(), 400, None),
        ("GET", "/v1/completions", String::new(), 405, None),
        ("GET", "/v2/nothing", String::new(), 404, Some("not_found")),
    ];
    for (method, path, body, status, code) in &cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let (got, text) = server.raw(method, path, body, None);
        assert_eq!(got, *status, "{method} {path} {body:?}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: error body is not JSON ({e}): {text}"));
        let error = &error["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
        assert!(error["type"].is_string(), "{text}");
        if let Some(code) = code {
            assert_eq!(error["code"], *code, "{text}");
        }
    }
    assert_eq!(server.ok("/v1/completions", &good)["choices"], before["choices"]);
    assert_eq!(server.metric("ember_http_responses_total{status=\"400\"}"), 19.0);
    server.wait_idle();
}

#[test]
fn api_key_guards_every_route_but_health() {
    let server = start_with(|c| c.api_key = Some("sesame".into()));
    let body = greedy("The government said", 4).to_string();
    for key in [None, Some("wrong"), Some("sesam")] {
        let (status, text) = server.raw("POST", "/v1/completions", Some(&body), key);
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("invalid_api_key"));
        assert_eq!(server.raw("GET", "/v1/models", None, key).0, 401);
        assert_eq!(server.raw("GET", "/metrics", None, key).0, 401);
    }
    assert_eq!(server.raw("GET", "/health", None, None).0, 200);
    assert_eq!(server.raw("POST", "/v1/completions", Some(&body), Some("sesame")).0, 200);
    assert_eq!(server.raw("GET", "/v1/models", None, Some("sesame")).0, 200);
}

/// 64 streaming clients at once, a quarter of them hanging up after the first token.
#[test]
fn concurrent_streams_with_disconnects_complete_and_free_the_pool() {
    let server = start();
    let prompts = ["The government said", "In the morning", "Hundreds of people", "The city council"];
    let expected: Vec<Value> = prompts.iter().map(|p| server.ok("/v1/completions", &greedy(p, 24))["choices"][0]["text"].clone()).collect();
    let finished_before = server.metric("ember_requests_total{outcome=\"finished\"}");

    let clients: Vec<_> = (0..64)
        .map(|i| {
            let url = server.url("/v1/completions");
            let agent = server.agent.clone();
            let hang_up = i % 4 == 3;
            let mut request = greedy(prompts[i % 4], if hang_up { 400 } else { 24 });
            request["stream"] = json!(true);
            request["ignore_eos"] = json!(hang_up);
            std::thread::spawn(move || {
                let response = agent.post(&url).send_string(&request.to_string()).expect("stream starts");
                let reader = BufReader::new(response.into_reader());
                if hang_up {
                    // Read one token, then drop the connection mid-stream.
                    assert!(read_events(reader, 1).is_none());
                    None
                } else {
                    Some(streamed_text(&read_events(reader, usize::MAX).expect("[DONE]"), false))
                }
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        if let Some(text) = client.join().expect("client thread") {
            assert_eq!(text, expected[i % 4], "client {i}");
        }
    }
    server.wait_idle();
    assert_eq!(server.metric("ember_requests_total{outcome=\"aborted\"}"), 16.0);
    assert_eq!(server.metric("ember_requests_total{outcome=\"finished\"}") - finished_before, 48.0);
    assert_eq!(server.metric("ember_kv_cache_blocks_used"), 0.0);
    assert_eq!(server.ok("/v1/completions", &greedy(prompts[0], 24))["choices"][0]["text"], expected[0]);

    // A client that stops waiting for a non-streaming answer is dropped too.
    let impatient = ureq::AgentBuilder::new().timeout(Duration::from_millis(100)).build();
    let mut long = greedy(prompts[1], 500);
    long["ignore_eos"] = json!(true);
    assert!(impatient.post(&server.url("/v1/completions")).send_string(&long.to_string()).is_err(), "timed out");
    server.wait_idle();
    assert_eq!(server.metric("ember_requests_total{outcome=\"aborted\"}"), 17.0);
}

#[test]
fn shutdown_finishes_in_flight_streams_then_refuses_connections() {
    let mut server = start();
    let request = endless_stream("The government said", 40);
    let response = server.agent.post(&server.url("/v1/completions")).send_string(&request.to_string()).unwrap();
    let mut reader = BufReader::new(response.into_reader());
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        reader.read_line(&mut first).unwrap();
    }
    let base = server.base.clone();
    let stopper = std::thread::spawn(move || {
        server.shutdown();
        server
    });
    let chunks = read_events(reader, usize::MAX).expect("the in-flight stream runs to [DONE]");
    assert_eq!(chunks.len(), 39, "every token after the first arrives");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    stopper.join().unwrap();
    assert!(ureq::get(&format!("{base}/health")).call().is_err(), "the server no longer accepts connections");
}

#[test]
fn shutdown_after_the_grace_period_aborts_streams_cleanly() {
    let mut server = start_with(|c| c.shutdown_grace = Duration::ZERO);
    let request = endless_stream("The government said", 400);
    let response = server.agent.post(&server.url("/v1/completions")).send_string(&request.to_string()).unwrap();
    let mut reader = BufReader::new(response.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    server.shutdown();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let events: Vec<&str> = rest.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{rest}");
    let last: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "abort");
}

/// A child process killed when the test ends, passing or not.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ember serve` on the tiny Llama in its own process: the child, its stderr after the
/// banner, and its address.
fn spawn_ember_serve() -> (Spawned, BufReader<std::process::ChildStderr>, String) {
    let model = fixture("llama-tiny-f16");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", model.to_str().unwrap(), "--port", "0", "--served-model-name", MODEL])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ember serve starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("serving") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "ember serve exited before serving");
    }
    let addr = line.split("http://").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("address in the banner");
    (Spawned(child), stderr, addr.to_string())
}

#[test]
fn ember_serve_stops_on_sigterm() {
    let (mut child, mut stderr, addr) = spawn_ember_serve();
    let body = ureq::post(&format!("http://{addr}/v1/completions")).send_string(&greedy("The government said", 4).to_string());
    assert_eq!(body.expect("completion").status(), 200);
    let killed = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.0.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("server stopped"), "{rest}");
}

// ---------------------------------------------------------------- abuse

fn raw_connection(server: &TestServer) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

fn raw_request(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A client that opens a large stream and never reads is cut off once its socket
/// buffers are full, and its request is aborted.
#[test]
fn a_client_that_never_reads_is_disconnected_and_aborted() {
    let server = start_with(|c| c.stalled_client_timeout = Duration::from_millis(500));
    let expected = server.ok("/v1/completions", &greedy("The government said", 12));
    let body = json!({ "prompt": "The government said", "n": 64, "max_tokens": 480, "ignore_eos": true, "stream": true, "temperature": 0 });
    // A small receive buffer, so the server's writes wait after a few kilobytes whatever
    // the kernel's buffer autotuning would allow.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut silent = std::net::TcpStream::from(socket);
    silent.write_all(raw_request("/v1/completions", &body.to_string()).as_bytes()).unwrap();
    // Meanwhile the server answers others.
    assert_eq!(server.ok("/v1/completions", &greedy("The government said", 12))["choices"], expected["choices"]);
    server.wait_idle();
    assert_eq!(server.metric("ember_requests_total{outcome=\"aborted\"}"), 1.0, "the silent client's request was aborted, not run to the end");
    drop(silent);
}

/// A client that sends half its request headers and then nothing is disconnected (the
/// read ends at the server's close, not at the client's 30 s read timeout), and the
/// server goes on answering others.
#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let server = start_with(|c| c.stalled_client_timeout = Duration::from_millis(500));
    let mut half = raw_connection(&server);
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut rest = Vec::new();
    let closed = half.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the connection stayed open: {closed:?}");
    assert!(server.ok("/v1/completions", &greedy("The government said", 4))["choices"][0]["text"].is_string());
}

#[test]
fn slow_and_malformed_clients_leave_the_server_as_it_was() {
    let server = start_with(|c| c.stalled_client_timeout = Duration::from_secs(2));
    let mut request = greedy("In the morning", 24);
    let expected = server.ok("/v1/completions", &request)["choices"][0]["text"].clone();

    // A slow reader gets everything.
    request["stream"] = json!(true);
    let response = server.agent.post(&server.url("/v1/completions")).send_string(&request.to_string()).unwrap();
    let mut text = String::new();
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.unwrap();
        std::thread::sleep(Duration::from_millis(20));
        match line.strip_prefix("data: ") {
            Some("[DONE]") => break,
            Some(data) => text.push_str(serde_json::from_str::<Value>(data).unwrap()["choices"][0]["text"].as_str().unwrap()),
            None => {}
        }
    }
    assert_eq!(text, expected.as_str().unwrap());

    // Not HTTP at all.
    let mut garbage = raw_connection(&server);
    garbage.write_all(b"\x16\x03\x01 hello there\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert!(answer.is_empty() || String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    // A body shorter than its Content-Length, then a hang-up.
    let mut short = raw_connection(&server);
    short.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ").unwrap();
    drop(short);
    // A body that never finishes arriving gets 408 once the client has stalled too long.
    let mut stuck = raw_connection(&server);
    stuck.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ").unwrap();
    let mut status = String::new();
    BufReader::new(&stuck).read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    // A stream whose client half-closes at once, and one whose client leaves after a few bytes.
    for read_some in [false, true] {
        let mut client = raw_connection(&server);
        let streaming = endless_stream("In the morning", 200);
        client.write_all(raw_request("/v1/completions", &streaming.to_string()).as_bytes()).unwrap();
        if read_some {
            let mut head = [0u8; 64];
            client.read_exact(&mut head).unwrap();
        } else {
            client.shutdown(std::net::Shutdown::Write).unwrap();
        }
    }
    server.wait_idle();
    assert_eq!(server.ok("/v1/completions", &greedy("In the morning", 24))["choices"][0]["text"], expected);
    server.wait_idle();
}

/// 1,000 bad requests in a row change nothing: the next good request gets what the
/// fresh server gave, and the server process's memory and KV pool are where they were.
#[test]
fn a_thousand_bad_requests_then_a_good_one() {
    let (child, _stderr, addr) = spawn_ember_serve();
    let server = TestServer { server: None, base: format!("http://{addr}"), agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build() };
    let good = greedy("The government said", 16);
    let fresh = server.ok("/v1/completions", &good);
    let bad: Vec<(&str, String)> = vec![
        ("/v1/completions", "{\"prompt\": ".into()),
        ("/v1/completions", json!({ "prompt": "a", "temperature": -3 }).to_string()),
        ("/v1/completions", json!({ "prompt": "word ".repeat(600) }).to_string()),
        ("/v1/completions", json!({ "prompt": [4_000_000_000u64] }).to_string()),
        ("/v1/completions", json!({ "prompt": [70_000] }).to_string()),
        ("/v1/completions", json!({ "prompt": "a", "n": 200, "max_tokens": 4 }).to_string()),
        ("/v1/completions", json!({ "prompt": "a", "model": "other" }).to_string()),
        ("/v1/chat/completions", json!({ "messages": [{ "role": "user", "content": [{ "type": "audio" }] }] }).to_string()),
        ("/v1/chat/completions", json!({ "messages": "hello" }).to_string()),
        ("/v1/nothing", "{}".into()),
    ];
    let mut baseline = 0;
    for round in 0..1100 {
        if round == 100 {
            baseline = resident_bytes(child.0.id());
        }
        let (path, body) = &bad[round % bad.len()];
        let (status, text) = server.raw("POST", path, Some(body), None);
        assert!((400..500).contains(&status), "{path} {body}: {status} {text}");
    }
    let grown = resident_bytes(child.0.id()).saturating_sub(baseline);
    assert!(grown < 8 << 20, "the server's memory grew by {grown} bytes over 1,000 bad requests");
    assert_eq!(server.ok("/v1/completions", &good)["choices"], fresh["choices"]);
    server.wait_idle();
    assert_eq!(server.metric("ember_requests_total{outcome=\"finished\"}"), 2.0, "no bad request reached the engine's output");
    assert_eq!(server.metric("ember_http_responses_total{status=\"400\"}"), 880.0);
}

/// Error responses leave the connection usable, even when the body arrives after the
/// headers: a client's next request on it gets an answer.
#[test]
fn connections_stay_usable_after_error_responses() {
    let server = start_with(|c| c.api_key = Some("sesame".into()));
    let body = br#"{"prompt": "The government said", "max_tokens": 2}"#;
    for (path, key) in [("/v1/nothing", "sesame"), ("/v1/completions", "wrong"), ("/v1/completions", "sesame")] {
        let mut connection = raw_connection(&server);
        let mut reader = BufReader::new(connection.try_clone().unwrap());
        for _ in 0..3 {
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n", body.len());
            connection.write_all(head.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            connection.write_all(body).unwrap();
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.starts_with("HTTP/1.1 "), "{path}: no answer on a reused connection ({status:?})");
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut content = vec![0; length];
            reader.read_exact(&mut content).unwrap();
        }
    }
}
