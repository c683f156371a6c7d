//! Server metrics in Prometheus' text format (`GET /metrics`): request and token
//! counters, the engine's gauges, and latency histograms.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::{EngineStats, FinishReason, RequestMetrics};

/// How an engine request left the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Finished,
    /// The client went away, or the server was shutting down.
    Aborted,
    /// The engine failed while running it.
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }
}

const LATENCY_BUCKETS: [f64; 17] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0];
const TOKEN_TIME_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    fn observe(&mut self, value: f64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count;
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[derive(Debug, Clone)]
struct State {
    http_responses: BTreeMap<u16, u64>,
    requests: BTreeMap<Outcome, u64>,
    completions: BTreeMap<&'static str, u64>,
    prompt_tokens: u64,
    generation_tokens: u64,
    engine: EngineStats,
    time_to_first_token: Histogram,
    time_per_output_token: Histogram,
    latency: Histogram,
}

/// Shared by the HTTP handlers and the engine thread; every update is a short lock.
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    pub fn new(engine: EngineStats) -> Self {
        Self {
            state: Mutex::new(State {
                http_responses: BTreeMap::new(),
                requests: BTreeMap::new(),
                completions: BTreeMap::new(),
                prompt_tokens: 0,
                generation_tokens: 0,
                engine,
                time_to_first_token: Histogram::new(&LATENCY_BUCKETS),
                time_per_output_token: Histogram::new(&TOKEN_TIME_BUCKETS),
                latency: Histogram::new(&LATENCY_BUCKETS),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of counters.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }

    pub fn engine_stats(&self) -> EngineStats {
        self.with(|s| s.engine)
    }

    pub fn observe_http(&self, status: u16) {
        self.with(|s| *s.http_responses.entry(status).or_default() += 1);
    }

    pub fn observe_engine(&self, stats: EngineStats) {
        self.with(|s| s.engine = stats);
    }

    pub fn observe_completion(&self, reason: FinishReason) {
        self.with(|s| *s.completions.entry(reason.as_str()).or_default() += 1);
    }

    /// A request that left the engine without finishing.
    pub fn observe_unfinished(&self, outcome: Outcome) {
        self.with(|s| *s.requests.entry(outcome).or_default() += 1);
    }

    /// A finished request of `n` completions.
    pub fn observe_finished(&self, metrics: &RequestMetrics, n: usize) {
        self.with(|s| {
            *s.requests.entry(Outcome::Finished).or_default() += 1;
            s.prompt_tokens += metrics.prompt_tokens as u64;
            s.generation_tokens += metrics.completion_tokens as u64;
            s.time_to_first_token.observe(metrics.time_to_first_token.as_secs_f64());
            s.latency.observe(metrics.latency.as_secs_f64());
            // Decode time over the tokens after each completion's first.
            let later_tokens = metrics.completion_tokens.saturating_sub(n);
            if later_tokens > 0 {
                s.time_per_output_token.observe(per_token(metrics.decode_time(), later_tokens / n.max(1)));
            }
        });
    }

    pub fn render(&self) -> String {
        let s = self.with(|s| s.clone());
        let mut out = String::new();
        header(&mut out, "ember_http_responses_total", "HTTP responses by status code.", "counter");
        for (status, count) in &s.http_responses {
            let _ = writeln!(out, "ember_http_responses_total{{status=\"{status}\"}} {count}");
        }
        header(&mut out, "ember_requests_total", "Engine requests by how they ended.", "counter");
        for outcome in [Outcome::Finished, Outcome::Aborted, Outcome::Failed] {
            let count = s.requests.get(&outcome).copied().unwrap_or(0);
            let _ = writeln!(out, "ember_requests_total{{outcome=\"{}\"}} {count}", outcome.as_str());
        }
        header(&mut out, "ember_completions_total", "Finished completions by finish reason.", "counter");
        for reason in [FinishReason::Stop, FinishReason::Length] {
            let count = s.completions.get(reason.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "ember_completions_total{{finish_reason=\"{}\"}} {count}", reason.as_str());
        }
        let e = s.engine;
        let simple: [(&str, &str, &str, u64); 7] = [
            ("ember_prompt_tokens_total", "Prompt tokens of finished requests.", "counter", s.prompt_tokens),
            ("ember_generation_tokens_total", "Tokens generated for finished requests.", "counter", s.generation_tokens),
            ("ember_num_requests_running", "Sequences in the running batch.", "gauge", e.running as u64),
            ("ember_num_requests_waiting", "Sequences waiting for admission.", "gauge", e.waiting as u64),
            ("ember_kv_cache_blocks_used", "KV cache blocks in use.", "gauge", e.kv_blocks_used as u64),
            ("ember_kv_cache_blocks_total", "KV cache blocks in the pool.", "gauge", e.kv_blocks_total as u64),
            ("ember_preemptions_total", "Sequences preempted for lack of KV blocks.", "counter", e.preemptions),
        ];
        for (name, help, kind, value) in simple {
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        }
        s.time_to_first_token.render(&mut out, "ember_time_to_first_token_seconds", "From arrival to the first token.");
        s.time_per_output_token.render(&mut out, "ember_time_per_output_token_seconds", "Mean decode time per token after the first, per request.");
        s.latency.render(&mut out, "ember_request_latency_seconds", "From arrival to the last token.");
        out
    }
}

fn per_token(time: Duration, tokens: usize) -> f64 {
    time.as_secs_f64() / tokens.max(1) as f64
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
