//! Writing quantized layers in the layout llm-compressor saves (and vLLM loads), the
//! inverse of the reader in the parent module:
//! - W4A16 / W8A16 → `pack-quantized`: `weight_packed` I32 `[N, K·b/32]` (unsigned
//!   values = signed + 2^(b-1), lowest bits first along K), `weight_scale` `[N, G]` in
//!   the weight's dtype, `weight_shape` I64 `[2]`, and for asymmetric weights
//!   `weight_zero_point` I32 `[⌈N·b/32⌉, G]` packed along N with the same offset;
//! - W8A8 → `int-quantized`: `weight` I8 `[N, K]`, `weight_scale` `[N, 1]`, activations
//!   dynamic per token;
//! - FP8 → `float-quantized`: `weight` F8_E4M3 `[N, K]`, `weight_scale` `[N, 1]` (or
//!   `[1]`, or blocks), activations dynamic per token (per 1×bk group for blocks).

use std::borrow::Cow;

use half::{bf16, f16};
use serde_json::{json, Value};

use crate::dtype::StoredDtype;
use crate::error::QuantError;
use crate::host::HostTensor;
use crate::online::rtn::{Fp8Quantized, IntQuantized};
use crate::online::{Fp8Tile, Quantized, Recipe};
use crate::repr::ActivationQuant;

/// The compressed-tensors layout version these files follow.
const LAYOUT_VERSION: &str = "0.19.0";

/// The `quantization_config` for a model whose targeted linears all use `recipe`;
/// `ignore` lists the modules left in float (lm_head, MoE routers).
pub fn quantization_config(recipe: &Recipe, ignore: Vec<String>) -> Result<Value, QuantError> {
    let invalid = |reason: &str| QuantError::InvalidConfig { method: "compressed-tensors export".into(), reason: reason.into() };
    let (format, weights, activations) = match recipe {
        Recipe::Int { bits, group_size, symmetric } => {
            let strategy = if group_size.is_some() { "group" } else { "channel" };
            ("pack-quantized", weight_args(*bits, "int", strategy, *group_size, None, *symmetric), Value::Null)
        }
        Recipe::W8A8 { activations } => {
            ("int-quantized", weight_args(8, "int", "channel", None, None, true), activation_args("int", activations).ok_or_else(|| invalid("W8A8 activations must be dynamic per token"))?)
        }
        Recipe::Fp8 { tile, activations } => {
            let (strategy, block) = match tile {
                Fp8Tile::Tensor => ("tensor", None),
                Fp8Tile::Channel => ("channel", None),
                Fp8Tile::Block(block) => ("block", Some(*block)),
            };
            let acts = match activations {
                ActivationQuant::None => Value::Null,
                other => activation_args("float", other).ok_or_else(|| invalid("FP8 activations must be dynamic (per token, tensor or group) or absent"))?,
            };
            ("float-quantized", weight_args(8, "float", strategy, None, block, true), acts)
        }
    };
    Ok(json!({
        "config_groups": {"group_0": {
            "format": format,
            "input_activations": activations,
            "output_activations": null,
            "targets": ["Linear"],
            "weights": weights,
        }},
        "format": format,
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": LAYOUT_VERSION,
    }))
}

fn weight_args(bits: u32, kind: &str, strategy: &str, group_size: Option<usize>, block: Option<[usize; 2]>, symmetric: bool) -> Value {
    json!({
        "actorder": null,
        "block_structure": block,
        "dynamic": false,
        "group_size": group_size,
        "num_bits": bits,
        "observer": "minmax",
        "observer_kwargs": {},
        "scale_dtype": null,
        "strategy": strategy,
        "symmetric": symmetric,
        "type": kind,
        "zp_dtype": null,
    })
}

