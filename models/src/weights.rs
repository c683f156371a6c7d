//! Scoped access to a checkpoint while building a model, after candle's `VarBuilder`:
//! `weights.pp("self_attn")` extends the tensor-name prefix, so struct fields mirror
//! checkpoint names and a missing tensor names itself in the error.

use burn::tensor::Tensor;
use ember_quant::{load_linear, LayerInfo, LayerKind, LoadContext, QLinear, QuantMethod, TensorSource, WeightSpec};

use crate::error::ModelError;

#[derive(Clone)]
pub struct Weights<'a> {
    source: &'a dyn TensorSource,
    method: &'a dyn QuantMethod,
    ctx: &'a LoadContext,
    prefix: String,
}

impl<'a> Weights<'a> {
    pub fn new(source: &'a dyn TensorSource, method: &'a dyn QuantMethod, ctx: &'a LoadContext) -> Self {
        Self { source, method, ctx, prefix: String::new() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn ctx(&self) -> &LoadContext {
        self.ctx
    }

    pub fn source(&self) -> &'a dyn TensorSource {
        self.source
    }

    pub fn method(&self) -> &'a dyn QuantMethod {
        self.method
    }

    fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// Extends the prefix: `model` → `model.layers.0`.
    pub fn pp(&self, leaf: impl std::fmt::Display) -> Self {
        Self { prefix: self.name(&leaf.to_string()), ..self.clone() }
    }

    /// Whether any stored tensor lives under `prefix.leaf`; `None` for dummy sources.
    pub fn has_module(&self, leaf: &str) -> Option<bool> {
        let module = format!("{}.", self.name(leaf));
        // `contains` answers `None` exactly for sources that have every tensor.
        self.source.contains(&module)?;
        Some(self.source.tensor_names().iter().any(|n| n.starts_with(&module)))
    }

    /// A float tensor (norm weights, embeddings) in the compute dtype.
    pub fn float<const D: usize>(&self, leaf: &str, shape: [usize; D]) -> Result<Tensor<D>, ModelError> {
        let spec = WeightSpec::float(self.name(leaf), shape);
        Ok(self.source.load(&spec)?.to_float_tensor(&self.ctx.device, self.ctx.dtype)?)
    }

    /// A float matrix that products or lookups read (embeddings): on the Flex device its
    /// f16 or bf16 values stay as stored ([`LoadContext::float_weight_dtype`]); callers cast
    /// what they read to the compute dtype.
    pub fn float_weight(&self, leaf: &str, shape: [usize; 2]) -> Result<Tensor<2>, ModelError> {
        let spec = WeightSpec::float(self.name(leaf), shape);
        let tensor = self.source.load(&spec)?;
        Ok(tensor.to_float_tensor(&self.ctx.device, self.ctx.float_weight_dtype(tensor.dtype))?)
    }

    /// The description of a linear layer under this prefix.
    pub fn layer(&self, leaf: &str, in_features: usize, out_features: usize, bias: bool, kind: LayerKind) -> LayerInfo {
        LayerInfo { prefix: self.name(leaf), in_features, out_features, bias, kind }
    }

    /// Builds a planned linear layer through the checkpoint's quantization method.
    pub fn linear(&self, layer: &LayerInfo) -> Result<QLinear, ModelError> {
        Ok(load_linear(self.method, layer, self.source, self.ctx)?)
    }
}
