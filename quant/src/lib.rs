//! Quantized linear layers for Burn: the quant-method registry, checkpoint formats,
//! repacking and kernels. A Burn user can depend on this crate alone to put quantized
//! linears in their own model.

pub mod dtype;
pub mod error;
pub mod host;
pub mod linear;
pub mod method;
pub mod registry;
pub mod source;
pub mod unquantized;

pub use dtype::{ComputeDtype, DtypeRule, StoredDtype};
pub use error::{CheckpointError, LoadError, QuantError};
pub use host::HostTensor;
pub use linear::{LinearForward, LinearRepr, QLinear};
pub use method::{LayerInfo, LayerKind, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
pub use registry::QuantRegistry;
pub use source::{TensorMeta, TensorSource, WeightSpec};
pub use unquantized::{DenseScheme, Unquantized, UnquantizedFactory};

/// Loads one linear layer: asks the method for its scheme, reads the scheme's tensors
/// from `source`, and finishes them on the device.
pub fn load_linear(
    method: &dyn QuantMethod,
    layer: &LayerInfo,
    source: &dyn TensorSource,
    ctx: &LoadContext,
) -> Result<QLinear, LoadError> {
    let scheme = method.linear(layer)?;
    let tensors = scheme
        .weights()
        .iter()
        .map(|spec| source.load(spec))
        .collect::<Result<Vec<_>, _>>()?;
    scheme.finish(tensors, ctx)
}
