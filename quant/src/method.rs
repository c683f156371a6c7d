//! The two levels of quantization, after vLLM's split: a [`QuantMethod`] per checkpoint
//! (parsed from its config, answers per layer) and a [`LinearScheme`] per layer (names the
//! tensors it needs, then turns them into a [`QLinear`]). Schemes return data instead of
//! mutating a module, so a layer is either fully built or not built at all.

use std::fmt::Debug;
use std::sync::Arc;

use burn::tensor::Device;
use burn_dispatch::DispatchDevice;

use crate::dtype::{ComputeDtype, StoredDtype};
use crate::kernels::KernelPolicy;
use crate::error::{LoadError, QuantError};
use crate::linear::QLinear;
use crate::online::Recipe;
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;

/// What kind of linear a layer is; methods use it for rules such as "never quantize the
/// MoE router" or "lm_head stays float unless the config says otherwise".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A projection inside a decoder layer (attention or dense MLP).
    Linear,
    /// One expert's projection in a mixture-of-experts block.
    Expert { index: usize },
    /// The MoE router (`gate`).
    Router,
    /// The output projection to vocabulary logits.
    LmHead,
}

/// Everything a method needs to decide about one linear layer.
#[derive(Debug, Clone)]
pub struct LayerInfo {
    /// Full module path as in the checkpoint, e.g. `model.layers.0.self_attn.q_proj`.
    pub prefix: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub kind: LayerKind,
}

/// Where and in what dtype finished layers live, and run-time choices fixed at load.
#[derive(Debug, Clone)]
pub struct LoadContext {
    pub device: Device,
    pub dtype: ComputeDtype,
    /// Run FP8 weights with activations left in the compute dtype, as vLLM does on GPUs
    /// without FP8 tensor cores, instead of quantizing activations as the scheme says.
    pub fp8_weight_only: bool,
}

impl LoadContext {
    pub fn new(device: Device, dtype: ComputeDtype) -> Self {
        Self { device, dtype, fp8_weight_only: false }
    }

    /// The dtype a float weight stored as `stored` is kept in. On the Flex device computing
    /// in f32, f16 and bf16 weights stay as stored: half the memory, and half the bytes
    /// every product reads, converted to f32 exactly in the host kernel's registers
    /// (`kernels::host::half_gemm`). Elsewhere, and with the kernels off
    /// (`EMBER_KERNELS=reference`, whose float products stay plain f32 matmuls), the
    /// compute dtype.
    pub fn float_weight_dtype(&self, stored: StoredDtype) -> ComputeDtype {
        if crate::kernels::select::policy() == KernelPolicy::Reference {
            return self.dtype;
        }
        match (self.device.as_dispatch(), self.dtype, stored) {
            (DispatchDevice::Flex(_), ComputeDtype::F32, StoredDtype::F16) => ComputeDtype::F16,
            (DispatchDevice::Flex(_), ComputeDtype::F32, StoredDtype::BF16) => ComputeDtype::BF16,
            _ => self.dtype,
        }
    }
}

/// One checkpoint's quantization, answering per layer.
pub trait QuantMethod: Send + Sync + Debug {
    /// The registry name (`unquantized`, `gptq`, ...).
    fn name(&self) -> &str;

    /// The scheme that loads `layer`; a method that leaves a layer float returns the
    /// unquantized scheme for it.
    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError>;

    /// How to quantize `layer` at load when the checkpoint holds it as a float `weight`
    /// although the config quantizes it (a torchao `quant_type` over float weights).
    /// `None`, the default, loads such layers as float (LLMC's mixed precision).
    fn online(&self, _layer: &LayerInfo) -> Option<Recipe> {
        None
    }
}

/// Builds a [`QuantMethod`] from a checkpoint's quantization config.
pub trait QuantMethodFactory: Send + Sync {
    /// The name looked up in `quant_method` (or given on the command line).
    fn name(&self) -> &str;

    /// `config` is the `quantization_config` object (or `Null` when the method is chosen
    /// on the command line for a float checkpoint).
    fn create(&self, config: &serde_json::Value) -> Result<Arc<dyn QuantMethod>, QuantError>;
}

/// One layer's loading recipe: `create_weights` then `process_weights_after_loading`.
/// The layer's bias (`<prefix>.bias`, float) is loaded by the caller for every scheme.
pub trait LinearScheme: Send {
    /// The tensors this layer reads (optional ones may be absent from `finish`'s input).
    fn weights(&self) -> Vec<WeightSpec>;

    /// Turns the loaded tensors into the layer's runtime representation on the device.
    fn finish(self: Box<Self>, tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError>;

    /// A short description for `ember inspect` ("int4 g128 sym, gptq").
    fn describe(&self) -> String;
}
