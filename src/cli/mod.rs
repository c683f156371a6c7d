//! The `ember` command line.

mod bench;
mod check;
mod generate;
mod inspect;
mod logits;
mod perplexity;
mod quantize;
mod run;
mod serve;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ember::{default_dtype, embedded, hub, load_model, parse_device, LoadFormat, LoadOptions, LoadedModel};
use ember::engine::{EngineConfig, KvCacheSize};
use ember::quant::{ComputeDtype, OnlineSettings};

#[derive(Parser)]
#[command(name = "ember", version, about = "Run quantized LLM checkpoints on any Burn backend")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt, streaming it, then print tokens/s.
    Run(run::RunArgs),
    /// Write the logits of one forward pass over a prompt to a safetensors file.
    Logits(logits::LogitsArgs),
    /// Describe a checkpoint: architecture, dimensions, dtypes, quantization, size.
    Inspect(inspect::InspectArgs),
    /// Quantize a float checkpoint and write it in compressed-tensors layout.
    Quantize(quantize::QuantizeArgs),
    /// Perplexity of a model over a text file (sliding window), with tokens/s.
    Perplexity(perplexity::PerplexityArgs),
    /// Generate completions for every prompt of a JSONL file, batched, into a JSONL file.
    Generate(generate::GenerateArgs),
    /// Throughput and latency at several batch sizes (TTFT, TPOT, tokens/s, memory).
    Bench(bench::BenchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Validate a checkpoint without loading it: tensors, shapes, dtypes, scales, g_idx.
    Check(check::CheckArgs),
}

impl Command {
    pub fn execute(self) -> Result<()> {
        match self {
            Self::Run(args) => run::execute(args),
            Self::Logits(args) => logits::execute(args),
            Self::Inspect(args) => inspect::execute(args),
            Self::Quantize(args) => quantize::execute(args),
            Self::Perplexity(args) => perplexity::execute(args),
            Self::Generate(args) => generate::execute(args),
            Self::Bench(args) => bench::execute(args),
            Self::Serve(args) => serve::execute(args),
            Self::Check(args) => check::execute(args),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LoadFormatArg {
    Safetensors,
    Dummy,
}

/// A model directory, a Hugging Face repo id, or (`None`) the embedded tiny Llama.
pub fn model_dir(spec: Option<&str>) -> Result<std::path::PathBuf> {
    Ok(match spec {
        Some(spec) => hub::resolve_model(spec)?,
        None => embedded::materialize()?,
    })
}

/// How integer weights are quantized (`--quantization int4|int8`, `ember quantize
/// --scheme w4a16|w8a16`).
#[derive(Args, Clone)]
pub struct IntSettingsArgs {
    /// Inputs per scale for int weights (-1: one per output channel; defaults: 128 for
    /// 4-bit, per channel for 8-bit).
    #[arg(long, allow_negative_numbers = true)]
    pub group_size: Option<i64>,
    /// Integer zero points for int weights.
    #[arg(long, conflicts_with = "symmetric")]
    pub asymmetric: bool,
    /// No zero points for int weights (the default).
    #[arg(long)]
    pub symmetric: bool,
}

impl IntSettingsArgs {
    pub fn settings(&self) -> OnlineSettings {
        let symmetric = match (self.symmetric, self.asymmetric) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        OnlineSettings { group_size: self.group_size, symmetric }
    }
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model directory or Hugging Face repo id (org/name). Default: the tiny Llama embedded
    /// in the binary.
    #[arg(long)]
    pub model: Option<String>,
    /// flex (pure-Rust CPU), cpu (CubeCL CPU runtime), wgpu, cuda or cuda:N.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Compute dtype: f32, f16 or bf16 (default: f32 on CPUs and wgpu, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Keep only the first N decoder layers (for benchmarking real-size configs).
    #[arg(long)]
    pub num_layers: Option<usize>,
    /// `dummy` fills every weight with deterministic random values: only config.json is read.
    #[arg(long, value_enum, default_value = "safetensors")]
    pub load_format: LoadFormatArg,
    /// Quantization method to use instead of the one in config.json; on a float
    /// checkpoint `int4`, `int8`, `w8a8` or `fp8` quantize it while it loads.
    #[arg(long)]
    pub quantization: Option<String>,
    #[command(flatten)]
    pub int_settings: IntSettingsArgs,
    /// Run FP8 checkpoints weight-only: activations stay in the compute dtype instead of
    /// being quantized to e4m3 (as vLLM does on GPUs without FP8 tensor cores).
    #[arg(long)]
    pub fp8_weight_only: bool,
}

impl ModelArgs {
    pub fn model_dir(&self) -> Result<std::path::PathBuf> {
        model_dir(self.model.as_deref())
    }

    fn online_settings(&self) -> Result<OnlineSettings> {
        let settings = self.int_settings.settings();
        if !settings.is_empty() && !matches!(self.quantization.as_deref(), Some("int4" | "int8")) {
            anyhow::bail!("--group-size, --symmetric and --asymmetric apply to --quantization int4 or int8");
        }
        Ok(settings)
    }

    pub fn load(&self) -> Result<LoadedModel> {
        let device = parse_device(&self.device)?;
        let dtype = match &self.dtype {
            Some(name) => ComputeDtype::parse(name).with_context(|| format!("unknown dtype `{name}` (f32, f16, bf16)"))?,
            None => default_dtype(&self.device),
        };
        let mut options = LoadOptions::new(device, dtype);
        options.num_layers = self.num_layers;
        options.quantization = self.quantization.clone();
        options.online = self.online_settings()?;
        options.load_format = match self.load_format {
            LoadFormatArg::Safetensors => LoadFormat::Safetensors,
            LoadFormatArg::Dummy => LoadFormat::Dummy,
        };
        options.progress = true;
        options.fp8_weight_only = self.fp8_weight_only;
        let dir = self.model_dir()?;
        Ok(load_model(&dir, &options)?)
    }
}

/// How the engine is sized (shared by `run`, `generate`, `bench` and `serve`).
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Memory for the paged KV cache, e.g. 512MiB or 8GiB (allocated up front).
    #[arg(long, default_value = "512MiB", value_parser = parse_bytes)]
    pub kv_cache_memory: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Most sequences in one batched step.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Most tokens in one step; longer prompts are prefilled in chunks.
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Longest sequence, prompt and output (default: the model's positions, capped by
    /// what the KV cache holds).
    #[arg(long)]
    pub max_model_len: Option<usize>,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            block_size: self.block_size,
            kv_cache: KvCacheSize::Bytes(self.kv_cache_memory),
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
        }
    }
}

/// `512MiB`, `8GiB`, `2G`, `1000000` (bytes).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a size like 512MiB or 8GiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit `{other}` (B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    Ok((number * scale) as usize)
}
