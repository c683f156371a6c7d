//! `ember inspect`: what a checkpoint is, without building the model.

use std::collections::BTreeMap;

use anyhow::Result;
use clap::Args;
use ember::checkpoint::SafetensorsCheckpoint;
use ember::models::{plan_linears, ModelConfig, RopeScaling, Weights};
use ember::quant::{resolve_scheme, ComputeDtype, LoadContext, QuantRegistry, TensorSource};
use serde_json::Value;

#[derive(Args)]
pub struct InspectArgs {
    /// Model directory or Hugging Face repo id. Default: the embedded tiny Llama.
    #[arg(long)]
    pub model: Option<String>,
}

/// Quantization config fields worth showing, when present.
const QUANT_FIELDS: [&str; 9] =
    ["bits", "group_size", "desc_act", "sym", "zero_point", "checkpoint_format", "format", "weight_block_size", "activation_scheme"];

pub fn execute(args: InspectArgs) -> Result<()> {
    let dir = super::model_dir(args.model.as_deref())?;
    let c = ModelConfig::from_file(&dir.join("config.json"))?;
    println!("model          {}", dir.display());
    println!("architecture   {}", c.architecture);
    println!(
        "dimensions     {} layers, hidden {}, intermediate {}, {} heads ({} kv, head_dim {}), vocab {}",
        c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
    );
    if let Some(moe) = &c.moe {
        println!("experts        {} per layer, top-{}", moe.num_experts, moe.experts_per_token);
    }
    println!("rope           theta {}, scaling {}", c.rope_theta, describe_rope(&c.rope_scaling));
    println!("context        {} positions{}", c.max_position_embeddings, c.sliding_window.map(|w| format!(", sliding window {w}")).unwrap_or_default());
    println!("stored dtype   {}", c.stored_dtype.as_deref().unwrap_or("unspecified"));
    println!("quantization   {}", describe_quantization(&c.raw));
    println!("parameters     {:.1} M (float-equivalent, from config)", c.parameter_count() as f64 / 1e6);

    let checkpoint = SafetensorsCheckpoint::open(&dir)?;
    print_layer_schemes(&c, &checkpoint)?;
    let mut by_dtype: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for name in checkpoint.tensor_names() {
        if let Some(meta) = checkpoint.meta(&name) {
            let entry = by_dtype.entry(meta.dtype.to_string()).or_default();
            entry.0 += 1;
            entry.1 += (meta.shape.iter().product::<usize>() * meta.dtype.size_in_bytes()) as u64;
        }
    }
    let dtypes: Vec<String> =
        by_dtype.iter().map(|(d, (n, bytes))| format!("{d} x{n} ({})", human_bytes(*bytes))).collect();
    println!("tensors        {} in {} ({})", checkpoint.tensor_names().len(), checkpoint.describe(), dtypes.join(", "));
    println!("size           {}", human_bytes(checkpoint.total_bytes()));
    Ok(())
}

/// How each linear layer would load: layer 0's in full, and a count per scheme.
fn print_layer_schemes(c: &ModelConfig, checkpoint: &SafetensorsCheckpoint) -> Result<()> {
    let registry = QuantRegistry::with_builtins();
    let Ok(method) = registry.resolve(&c.raw, None) else {
        return Ok(());
    };
    let ctx = LoadContext::new(burn::tensor::Device::flex(), ComputeDtype::F32);
    let weights = Weights::new(checkpoint, method.as_ref(), &ctx);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for layer in plan_linears(&weights, c)? {
        let scheme = resolve_scheme(method.as_ref(), &layer, checkpoint).map(|s| s.describe()).unwrap_or_else(|e| format!("error: {e}"));
        if layer.prefix.starts_with("model.layers.0.") || !layer.prefix.starts_with("model.layers.") {
            lines.push(format!("{:<48} {scheme}", layer.prefix));
        }
        *counts.entry(scheme).or_default() += 1;
    }
    for (i, line) in lines.iter().enumerate() {
        println!("{}{line}", if i == 0 { "linear layers  " } else { "               " });
    }
    let summary: Vec<String> = counts.iter().map(|(scheme, n)| format!("{scheme} x{n}")).collect();
    println!("schemes        {}", summary.join(", "));
    Ok(())
}

fn describe_rope(scaling: &RopeScaling) -> String {
    match scaling {
        RopeScaling::None => "none".into(),
        RopeScaling::Linear { factor } => format!("linear x{factor}"),
        RopeScaling::Llama3 { factor, original_max_position_embeddings, .. } => {
            format!("llama3 x{factor} from {original_max_position_embeddings}")
        }
    }
}

fn describe_quantization(raw: &Value) -> String {
    let section = ["quantization_config", "compression_config"].iter().find_map(|k| raw.get(*k)).filter(|v| !v.is_null());
    let Some(section) = section else {
        return "none (float checkpoint)".into();
    };
    let method = section.get("quant_method").and_then(Value::as_str).unwrap_or("compressed-tensors");
    let fields: Vec<String> = QUANT_FIELDS
        .iter()
        .filter_map(|f| section.get(*f).filter(|v| !v.is_null()).map(|v| format!("{f}={v}")))
        .collect();
    let registry = QuantRegistry::with_builtins();
    let support = match registry.get(method) {
        Ok(_) => String::new(),
        Err(e) => format!(" — {e}"),
    };
    format!("{method} {}{support}", fields.join(" "))
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
