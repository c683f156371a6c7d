//! Quantized linear layers for Burn: the quant-method registry, checkpoint formats,
//! repacking and kernels. A Burn user can depend on this crate alone to put quantized
//! linears in their own model.

pub mod dtype;
pub mod error;
pub mod formats;
pub mod host;
pub mod kernels;
pub mod linear;
pub mod method;
pub mod online;
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
pub use online::{OnlineMethod, OnlineSettings, Recipe};
pub use registry::QuantRegistry;
pub use source::{TensorMeta, TensorSource, WeightSpec};
pub use tensors::LayerTensors;
pub use unquantized::{DenseScheme, Unquantized, UnquantizedFactory};

/// The scheme that loads `layer`: the method's choice, unless the checkpoint stores this
/// layer as a plain float `weight` and lacks the method's tensors. Then the method may
/// quantize it at load ([`QuantMethod::online`]); otherwise it loads as float, since
/// exporters such as LLMC leave mixed-precision layers in float without listing them.
pub fn resolve_scheme(method: &dyn QuantMethod, layer: &LayerInfo, source: &dyn TensorSource) -> Result<Box<dyn LinearScheme>, QuantError> {
    let scheme = method.linear(layer)?;
    let Some(primary) = scheme.weights().into_iter().next() else {
        return Ok(scheme);
    };
    let stored_float = source.meta(&format!("{}.weight", layer.prefix)).is_some_and(|m| m.dtype.is_float());
    let primary_present = source.meta(&primary.name).is_some_and(|m| primary.dtype.accepts(m.dtype));
    if stored_float && !primary_present {
        if let Some(recipe) = method.online(layer) {
            tracing::debug!(layer = %layer.prefix, "stored in float; quantizing it at load");
            return Ok(Box::new(online::OnlineScheme::new(layer, recipe)?));
        }
        tracing::debug!(layer = %layer.prefix, "stored in float; loading it unquantized");
        return Ok(Box::new(DenseScheme::new(layer)));
    }
    Ok(scheme)
}

/// Loads one linear layer: asks the method for its scheme, reads the scheme's tensors
/// (and the layer's bias) from `source`, and finishes them on the device.
pub fn load_linear(
    method: &dyn QuantMethod,
    layer: &LayerInfo,
    source: &dyn TensorSource,
    ctx: &LoadContext,
) -> Result<QLinear, LoadError> {
    let scheme = resolve_scheme(method, layer, source)?;
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
