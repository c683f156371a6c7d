//! compressed-tensors (`quant_method: compressed-tensors`, or the older
//! `compression_config` key), as llm-compressor writes it.
//!
//! The config has `config_groups` (each with `targets`, `weights`, `input_activations`
//! and optionally its own `format`), a global `format`, and an `ignore` list of module
//! names or `re:` patterns. Per quantized linear `[N, K]`:
//! - `pack-quantized` (W4A16, W8A16): `weight_packed` I32 `[N, K·b/32]` packed along K,
//!   fields lowest bits first, each field = signed value + 2^(b-1); `weight_scale` `[N, G]`
//!   (`[N, 1]` per channel, `[1]` per tensor); `weight_shape` I64 `[2]`; asymmetric adds
//!   `weight_zero_point` I32 `[⌈N·b/32⌉, G]` packed along **N**, same offset;
//! - `int-quantized` / `naive-quantized`: `weight` I8 `[N, K]`, `weight_scale`; with int8
//!   dynamic per-token `input_activations` this is W8A8;
//! - `float-quantized`: `weight` F8_E4M3 `[N, K]`, `weight_scale` `[N, 1]`, `[1]` (plus
//!   `input_scale` `[1]` for static activations) or `[⌈N/bn⌉, ⌈K/bk⌉]` for
//!   `strategy: block`; activations dynamic per token, per group (FP8_BLOCK), or static.
//!
//! Every scale multiplies: `W = scale · (q − zero)`. Int weights also take `strategy:
//! block` (symmetric only), one scale per `[bn, bk]` block, which lands in the group
//! layout with `group_size = bk`.
//!
//! LLMC's first `vllm_pack` export wrote asymmetric weights as unsigned values plus
//! 2^(b-1) OR-ed into words, so large values overflow into the next field, and stored
//! zero points unpacked `[N, G]`. Those bits cannot be recovered; the zero points' shape
//! check refuses such checkpoints.

pub mod export;

use std::sync::Arc;

use serde_json::Value;

