//! Ember's quantized linears inside your own Burn model: layer 0's MLP of a GPTQ
//! checkpoint loaded as three `QLinear`s that drive a SwiGLU block, checked against the
//! same block over the dequantized weights.
//!
//! ```sh
//! cargo run --release --example burn_qlinear -- [MODEL_DIR] [--device wgpu]
//! ```
//!
//! Default: the tiny GPTQ Llama in `fixtures/` (4-bit, group 128).

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor, TensorData};
use ember::checkpoint::SafetensorsCheckpoint;
use ember::parse_device;
use ember::quant::{load_linear, ComputeDtype, LayerInfo, LayerKind, LoadContext, QLinear, QuantRegistry};

/// A feed-forward block as a Burn user would write it, with quantized projections.
struct SwiGlu {
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

impl SwiGlu {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.down.forward(silu(self.gate.forward(x.clone())) * self.up.forward(x))
    }

    /// The same block as dense matmuls of the dequantized weights (`[out, in]`).
    fn forward_dense(&self, x: Tensor<2>) -> Tensor<2> {
        let dense = |layer: &QLinear, x: Tensor<2>| x.matmul(layer.dequantized_weight().expect("built-in repr").transpose());
        dense(&self.down, silu(dense(&self.gate, x.clone())) * dense(&self.up, x))
    }
}

fn main() -> anyhow::Result<()> {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama-gptq-4bit-g128");
    let mut device_name = "flex".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => device_name = args.next().context("--device needs a value")?,
            path => dir = PathBuf::from(path),
        }
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let dim = |key: &str| config[key].as_u64().map(|v| v as usize).with_context(|| format!("config.json has no {key}"));
    let (hidden, intermediate) = (dim("hidden_size")?, dim("intermediate_size")?);

    // The method named by the checkpoint's quantization_config (gptq, awq, ...).
    let method = QuantRegistry::with_builtins().resolve(&config, None)?;
    let checkpoint = SafetensorsCheckpoint::open(&dir)?;
    let device = parse_device(&device_name)?;
    let ctx = LoadContext::new(device.clone(), ComputeDtype::F32);
    let linear = |name: &str, in_features: usize, out_features: usize| {
        let layer = LayerInfo { prefix: format!("model.layers.0.mlp.{name}"), in_features, out_features, bias: false, kind: LayerKind::Linear };
        load_linear(method.as_ref(), &layer, &checkpoint, &ctx)
    };
    let mlp = SwiGlu {
        gate: linear("gate_proj", hidden, intermediate)?,
        up: linear("up_proj", hidden, intermediate)?,
        down: linear("down_proj", intermediate, hidden)?,
    };
    for layer in [&mlp.gate, &mlp.up, &mlp.down] {
        println!("{:<28} {}", layer.name(), layer.scheme());
    }

    let rows = 5;
    let values: Vec<f32> = (0..rows * hidden).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let x = Tensor::<2>::from_data(TensorData::new(values, [rows, hidden]), (&device, DType::F32));
    let quantized = mlp.forward(x.clone());
    let dense = mlp.forward_dense(x);
    let diff: f32 = (quantized.clone() - dense).abs().max().into_scalar();
    let scale: f32 = quantized.abs().max().into_scalar();
    println!("output [{rows}, {hidden}] on {device_name}: max |quantized - dense| = {diff:.2e} (output max {scale:.3})");
    Ok(())
}
