//! `ember quantize`: write a float checkpoint as a compressed-tensors checkpoint that
//! Ember (and vLLM) load as they load llm-compressor's output.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ember::export::{export_compressed_tensors, ExportOptions, ExportScheme};

#[derive(Args)]
pub struct QuantizeArgs {
    /// Float model directory or Hugging Face repo id (default: the embedded tiny Llama).
    #[arg(long)]
    pub model: Option<String>,
    /// w4a16, w8a16, w8a8 or fp8 (per-channel e4m3 weights, dynamic per-token activations).
    #[arg(long)]
    pub scheme: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub int_settings: super::IntSettingsArgs,
    /// Largest shard in GiB.
    #[arg(long, default_value_t = 5.0)]
    pub max_shard_gib: f64,
}

pub fn execute(args: QuantizeArgs) -> Result<()> {
    let scheme = ExportScheme::parse(&args.scheme).with_context(|| format!("unknown scheme `{}` (w4a16, w8a16, w8a8, fp8)", args.scheme))?;
    let recipe = scheme.recipe(&args.int_settings.settings())?;
    let dir = super::model_dir(args.model.as_deref())?;
    let options = ExportOptions { recipe: recipe.clone(), max_shard_bytes: (args.max_shard_gib * (1u64 << 30) as f64) as u64, progress: true };
    let report = export_compressed_tensors(&dir, &args.out, &options)?;
    println!(
        "{} linears quantized ({}), {} shard(s), {:.1} MB → {:.1} MB in {}",
        report.quantized_layers,
        recipe.describe(),
        report.shards.len(),
        report.bytes_in as f64 / 1e6,
        report.bytes_out as f64 / 1e6,
        args.out.display()
    );
    Ok(())
}