use super::rules::{unsupported, ConfigFields, ModulePattern};
use super::schemes::{scales_as_rows, ActivationPlan, Fp8Scheme, ScaleLayout, SignedIntScheme, TensorNames};
use crate::dtype::{DtypeRule, StoredDtype};
use crate::error::{LoadError, QuantError};
use crate::linear::{LinearRepr, QLinear};
use crate::method::{LayerInfo, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
use crate::packing::unpack;
use crate::repr::PackedIntWeight;
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;
use crate::unquantized::DenseScheme;

const METHOD: &str = "compressed-tensors";

#[derive(Debug, Clone, Copy, Default)]
pub struct CompressedTensorsFactory;

impl QuantMethodFactory for CompressedTensorsFactory {
    fn name(&self) -> &str {
        METHOD
    }

    fn create(&self, config: &Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        Ok(Arc::new(CompressedTensors::from_config(config)?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgType {
    Int,
    Float,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Tensor,
    Channel,
    Group,
    Block,
    Token,
}

/// One `weights` or `input_activations` entry.
#[derive(Debug, Clone)]
struct QuantArgs {
    num_bits: u32,
    kind: ArgType,
    symmetric: bool,
    strategy: Strategy,
    group_size: Option<usize>,
    block: Option<[usize; 2]>,
    dynamic: bool,
}

impl QuantArgs {
    fn parse(value: &Value) -> Result<Self, QuantError> {
        let f = ConfigFields::new(METHOD, value);
        let num_bits = f.int(&["num_bits"])?.unwrap_or(8);
        let kind = match f.str(&["type"])?.unwrap_or("int") {
            "int" => ArgType::Int,
            "float" => ArgType::Float,
            other => return Err(f.invalid(format!("quantization type `{other}` is not supported (supported: int, float)"))),
        };
        let strategy = match f.str(&["strategy"])?.unwrap_or("tensor") {
            "tensor" => Strategy::Tensor,
            "channel" => Strategy::Channel,
            "group" => Strategy::Group,
            "block" => Strategy::Block,
            "token" => Strategy::Token,
            other => return Err(f.invalid(format!("strategy `{other}` is not supported (supported: tensor, channel, group, block, token)"))),
        };
        let block = match value.get("block_structure") {
            Some(Value::Array(dims)) if dims.len() == 2 => {
                let dim = |v: &Value| v.as_u64().filter(|&d| d > 0).map(|d| d as usize).ok_or_else(|| f.invalid("`block_structure` must hold two positive integers"));
                Some([dim(&dims[0])?, dim(&dims[1])?])
            }
            Some(Value::Null) | None => None,
            Some(other) => return Err(f.invalid(format!("`block_structure` must be [rows, cols], got {other}"))),
        };
        let group_size = match f.int(&["group_size"])? {
            Some(g) if g > 0 => Some(g as usize),
            Some(-1) | None => None,
            Some(g) => return Err(f.invalid(format!("group_size {g} is not positive"))),
        };
        if !(1..=8).contains(&num_bits) {
            return Err(f.invalid(format!("num_bits {num_bits} is out of range")));
        }
        Ok(Self {
            num_bits: num_bits as u32,
            kind,
            symmetric: f.bool(&["symmetric"])?.unwrap_or(true),
            strategy,
            group_size,
            block,
            dynamic: matches!(value.get("dynamic"), Some(Value::Bool(true))),
        })
    }

    fn scale_layout(&self, layer: &LayerInfo) -> Result<ScaleLayout, QuantError> {
        Ok(match self.strategy {
            Strategy::Tensor => ScaleLayout::Tensor,
            Strategy::Channel => ScaleLayout::Channel,
            Strategy::Group => ScaleLayout::Group(self.group_size.ok_or_else(|| unsupported(layer, "group strategy without group_size"))?),
            Strategy::Block => ScaleLayout::Block(self.block.ok_or_else(|| unsupported(layer, "block strategy without block_structure"))?),
            Strategy::Token => return Err(unsupported(layer, "weights cannot use the token strategy")),
        })
    }

    /// The run-time activation quantization these input args ask for.
    fn activation_mode(&self, layer: &LayerInfo) -> Result<ActivationPlan, QuantError> {
        if !self.symmetric {
            return Err(unsupported(layer, "asymmetric activation quantization is not supported"));
        }
        match (self.dynamic, self.strategy) {
            (true, Strategy::Token) => Ok(ActivationPlan::DynamicPerToken),
            (true, Strategy::Tensor) => Ok(ActivationPlan::DynamicPerTensor),
            (true, Strategy::Group) => Ok(ActivationPlan::DynamicPerGroup(self.group_size.unwrap_or(128))),
            (false, Strategy::Tensor) => Ok(ActivationPlan::Static),
            (dynamic, strategy) => Err(unsupported(layer, format!("input activations with strategy {strategy:?} (dynamic: {dynamic}) are not supported"))),
        }
    }
}

#[derive(Debug, Clone)]
struct SchemeGroup {
    name: String,
    targets: Vec<Target>,
    weights: Option<QuantArgs>,
    input_activations: Option<QuantArgs>,
    format: Option<String>,
}

/// `Linear` (the module class every layer here is) or a module pattern.
#[derive(Debug, Clone)]
enum Target {
    AnyLinear,
    Module(ModulePattern),
}

#[derive(Debug, Clone)]
pub struct CompressedTensors {
    groups: Vec<SchemeGroup>,
    ignore: Vec<ModulePattern>,
    format: String,
}

impl CompressedTensors {
    pub fn from_config(config: &Value) -> Result<Self, QuantError> {
        let f = ConfigFields::new(METHOD, config);
        let format = f.str(&["format"])?.unwrap_or("pack-quantized").to_string();
        if let Some(sparsity) = config.get("sparsity_config").and_then(Value::as_object) {
            if !sparsity.is_empty() {
                return Err(f.invalid("sparse compressed-tensors checkpoints are not supported"));
            }
        }
        let ignore = f.strings(&["ignore"])?.iter().map(|p| ModulePattern::parse(p).map_err(|e| f.invalid(e))).collect::<Result<_, _>>()?;
        let groups_json = config.get("config_groups").and_then(Value::as_object).ok_or_else(|| f.invalid("missing `config_groups`"))?;
        let mut groups = Vec::new();
        for (name, group) in groups_json {
            let gf = ConfigFields::new(METHOD, group);
            let targets = gf
                .strings(&["targets"])?
                .iter()
                .map(|t| match t.as_str() {
                    "Linear" => Ok(Target::AnyLinear),
                    other => ModulePattern::parse(other).map(Target::Module).map_err(|e| f.invalid(e)),
                })
                .collect::<Result<_, _>>()?;
            let args = |key: &str| group.get(key).filter(|v| !v.is_null()).map(QuantArgs::parse).transpose();
            groups.push(SchemeGroup {
                name: name.clone(),
                targets,
                weights: args("weights")?,
                input_activations: args("input_activations")?,
                format: gf.str(&["format"])?.map(str::to_string),
            });
        }
        Ok(Self { groups, ignore, format })
    }

    fn group_for(&self, layer: &LayerInfo) -> Option<&SchemeGroup> {
        if self.ignore.iter().any(|p| p.matches(&layer.prefix)) {
            return None;
        }
        // A group naming the module (or a pattern matching it) wins over one targeting
        // every `Linear`, as compressed-tensors resolves overlapping targets.
        let names_module = |g: &&SchemeGroup| g.targets.iter().any(|t| matches!(t, Target::Module(p) if p.matches(&layer.prefix)));
        let any_linear = |g: &&SchemeGroup| g.targets.iter().any(|t| matches!(t, Target::AnyLinear));
        self.groups.iter().find(names_module).or_else(|| self.groups.iter().find(any_linear))
    }
}

impl QuantMethod for CompressedTensors {
    fn name(&self) -> &str {
        METHOD
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        let Some(group) = self.group_for(layer) else {
            return Ok(Box::new(DenseScheme::new(layer)));
        };
        let Some(weights) = &group.weights else {
            return Ok(Box::new(DenseScheme::new(layer)));
        };
        let format = group.format.as_deref().unwrap_or(&self.format);
        let scales = weights.scale_layout(layer)?;
        let activations = match &group.input_activations {
            Some(args) => args.activation_mode(layer)?,
            None => ActivationPlan::None,
        };
        let names = |zero_point| TensorNames { weight: "weight", scale: "weight_scale", zero_point, input_scale: Some("input_scale") };
        match (format, weights.kind) {
            ("pack-quantized", ArgType::Int) => {
                if activations != ActivationPlan::None {
                    return Err(unsupported(layer, format!("group `{}`: packed int weights with quantized activations are not supported", group.name)));
                }
                Ok(Box::new(PackQuantizedScheme::new(layer, weights, scales)?))
            }
            ("int-quantized" | "naive-quantized", ArgType::Int) => {
                if weights.num_bits != 8 && activations != ActivationPlan::None {
                    return Err(unsupported(layer, format!("{}-bit weights with quantized activations", weights.num_bits)));
                }
                let zero_point = if weights.symmetric { None } else { Some("weight_zero_point") };
                Ok(Box::new(SignedIntScheme::new(layer, names(zero_point), weights.num_bits, scales, activations, METHOD)?))
            }
            ("float-quantized" | "naive-quantized", ArgType::Float) => {
                if weights.num_bits != 8 {
                    return Err(unsupported(layer, format!("{}-bit float weights are not supported (supported: 8)", weights.num_bits)));
                }
                Ok(Box::new(Fp8Scheme::new(layer, names(None), scales, activations, METHOD)?))
            }
            (format, kind) => Err(unsupported(layer, format!("format `{format}` with {kind:?} weights is not supported"))),
        }
    }
}

/// `pack-quantized` int weights (W4A16, W8A16).
struct PackQuantizedScheme {
    layer: LayerInfo,
    bits: u32,
    scales: ScaleLayout,
    symmetric: bool,
}

impl PackQuantizedScheme {
    fn new(layer: &LayerInfo, weights: &QuantArgs, scales: ScaleLayout) -> Result<Self, QuantError> {
        let bits = weights.num_bits;
        if bits != 4 && bits != 8 {
            return Err(unsupported(layer, format!("{bits}-bit packed weights are not supported (supported: 4, 8)")));
        }
        super::rules::check_packable(layer, bits, layer.in_features, "in_features")?;
        match scales {
            ScaleLayout::Group(g) if !layer.in_features.is_multiple_of(g) => {
                return Err(unsupported(layer, format!("group size {g} does not divide in_features {}", layer.in_features)));
            }
            ScaleLayout::Block(_) if !weights.symmetric => {
                return Err(unsupported(layer, "asymmetric block-quantized int weights are not supported"));
            }
            _ => {}
        }
        Ok(Self { layer: layer.clone(), bits, scales, symmetric: weights.symmetric })
    }

    fn groups(&self) -> usize {
        self.layer.in_features.div_ceil(self.scales.group_size(self.layer.in_features))
    }
}

impl LinearScheme for PackQuantizedScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        let (n, k, b) = (self.layer.out_features, self.layer.in_features, self.bits as usize);
        let name = |leaf: &str| format!("{}.{leaf}", self.layer.prefix);
        let mut specs = vec![
            WeightSpec::new(name("weight_packed"), [n, k * b / 32], DtypeRule::Exactly(StoredDtype::I32)),
            WeightSpec::float(name("weight_scale"), self.scales.shape(n, k)),
            WeightSpec::new(name("weight_shape"), [2], DtypeRule::Exactly(StoredDtype::I64)).optional(),
        ];
        if !self.symmetric {
            specs.push(WeightSpec::new(name("weight_zero_point"), [(n * b).div_ceil(32), self.groups()], DtypeRule::Exactly(StoredDtype::I32)));
        }
        specs
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let device = &ctx.device;
        let (n, k) = (self.layer.out_features, self.layer.in_features);
        if let Some(shape) = tensors.take_optional("weight_shape") {
            let stored: Vec<i64> = shape.to_i64_vec()?;
            if stored != [n as i64, k as i64] {
                return Err(crate::error::CheckpointError::InvalidValues {
                    name: shape.name.clone(),
                    reason: format!("records shape {stored:?}, but the layer is [{n}, {k}]"),
                }
                .into());
            }
        }
        let scales = scales_as_rows(&tensors.take("weight_scale")?, self.scales, n, ctx)?;
        let zeros = match self.symmetric {
            true => None,
            false => {
                let packed = tensors.take("weight_zero_point")?.to_i32_tensor::<2>(device)?;
                Some(unpack(packed, self.bits, 0).narrow(0, 0, n).transpose())
            }
        };
        let group_size = self.scales.group_size(k);
        let packed = tensors.take("weight_packed")?.to_i32_tensor::<2>(device)?.transpose();
        let weight = PackedIntWeight::new(self.bits, packed, scales, zeros.into(), group_size);
        let repr = if self.bits == 4 { LinearRepr::Int4(weight) } else { LinearRepr::Int8(weight) };
        Ok(QLinear::new(k, n, repr, None))
    }

    fn describe(&self) -> String {
        let zero = if self.symmetric { "sym" } else { "asym" };
        format!("int{} {zero} {} (compressed-tensors pack-quantized)", self.bits, self.scales.describe())
    }
}
