//! `ember perplexity`: how well a (quantized) model predicts a text, to judge a
//! quantization against its float parent.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ember::engine::perplexity;

use super::ModelArgs;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// UTF-8 text to score (the repo ships data/perplexity.txt).
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per window (default: the model's positions, at most 2048).
    #[arg(long)]
    pub context: Option<usize>,
    /// Tokens each window advances (default: half the context).
    #[arg(long)]
    pub stride: Option<usize>,
}

pub fn execute(args: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let loaded = args.model.load()?;
    let ids = loaded.tokenizer()?.encode(&text, true)?;
    let context = args.context.unwrap_or(loaded.model.config().max_position_embeddings.min(2048));
    let stride = args.stride.unwrap_or(context.div_ceil(2));
    let report = perplexity(&loaded.model, &ids, context, stride)?;
    println!(
        "perplexity {:.4} (mean nll {:.4}) over {} tokens; {} window(s) of {context}, stride {stride}; {:.1} tokens/s",
        report.perplexity,
        report.mean_nll,
        report.scored_tokens,
        report.windows,
        report.tokens_per_second()
    );
    Ok(())
}
