//! `ember logits`: one forward pass, logits written as f32 `[seq, vocab]` — the parity
//! tool against PyTorch references.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember::checkpoint::SafetensorsFile;
use ember::engine::check_prompt;
use ember::quant::StoredDtype;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::ModelArgs;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (encoded with the model's special tokens, e.g. bos).
    #[arg(long, conflicts_with = "input_ids", required_unless_present = "input_ids")]
    pub prompt: Option<String>,
    /// A safetensors file holding an int64 (or int32) tensor `input_ids` of shape [seq].
    #[arg(long)]
    pub input_ids: Option<PathBuf>,
    /// Output safetensors file: `logits` f32 [seq, vocab] and `input_ids` i64 [seq].
    #[arg(long)]
    pub out: PathBuf,
}

pub fn execute(args: LogitsArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let ids: Vec<u32> = match (&args.prompt, &args.input_ids) {
        (Some(prompt), _) => loaded.tokenizer()?.encode(prompt, true)?,
        (None, Some(path)) => read_input_ids(path)?,
        (None, None) => bail!("pass --prompt or --input-ids"),
    };
    check_prompt(&loaded.model, &ids)?;
    let mut cache = loaded.model.new_cache();
    let logits = loaded.model.forward_ids(&ids, &mut cache);
    let [seq, vocab] = logits.dims();
    let values: Vec<f32> = logits.try_into_vec_as::<f32>().map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    let logit_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let id_bytes: Vec<u8> = ids.iter().flat_map(|&t| (t as i64).to_le_bytes()).collect();
    let tensors = [
        ("logits", TensorView::new(Dtype::F32, vec![seq, vocab], &logit_bytes)?),
        ("input_ids", TensorView::new(Dtype::I64, vec![seq], &id_bytes)?),
    ];
    safetensors::serialize_to_file(tensors, None::<HashMap<String, String>>, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote logits [{seq}, {vocab}] to {}", args.out.display());
    Ok(())
}

fn read_input_ids(path: &std::path::Path) -> Result<Vec<u32>> {
    let file = SafetensorsFile::open(path)?;
    let tensor = file.tensor("input_ids").with_context(|| format!("no tensor `input_ids` in {}", path.display()))??;
    if !matches!(tensor.dtype, StoredDtype::I64 | StoredDtype::I32) {
        bail!("`input_ids` in {} has dtype {}, expected I64 or I32", path.display(), tensor.dtype);
    }
    if !matches!(tensor.shape.as_slice(), [_] | [1, _]) {
        bail!("`input_ids` in {} has shape {:?}, expected [seq] or [1, seq]", path.display(), tensor.shape);
    }
    tensor
        .to_i64_vec()?
        .into_iter()
        .map(|v| u32::try_from(v).with_context(|| format!("input id {v} is negative or too large")))
        .collect()
}
