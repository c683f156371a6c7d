//! The runtime linear layer every model uses. Formats are many, representations few:
//! each format's scheme lands in one [`LinearRepr`], and `forward` dispatches on it.

use std::fmt::Debug;

use burn::tensor::{DType, Tensor};

use crate::kernels::FragmentCache;
use crate::repr::{Fp8Weight, PackedIntWeight, W8A8Weight};

/// Forward pass of a representation registered from outside Ember.
pub trait LinearForward: Send + Sync + Debug {
    /// `x` is `[rows, in_features]`; returns `[rows, out_features]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;
}

/// The closed set of weight representations the kernels know, plus an escape hatch.
#[derive(Debug)]
pub enum LinearRepr {
    /// A float weight stored transposed, `[in_features, out_features]`, so forward is `x · W`;
    /// in the compute dtype, or in its checkpoint's f16/bf16 on the Flex device
    /// ([`crate::LoadContext::float_weight_dtype`]).
    Dense { weight_t: Tensor<2> },
    /// 4-bit weight-only (GPTQ, AWQ, compressed-tensors W4A16, torchao int4).
    Int4(PackedIntWeight),
    /// 8-bit weight-only (GPTQ 8-bit, compressed-tensors W8A16, torchao int8).
    Int8(PackedIntWeight),
    /// float8 e4m3 weights, activations optionally quantized to e4m3.
    Fp8(Fp8Weight),
    /// int8 weights and per-token int8 activations.
    W8A8(W8A8Weight),
    /// A representation provided by a registered extension method.
    Custom(Box<dyn LinearForward>),
}

impl LinearRepr {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Dense { .. } => "dense",
            Self::Int4(_) => "int4",
            Self::Int8(_) => "int8",
            Self::Fp8(_) => "fp8",
            Self::W8A8(_) => "w8a8-int8",
            Self::Custom(_) => "custom",
        }
    }
}

#[derive(Debug)]
pub struct QLinear {
    /// Module path in the checkpoint (`model.layers.0.self_attn.q_proj`), empty if built by hand.
    name: String,
    /// How the layer was loaded ("int4 g128 sym (gptq)"), for inspection.
    scheme: String,
    in_features: usize,
    out_features: usize,
    repr: LinearRepr,
    bias: Option<Tensor<1>>,
    /// The tensor-core copy of an `Int4` / `Int8` / weight-only `Fp8` weight, made when that
    /// kernel is first selected.
    fragments: FragmentCache,
}

impl QLinear {
    pub fn new(in_features: usize, out_features: usize, repr: LinearRepr, bias: Option<Tensor<1>>) -> Self {
        Self { name: String::new(), scheme: repr.name().to_string(), in_features, out_features, repr, bias, fragments: FragmentCache::new() }
    }

    /// A float linear from a weight in nn.Linear layout `[out, in]`.
    pub fn dense(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let [out_features, in_features] = weight.dims();
        Self::new(in_features, out_features, LinearRepr::Dense { weight_t: weight.transpose() }, bias)
    }

    pub fn with_bias(self, bias: Option<Tensor<1>>) -> Self {
        Self { bias, ..self }
    }

    /// Records the module path and the scheme that loaded this layer.
    pub fn described(self, name: impl Into<String>, scheme: impl Into<String>) -> Self {
        Self { name: name.into(), scheme: scheme.into(), ..self }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    pub fn repr(&self) -> &LinearRepr {
        &self.repr
    }

    /// The weight this layer multiplies by, as f32 `[out, in]` (nn.Linear layout):
    /// what a format's unpacking produced, for comparison with the tool's dequantizer.
    /// `None` for custom representations.
    pub fn dequantized_weight(&self) -> Option<Tensor<2>> {
        Some(match &self.repr {
            LinearRepr::Dense { weight_t } => weight_t.clone().transpose().cast(DType::F32),
            LinearRepr::Int4(w) | LinearRepr::Int8(w) => w.dequantize().transpose(),
            LinearRepr::Fp8(w) => w.dequantize(),
            LinearRepr::W8A8(w) => w.dequantize(),
            LinearRepr::Custom(_) => return None,
        })
    }

    /// Applies the layer over the last dimension of `x` (any rank ≥ 1).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let flat: Tensor<2> = x.reshape([rows, self.in_features]);
        let mut y = match &self.repr {
            LinearRepr::Dense { weight_t } => crate::kernels::dense_forward(weight_t, flat),
            LinearRepr::Int4(w) | LinearRepr::Int8(w) => crate::kernels::int_weight_forward(w, &self.fragments, flat),
            LinearRepr::Fp8(w) => crate::kernels::fp8_forward(w, &self.fragments, flat),
            LinearRepr::W8A8(w) => crate::kernels::w8a8_forward(w, flat),
            LinearRepr::Custom(op) => op.forward(flat),
        };
        if let Some(bias) = &self.bias {
            y = y + bias.clone().unsqueeze_dim(0);
        }
        let mut out_dims = dims;
        out_dims[D - 1] = self.out_features;
        y.reshape(out_dims)
    }
}
