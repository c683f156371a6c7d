//! `ember bench`: throughput and latency of the engine at several batch sizes, on real
//! or dummy weights, printed as a table and optionally written as JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember::engine::{Engine, Prompt, RequestOutput, SamplingParams};
use serde::Serialize;

use super::{EngineArgs, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Concurrent requests per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    /// Generated tokens per request (end-of-sequence is ignored).
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct BenchResult {
    batch_size: usize,
    input_len: usize,
    output_len: usize,
    seconds: f64,
    /// Mean over requests, from arrival to the first token.
    ttft_ms: f64,
    /// Mean over requests, time per output token after the first.
    tpot_ms: f64,
    output_tokens_per_s: f64,
    total_tokens_per_s: f64,
    preemptions: u64,
    peak_rss_mib: Option<f64>,
}

pub fn execute(args: BenchArgs) -> Result<()> {
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes needs positive sizes");
    }
    if args.input_len == 0 || args.output_len == 0 {
        bail!("--input-len and --output-len must be at least 1");
    }
    let loaded = args.model.load()?;
    let vocab = loaded.model.config().vocab_size;
    let device = args.model.device.clone();
    let mut config = args.engine.config();
    config.max_num_seqs = config.max_num_seqs.max(args.batch_sizes.iter().copied().max().unwrap_or(1));
    let mut engine = Engine::new(loaded, &config)?;
    if args.input_len + args.output_len > engine.max_model_len() {
        bail!("input {} + output {} tokens exceed the engine's context of {}", args.input_len, args.output_len, engine.max_model_len());
    }
    let stats = engine.stats();
    eprintln!("KV cache: {} blocks of {} tokens; device {device}", stats.kv_blocks_total, config.block_size);

    // Compiles kernels and fills autotune caches before anything is timed.
    run(&mut engine, 1, args.input_len.min(8), 2, vocab)?;

    let mut results = Vec::new();
    println!("{:>6} {:>10} {:>10} {:>14} {:>14} {:>8} {:>10}", "batch", "TTFT ms", "TPOT ms", "output tok/s", "total tok/s", "preempt", "peak RSS");
    for &batch in &args.batch_sizes {
        let preempted_before = engine.stats().preemptions;
        let started = Instant::now();
        let outputs = run(&mut engine, batch, args.input_len, args.output_len, vocab)?;
        let seconds = started.elapsed().as_secs_f64();
        let result = summarize(&args, batch, seconds, &outputs, engine.stats().preemptions - preempted_before);
        println!(
            "{:>6} {:>10.2} {:>10.3} {:>14.1} {:>14.1} {:>8} {:>10}",
            result.batch_size,
            result.ttft_ms,
            result.tpot_ms,
            result.output_tokens_per_s,
            result.total_tokens_per_s,
            result.preemptions,
            result.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0} MiB")),
        );
        results.push(result);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `batch` requests of `input_len` deterministic pseudo-random tokens, greedy.
fn run(engine: &mut Engine, batch: usize, input_len: usize, output_len: usize, vocab: usize) -> Result<Vec<RequestOutput>> {
    let params = SamplingParams { max_tokens: output_len, ignore_eos: true, ..SamplingParams::greedy() };
    let requests = (0..batch)
        .map(|r| {
            let ids = (0..input_len).map(|i| ((r * 7919 + i * 104_729 + 17) % vocab) as u32).collect();
            (Prompt::Tokens(ids), params.clone())
        })
        .collect();
    Ok(engine.generate(requests, false)?)
}

fn summarize(args: &BenchArgs, batch: usize, seconds: f64, outputs: &[RequestOutput], preemptions: u64) -> BenchResult {
    let n = outputs.len().max(1) as f64;
    let ttft = outputs.iter().map(|o| o.metrics.time_to_first_token.as_secs_f64()).sum::<f64>() / n;
    let tpot = outputs
        .iter()
        .map(|o| {
            o.metrics.decode_time().as_secs_f64() / o.metrics.completion_tokens.saturating_sub(1).max(1) as f64
        })
        .sum::<f64>()
        / n;
    let generated: usize = outputs.iter().map(|o| o.metrics.completion_tokens).sum();
    let prompts: usize = outputs.iter().map(|o| o.metrics.prompt_tokens).sum();
    BenchResult {
        batch_size: batch,
        input_len: args.input_len,
        output_len: args.output_len,
        seconds,
        ttft_ms: ttft * 1e3,
        tpot_ms: tpot * 1e3,
        output_tokens_per_s: generated as f64 / seconds,
        total_tokens_per_s: (generated + prompts) as f64 / seconds,
        preemptions,
        peak_rss_mib: peak_rss_mib(),
    }
}

/// The process's peak resident memory (Linux `VmHWM`); host memory, so it includes
/// weights and KV cache on CPU devices but not GPU memory.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
