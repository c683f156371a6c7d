//! Quantizing a float checkpoint while it loads, then syncing new float weights into the
//! quantized model (what an RL trainer does after each update).
//!
//! ```sh
//! cargo run --release --example online_quant -- [MODEL_DIR] [NEW_WEIGHTS_DIR]
//! ```
//!
//! Defaults: the embedded tiny Llama, reloaded with its own weights.

use ember::engine::{generate, GenerationRequest, SamplingParams};
use ember::quant::{ComputeDtype, OnlineSettings};
use ember::{load_model, LoadOptions, LoadedModel};

fn complete(loaded: &LoadedModel, prompt: &str) -> anyhow::Result<String> {
    let tokenizer = loaded.tokenizer()?;
    let request = GenerationRequest {
        prompt_ids: tokenizer.encode(prompt, true)?,
        sampling: SamplingParams::greedy(),
        max_tokens: 16,
        stop_token_ids: loaded.stop_token_ids(),
        stop_strings: vec![],
    };
    let mut text = prompt.to_string();
    generate(&loaded.model, tokenizer, &request, &mut |piece| text.push_str(piece))?;
    Ok(text)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = match args.next() {
        Some(dir) => dir.into(),
        None => ember::embedded::materialize()?,
    };
    let new_weights = args.next().map(std::path::PathBuf::from).unwrap_or_else(|| dir.clone());

    let mut options = LoadOptions::new(burn::tensor::Device::flex(), ComputeDtype::F32);
    options.quantization = Some("int4".into());
    options.online = OnlineSettings { group_size: Some(64), symmetric: Some(true) };
    options.progress = true;
    let mut loaded = load_model(&dir, &options)?;
    for layer in loaded.model.linears().iter().take(3) {
        println!("{:<36} {}", layer.name(), layer.scheme());
    }
    println!("before sync: {}", complete(&loaded, "The government said")?);

    loaded.reload_weights(&new_weights, true)?;
    println!("after sync:  {}", complete(&loaded, "The government said")?);
    Ok(())
}
