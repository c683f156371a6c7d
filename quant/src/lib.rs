//! Quantized linear layers for Burn: the quant-method registry, checkpoint formats,
//! repacking and kernels. A Burn user can depend on this crate alone to put quantized
//! linears in their own model.

pub mod dtype;
pub mod error;
pub mod formats;
pub mod host;
pub mod linear;
pub mod method;
pub mod packing;
pub mod registry;
pub mod repr;
pub mod source;
pub mod tensors;
pub mod unquantized;

pub use dtype::{ComputeDtype, DtypeRule, StoredDtype};
pub use error::{CheckpointError, LoadError, QuantError};
pub use host::HostTensor;
pub use linear::{LinearForward, LinearRepr, QLinear};
pub use method::{LayerInfo, LayerKind, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
pub use registry::QuantRegistry;
pub use source::{TensorMeta, TensorSource, WeightSpec};
pub use tensors::LayerTensors;
pub use unquantized::{DenseScheme, Unquantized, UnquantizedFactory};

/// Loads one linear layer: asks the method for its scheme, reads the scheme's tensors
/// (and the layer's bias) from `source`, and finishes them on the device.
pub fn load_linear(
    method: &dyn QuantMethod,
    layer: &LayerInfo,
    source: &dyn TensorSource,
    ctx: &LoadContext,
) -> Result<QLinear, LoadError> {
    let scheme = method.linear(layer)?;
    let description = scheme.describe();
    let mut tensors = Vec::new();
    for spec in scheme.weights() {
        if spec.optional && source.contains(&spec.name) == Some(false) {
            continue;
        }
        tensors.push(source.load(&spec)?);
    }
    let linear = scheme.finish(LayerTensors::new(layer.prefix.clone(), tensors), ctx)?;
    let bias = match layer.bias {
        true => {
            let spec = WeightSpec::float(format!("{}.bias", layer.prefix), [layer.out_features]);
            Some(source.load(&spec)?.to_float_tensor::<1>(&ctx.device, ctx.dtype)?)
        }
        false => None,
    };
    Ok(linear.with_bias(bias).described(layer.prefix.clone(), description))
}