fn activation_args(kind: &str, activations: &ActivationQuant) -> Option<Value> {
    let (strategy, group_size) = match activations {
        ActivationQuant::DynamicPerToken => ("token", None),
        ActivationQuant::DynamicPerTensor => ("tensor", None),
        ActivationQuant::DynamicPerGroup(g) => ("group", Some(*g)),
        ActivationQuant::None | ActivationQuant::Static(_) => return None,
    };
    Some(json!({
        "actorder": null,
        "block_structure": null,
        "dynamic": true,
        "group_size": group_size,
        "num_bits": 8,
        "observer": null,
        "observer_kwargs": {},
        "scale_dtype": null,
        "strategy": strategy,
        "symmetric": true,
        "type": kind,
        "zp_dtype": null,
    }))
}

/// The tensors one quantized linear `prefix` is saved as.
pub fn layer_tensors(prefix: &str, recipe: &Recipe, quantized: &Quantized) -> Vec<HostTensor<'static>> {
    let name = |leaf: &str| format!("{prefix}.{leaf}");
    match (recipe, quantized) {
        (Recipe::W8A8 { .. }, Quantized::Int(q)) => vec![
            HostTensor::new(name("weight"), StoredDtype::I8, vec![q.out_features, q.in_features], Cow::Owned(q.values.iter().map(|&v| v as u8).collect())),
            scale_tensor(name("weight_scale"), q.scale_dtype, vec![q.out_features, 1], &q.scales),
        ],
        (_, Quantized::Int(q)) => packed_int_tensors(&name, q),
        (_, Quantized::Fp8(q)) => fp8_tensors(&name, recipe, q),
    }
}

fn packed_int_tensors(name: &dyn Fn(&str) -> String, q: &IntQuantized) -> Vec<HostTensor<'static>> {
    let (n, k, groups, bits) = (q.out_features, q.in_features, q.groups(), q.bits as usize);
    let offset = 1i32 << (bits - 1);
    let unsigned = |v: i8| (v as i32 + offset) as u32;
    let per = 32 / bits;
    let mut packed = vec![0u32; n * k / per];
    for (at, &v) in q.values.iter().enumerate() {
        let (row, col) = (at / k, at % k);
        packed[row * (k / per) + col / per] |= unsigned(v) << (bits * (col % per));
    }
    let shape_bytes = [n as i64, k as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut tensors = vec![
        HostTensor::new(name("weight_packed"), StoredDtype::I32, vec![n, k / per], Cow::Owned(words_le(&packed))),
        scale_tensor(name("weight_scale"), q.scale_dtype, vec![n, groups], &q.scales),
        HostTensor::new(name("weight_shape"), StoredDtype::I64, vec![2], Cow::Owned(shape_bytes)),
    ];
    if let Some(zeros) = &q.zero_points {
        // `[N, G]` zero points, packed along N: word row = n / per, column = group.
        let rows = (n * bits).div_ceil(32);
        let mut packed = vec![0u32; rows * groups];
        for (at, &z) in zeros.iter().enumerate() {
            let (row, group) = (at / groups, at % groups);
            packed[(row / per) * groups + group] |= unsigned(z) << (bits * (row % per));
        }
        tensors.push(HostTensor::new(name("weight_zero_point"), StoredDtype::I32, vec![rows, groups], Cow::Owned(words_le(&packed))));
    }
    tensors
}

fn fp8_tensors(name: &dyn Fn(&str) -> String, recipe: &Recipe, q: &Fp8Quantized) -> Vec<HostTensor<'static>> {
    let scale_shape = match recipe {
        Recipe::Fp8 { tile: Fp8Tile::Tensor, .. } => vec![1],
        _ => q.scale_shape.to_vec(),
    };
    vec![
        HostTensor::new(name("weight"), StoredDtype::F8E4M3, vec![q.out_features, q.in_features], Cow::Owned(q.codes.clone())),
        scale_tensor(name("weight_scale"), q.scale_dtype, scale_shape, &q.scales),
    ]
}

fn words_le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Scales in the dtype they were computed in (exact: they were rounded to it).
fn scale_tensor(name: String, dtype: StoredDtype, shape: Vec<usize>, values: &[f32]) -> HostTensor<'static> {
    let bytes = match dtype {
        StoredDtype::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        StoredDtype::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    };
    let dtype = if dtype.is_float() { dtype } else { StoredDtype::F32 };
    HostTensor::new(name, dtype, shape, Cow::Owned(bytes))
}
