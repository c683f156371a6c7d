//! AWQ, GEMM version (`quant_method: awq`, `version: gemm`), as AutoAWQ and GPTQModel
//! write it.
//!
//! Per quantized linear with K inputs, N outputs, group size g (4-bit only):
//! - `qweight` I32 `[K, N/8]`: packed along **N**; field i (bits `4i..4i+4`) of packed
//!   column c holds output column `8c + ORDER[i]`, `ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`;
//! - `qzeros` I32 `[K/g, N/8]`: the same interleaved packing, true zero points;
//! - `scales` `[K/g, N]` in the model dtype.
//!
//! `W[n, k] = scales[k / g, n] · (q[k, n] − zero[k / g, n])`. At load the interleave is
//! undone and the values repacked along K (the `Int4` layout), as Burn ops on the device.
//! Modules whose name contains an entry of `modules_to_not_convert` stay float, as do the
//! MoE router and lm_head.

use std::sync::Arc;

use burn::tensor::{Int, Tensor};
use serde_json::Value;

use super::rules::{check_packable, group_size_for, skipped_by_substring, ConfigFields};
use crate::dtype::{DtypeRule, StoredDtype};
use crate::error::{LoadError, QuantError};
use crate::linear::{LinearRepr, QLinear};
use crate::method::{LayerInfo, LayerKind, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
use crate::packing::{int_tensor, pack, unpack};
use crate::repr::PackedIntWeight;
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;
use crate::unquantized::DenseScheme;

/// Position within a packed word → output column offset.
const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

#[derive(Debug, Clone, Copy, Default)]
pub struct AwqFactory;

impl QuantMethodFactory for AwqFactory {
    fn name(&self) -> &str {
        "awq"
    }

    fn create(&self, config: &Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        Ok(Arc::new(Awq::from_config(config)?))
    }
}

#[derive(Debug, Clone)]
pub struct Awq {
    group_size: Option<i64>,
    zero_point: bool,
    modules_to_not_convert: Vec<String>,
}

impl Awq {
    pub fn from_config(config: &Value) -> Result<Self, QuantError> {
        let f = ConfigFields::new("awq", config);
        match f.int(&["bits", "w_bit"])? {
            Some(4) => {}
            Some(other) => return Err(f.invalid(format!("{other}-bit AWQ is not supported (supported: 4)"))),
            None => return Err(f.invalid("missing `bits`")),
        }
        let version = f.str(&["version", "format"])?.unwrap_or("gemm").to_ascii_lowercase();
        if version != "gemm" {
            return Err(f.invalid(format!("AWQ version `{version}` is not supported (supported: gemm)")));
        }
        Ok(Self {
            group_size: f.int(&["group_size", "q_group_size"])?,
            zero_point: f.bool(&["zero_point"])?.unwrap_or(true),
            modules_to_not_convert: f.strings(&["modules_to_not_convert"])?,
        })
    }
}

impl QuantMethod for Awq {
    fn name(&self) -> &str {
        "awq"
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        let float = matches!(layer.kind, LayerKind::Router | LayerKind::LmHead)
            || skipped_by_substring(&self.modules_to_not_convert, &layer.prefix);
        if float {
            return Ok(Box::new(DenseScheme::new(layer)));
        }
        let group_size = group_size_for(layer, self.group_size)?;
        check_packable(layer, 4, layer.out_features, "out_features")?;
        check_packable(layer, 4, layer.in_features, "in_features")?;
        Ok(Box::new(AwqScheme { layer: layer.clone(), group_size, zero_point: self.zero_point }))
    }
}

struct AwqScheme {
    layer: LayerInfo,
    group_size: usize,
    zero_point: bool,
}

impl LinearScheme for AwqScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        let (k, n, g) = (self.layer.in_features, self.layer.out_features, self.layer.in_features / self.group_size);
        let name = |leaf: &str| format!("{}.{leaf}", self.layer.prefix);
        let int32 = DtypeRule::Exactly(StoredDtype::I32);
        let mut specs = vec![WeightSpec::new(name("qweight"), [k, n / 8], int32), WeightSpec::float(name("scales"), [g, n])];
        if self.zero_point {
            specs.push(WeightSpec::new(name("qzeros"), [g, n / 8], int32));
        }
        specs
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let device = &ctx.device;
        let (k, n) = (self.layer.in_features, self.layer.out_features);
        let order = deinterleave_index(n, device);
        let q = unpack(tensors.take("qweight")?.to_i32_tensor::<2>(device)?, 4, 1).select(1, order.clone());
        let zeros = match self.zero_point {
            true => Some(unpack(tensors.take("qzeros")?.to_i32_tensor::<2>(device)?, 4, 1).select(1, order)),
            false => None,
        };
        let scales = tensors.take("scales")?.to_f32_tensor::<2>(device)?;
        let weight = PackedIntWeight::new(4, pack(q, 4, 0), scales, zeros.into(), self.group_size);
        Ok(QLinear::new(k, n, LinearRepr::Int4(weight), None))
    }

    fn describe(&self) -> String {
        format!("int4 g{}{} (awq)", self.group_size, if self.zero_point { " zp" } else { " sym" })
    }
}

/// Column `8c + j` sits at unpacked position `8c + i` where `AWQ_ORDER[i] = j`.
fn deinterleave_index(n: usize, device: &burn::tensor::Device) -> Tensor<1, Int> {
    let mut position_of = [0usize; 8];
    for (i, &column) in AWQ_ORDER.iter().enumerate() {
        position_of[column] = i;
    }
    let index = (0..n).map(|col| ((col / 8) * 8 + position_of[col % 8]) as i32).collect();
    int_tensor(index, [n], device)
}
