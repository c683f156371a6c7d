//! The same model and prompts on every device Ember is built with: one comparison table
//! of speed (relative to the first device that ran) and of output agreement.
//!
//!     cargo run --release --example backend_swap
//!     cargo run --release --example backend_swap -- --model fixtures/mixtral-gptq-4bit-g128 --max-tokens 32
//!
//! Defaults: the embedded tiny Llama, four prompts, 24 greedy tokens each. A device that
//! is missing here (no GPU, no Vulkan adapter) is listed as skipped with the reason.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use ember::device::DEVICE_NAMES;
use ember::engine::{Engine, EngineConfig, Prompt, SamplingParams};
use ember::{default_dtype, embedded, hub, load_model, parse_device, LoadOptions};

#[derive(Parser)]
struct Args {
    /// Model directory or Hugging Face repo id (default: the embedded tiny Llama).
    #[arg(long)]
    model: Option<String>,
    /// Devices to compare, in order; the first one that runs is the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = DEVICE_NAMES.map(String::from))]
    devices: Vec<String>,
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
}

const PROMPTS: [&str; 4] = [
    "The government said",
    "Hundreds of people have been forced to leave their homes",
    "In the morning, the town",
    "Scientists found that",
];

struct Run {
    device: String,
    dtype: String,
    tokens: Vec<Vec<u32>>,
    tokens_per_second: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = match &args.model {
        Some(spec) => hub::resolve_model(spec)?,
        None => embedded::materialize()?,
    };
    let params = SamplingParams { max_tokens: args.max_tokens, ignore_eos: true, ..SamplingParams::greedy() };
    let requests: Vec<(Prompt, SamplingParams)> = PROMPTS.iter().map(|&p| (Prompt::from(p), params.clone())).collect();
    let mut runs: Vec<Run> = Vec::new();
    for spec in &args.devices {
        let device = match parse_device(spec) {
            Ok(device) => device,
            Err(e) => {
                println!("{spec:<6} skipped: {e}");
                continue;
            }
        };
        let dtype = default_dtype(spec);
        let loaded = load_model(&dir, &LoadOptions::new(device, dtype))?;
        let mut engine = Engine::new(loaded, &EngineConfig { kv_cache: ember::engine::KvCacheSize::Bytes(64 << 20), ..EngineConfig::default() })?;
        // Warm-up: kernel compilation and autotuning are not part of the comparison.
        engine.generate(vec![(Prompt::from("warm up"), SamplingParams { max_tokens: 2, ..params.clone() })], false)?;
        let started = Instant::now();
        let outputs = engine.generate(requests.clone(), false)?;
        let seconds = started.elapsed().as_secs_f64();
        let tokens: Vec<Vec<u32>> = outputs.into_iter().map(|o| o.completions[0].token_ids.clone()).collect();
        let generated: usize = tokens.iter().map(Vec::len).sum();
        runs.push(Run { device: spec.clone(), dtype: dtype.to_string(), tokens, tokens_per_second: generated as f64 / seconds });
    }
    let Some(baseline) = runs.first() else {
        anyhow::bail!("no device could run");
    };
    println!("\n{:<6} {:<5} {:>10} {:>10} {:>14} {:>16}", "device", "dtype", "tokens/s", "speed", "same output", "common prefix");
    for run in &runs {
        let same = run.tokens.iter().zip(&baseline.tokens).filter(|(a, b)| a == b).count();
        let prefix: usize = run.tokens.iter().zip(&baseline.tokens).map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count()).sum();
        let total: usize = baseline.tokens.iter().map(Vec::len).sum();
        println!(
            "{:<6} {:<5} {:>10.1} {:>9.2}x {:>10}/{:<3} {:>11.0}% of {}",
            run.device,
            run.dtype,
            run.tokens_per_second,
            run.tokens_per_second / baseline.tokens_per_second,
            same,
            run.tokens.len(),
            100.0 * prefix as f64 / total.max(1) as f64,
            baseline.device,
        );
    }
    Ok(())
}
