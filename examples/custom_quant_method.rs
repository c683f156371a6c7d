//! Registering a quantization method from outside Ember.
//!
//! `rowwise-int8` quantizes every float linear at load: one scale per output row
//! (absmax / 127), weights rounded to int8, and a forward pass of its own through
//! `LinearRepr::Custom`. Registered under its name, it is selected like any built-in
//! method — here with `LoadOptions::quantization`, on the command line `--quantization`.
//!
//! ```sh
//! cargo run --release --example custom_quant_method -- [MODEL_DIR]
//! ```

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use ember::engine::{Engine, EngineConfig, Prompt, SamplingParams};
use ember::quant::{
    DenseScheme, LayerInfo, LayerKind, LayerTensors, LinearForward, LinearRepr, LinearScheme, LoadContext, LoadError,
    QLinear, QuantError, QuantMethod, QuantMethodFactory, QuantRegistry, WeightSpec,
};
use ember::{load_model, LoadOptions};

pub const NAME: &str = "rowwise-int8";

/// Creates the method; its config (if a checkpoint named it) needs no fields.
#[derive(Debug)]
pub struct RowwiseInt8Factory;

impl QuantMethodFactory for RowwiseInt8Factory {
    fn name(&self) -> &str {
        NAME
    }

    fn create(&self, _config: &serde_json::Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        Ok(Arc::new(RowwiseInt8))
    }
}

#[derive(Debug)]
pub struct RowwiseInt8;

impl QuantMethod for RowwiseInt8 {
    fn name(&self) -> &str {
        NAME
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        Ok(match layer.kind {
            // Keep the output head and the MoE router in float, as most methods do.
            LayerKind::LmHead | LayerKind::Router => Box::new(DenseScheme::new(layer)),
            _ => Box::new(RowwiseScheme { layer: layer.clone() }),
        })
    }
}

struct RowwiseScheme {
    layer: LayerInfo,
}

impl LinearScheme for RowwiseScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        vec![WeightSpec::float(format!("{}.weight", self.layer.prefix), [self.layer.out_features, self.layer.in_features])]
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let (n, k) = (self.layer.out_features, self.layer.in_features);
        let weight = tensors.take("weight")?.to_f32_vec()?;
        let mut values = Vec::with_capacity(n * k);
        let mut scales = Vec::with_capacity(n);
        for row in weight.chunks_exact(k) {
            let scale = row.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE) / 127.0;
            values.extend(row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0)));
            scales.push(scale);
        }
        let device = &ctx.device;
        let linear = RowwiseInt8Linear {
            values: Tensor::from_data(TensorData::new(values, [n, k]), device),
            scales: Tensor::from_data(TensorData::new(scales, [1, n]), device),
        };
        Ok(QLinear::new(k, n, LinearRepr::Custom(Box::new(linear)), None))
    }

    fn describe(&self) -> String {
        "int8 per-row RTN (rowwise-int8)".into()
    }
}

/// Int8 values (held as f32 for portability) and per-row scales.
#[derive(Debug)]
pub struct RowwiseInt8Linear {
    values: Tensor<2>,
    scales: Tensor<2>,
}

impl LinearForward for RowwiseInt8Linear {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        (x.cast(burn::tensor::DType::F32).matmul(self.values.clone().transpose()) * self.scales.clone()).cast(dtype)
    }
}

/// Ember's built-in methods plus this one.
pub fn registry() -> QuantRegistry {
    let mut registry = QuantRegistry::with_builtins();
    registry.register(Arc::new(RowwiseInt8Factory));
    registry
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => dir.into(),
        None => ember::embedded::materialize()?,
    };
    let mut options = LoadOptions::new(burn::tensor::Device::flex(), ember::quant::ComputeDtype::F32);
    options.registry = registry();
    options.quantization = Some(NAME.into());
    let loaded = load_model(&dir, &options)?;
    for layer in loaded.model.linears().iter().take(4) {
        println!("{:<40} {}", layer.name(), layer.scheme());
    }
    let mut engine = Engine::new(loaded, &EngineConfig::default())?;
    let params = SamplingParams { max_tokens: 16, ..SamplingParams::greedy() };
    let out = engine.generate(vec![(Prompt::from("The government said"), params)], false)?;
    print!("The government said{}", out[0].completions[0].text);
    println!();
    Ok(())
}
