//! Generate with a GPTQ-quantized Mixtral: the experts stay 4-bit and run through the
//! grouped quantized GEMM on CubeCL devices (the Burn-ops reference on Flex).
//!
//! ```sh
//! cargo run --release --example mixtral_gptq
//! cargo run --release --example mixtral_gptq -- --model TheBloke/Mixtral-8x7B-Instruct-v0.1-GPTQ --device cuda --chat
//! ```
//!
//! Default: the tiny Mixtral GPTQ checkpoint in `fixtures/` (GPTQModel, 4-bit, group 128),
//! so it runs on a fresh machine with no download and no GPU.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use ember::engine::{Engine, EngineConfig, Prompt, SamplingParams};
use ember::quant::ComputeDtype;
use ember::{default_dtype, hub, load_model, parse_device, ChatMessage, LoadOptions};

#[derive(Parser)]
struct Args {
    /// Model directory or Hugging Face repo id.
    #[arg(long)]
    model: Option<String>,
    /// flex, cpu, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "flex")]
    device: String,
    /// f32, f16 or bf16 (default: f32 on CPUs and wgpu, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Default: the prompt of the fixture's reference run, whose greedy continuation from
    /// GPTQModel begins "the Australian coy to the Australian".
    #[arg(long, default_value = "Hundreds of people have been forced to leave their homes as strong winds pushed the fire towards the town, and the government said")]
    prompt: String,
    /// Apply the model's chat template to the prompt.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match &args.model {
        Some(spec) => hub::resolve_model(spec)?,
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mixtral-gptq-4bit-g128"),
    };
    let dtype = match &args.dtype {
        Some(name) => ComputeDtype::parse(name).with_context(|| format!("unknown dtype `{name}`"))?,
        None => default_dtype(&args.device),
    };
    let mut options = LoadOptions::new(parse_device(&args.device)?, dtype);
    options.progress = true;
    let started = Instant::now();
    let loaded = load_model(&dir, &options)?;
    let config = loaded.model.config();
    let experts = config.moe.as_ref().map_or("dense".to_string(), |moe| format!("{} experts, top-{}", moe.num_experts, moe.experts_per_token));
    eprintln!(
        "loaded {} ({}, {} layers, {experts}) in {:.1} s on {}",
        dir.display(),
        loaded.quant_method,
        config.num_layers,
        started.elapsed().as_secs_f64(),
        args.device,
    );

    let tokenizer = loaded.tokenizer()?;
    let prompt = if args.chat {
        tokenizer.encode_chat(&[ChatMessage::new("user", &args.prompt)])?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let params = SamplingParams { max_tokens: args.max_tokens, ..SamplingParams::greedy() };
    let mut engine = Engine::new(loaded, &EngineConfig::default())?;
    engine.add_request(Prompt::Tokens(prompt), params)?;

    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        write!(stdout, "{}", args.prompt)?;
    }
    while engine.has_unfinished() {
        for output in engine.step()? {
            for delta in &output.deltas {
                write!(stdout, "{}", delta.text)?;
            }
            stdout.flush()?;
            if let Some(m) = output.finished {
                writeln!(stdout)?;
                eprintln!(
                    "{} prompt tokens, {} generated; first token after {:.1} ms, then {:.1} tokens/s",
                    m.prompt_tokens,
                    m.completion_tokens,
                    m.time_to_first_token.as_secs_f64() * 1e3,
                    m.decode_tokens_per_second(),
                );
            }
        }
    }
    Ok(())
}
