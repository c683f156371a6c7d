//! Quantizing a float checkpoint while it loads, then syncing new float weights into the
//! quantized model (what an RL trainer does after each update).
//!
//! ```sh
//! cargo run --release --example online_quant -- [MODEL_DIR] [NEW_WEIGHTS_DIR]
//! ```
//!
//! Defaults: the embedded tiny Llama, reloaded with its own weights.

use ember::engine::{Engine, EngineConfig, Prompt, SamplingParams};
use ember::quant::{ComputeDtype, OnlineSettings};
use ember::{load_model, LoadOptions};

fn complete(engine: &mut Engine, prompt: &str) -> anyhow::Result<String> {
    let params = SamplingParams { max_tokens: 16, ..SamplingParams::greedy() };
    let out = engine.generate(vec![(Prompt::from(prompt), params)], false)?;
    let text = format!("{prompt}{}", out[0].completions[0].text);
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
    let loaded = load_model(&dir, &options)?;
    for layer in loaded.model.linears().iter().take(3) {
        println!("{:<36} {}", layer.name(), layer.scheme());
    }
    let mut engine = Engine::new(loaded, &EngineConfig::default())?;
    println!("before sync: {}", complete(&mut engine, "The government said")?);

    // Between steps the engine lends its model out; the KV pool stays allocated.
    engine.loaded_mut().reload_weights(&new_weights, true)?;
    println!("after sync:  {}", complete(&mut engine, "The government said")?);
    Ok(())
}
