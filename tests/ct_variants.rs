//! compressed-tensors variants without a tool-made fixture, written here from the float
//! Llama following the published layout: asymmetric int4 (zero points packed along N),
//! int4 with block scales, 8-bit packed per-channel, and FP8 with a static per-tensor
//! input scale.

use ember::quant::repr::e4m3_value;
use half::f16;
use safetensors::Dtype;
use serde_json::json;

use crate::common::synthetic::{assert_logits_near_float, f16_bytes, i32_bytes, quantized_llama, Written};
use crate::common::StoredTensor;

/// Packs unsigned `bits`-bit values along the last axis of `[rows, cols]`.
fn pack_rows(values: &[i32], rows: usize, cols: usize, bits: usize) -> Vec<i32> {
    let per = 32 / bits;
    let words = cols.div_ceil(per);
    let mut out = vec![0i32; rows * words];
    for r in 0..rows {
        for c in 0..cols {
            out[r * words + c / per] |= values[r * cols + c] << (bits * (c % per));
        }
    }
    out
}

/// Int weights `[n, k]`: `weight_packed`, `weight_scale [n, groups]`, `weight_shape`, and
/// for asymmetric schemes `weight_zero_point` packed along N.
pub fn write_packed(prefix: &str, w: &[f32], n: usize, k: usize, bits: usize, group: usize, sym: bool) -> Written {
    let groups = k / group;
    let offset = 1i32 << (bits - 1);
    let (q_min, q_max) = (-offset, offset - 1);
    let (mut scales, mut zeros) = (vec![0f32; n * groups], vec![0i32; n * groups]);
    for row in 0..n {
        for g in 0..groups {
            let block = &w[row * k + g * group..row * k + (g + 1) * group];
            let (lo, hi) = block.iter().fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let (scale, zero) = if sym {
                (lo.abs().max(hi) / offset as f32, 0)
            } else {
                let scale = (hi - lo) / (q_max - q_min) as f32;
                (scale, (q_min as f32 - lo / scale).round() as i32)
            };
            scales[row * groups + g] = f16::from_f32(scale.max(1e-6)).to_f32();
            zeros[row * groups + g] = zero.clamp(q_min, q_max);
        }
    }
    let mut fields = vec![0i32; n * k];
    let mut expected = vec![0f32; n * k];
    for row in 0..n {
        for col in 0..k {
            let at = row * groups + col / group;
            let q = ((w[row * k + col] / scales[at]).round() as i32 + zeros[at]).clamp(q_min, q_max);
            fields[row * k + col] = q + offset;
            expected[row * k + col] = scales[at] * (q - zeros[at]) as f32;
        }
    }
    let name = |leaf: &str| format!("{prefix}.{leaf}");
    let mut tensors = vec![
        StoredTensor { name: name("weight_packed"), dtype: Dtype::I32, shape: vec![n, k * bits / 32], bytes: i32_bytes(&pack_rows(&fields, n, k, bits)) },
        StoredTensor { name: name("weight_scale"), dtype: Dtype::F16, shape: vec![n, groups], bytes: f16_bytes(&scales) },
        StoredTensor { name: name("weight_shape"), dtype: Dtype::I64, shape: vec![2], bytes: [n as i64, k as i64].iter().flat_map(|v| v.to_le_bytes()).collect() },
    ];
    if !sym {
        // Zero points `[n, groups]` → transposed to `[groups, n]`, packed along n, stored `[⌈n·b/32⌉, groups]`.
        let transposed: Vec<i32> = (0..groups).flat_map(|g| (0..n).map(move |r| (g, r))).map(|(g, r)| zeros[r * groups + g] + offset).collect();
        let packed = pack_rows(&transposed, groups, n, bits);
        let words = (n * bits).div_ceil(32);
        let stored: Vec<i32> = (0..words).flat_map(|wi| (0..groups).map(move |g| (wi, g))).map(|(wi, g)| packed[g * words + wi]).collect();
        tensors.push(StoredTensor { name: name("weight_zero_point"), dtype: Dtype::I32, shape: vec![words, groups], bytes: i32_bytes(&stored) });
    }
    Written { tensors, expected }
}

/// Symmetric int weights `[n, k]` with one scale per `[bn, bk]` block (`strategy: block`),
/// `weight_scale` `[⌈n/bn⌉, ⌈k/bk⌉]`.
fn write_packed_blocks(prefix: &str, w: &[f32], n: usize, k: usize, bits: usize, [bn, bk]: [usize; 2]) -> Written {
    let (row_blocks, col_blocks) = (n.div_ceil(bn), k.div_ceil(bk));
    let offset = 1i32 << (bits - 1);
    let mut scales = vec![0f32; row_blocks * col_blocks];
    for (at, scale) in scales.iter_mut().enumerate() {
        let (rb, cb) = (at / col_blocks, at % col_blocks);
        let mut absmax = 0f32;
        for row in rb * bn..((rb + 1) * bn).min(n) {
            for col in cb * bk..((cb + 1) * bk).min(k) {
                absmax = absmax.max(w[row * k + col].abs());
            }
        }
        *scale = f16::from_f32((absmax / offset as f32).max(1e-6)).to_f32();
    }
    let mut fields = vec![0i32; n * k];
    let mut expected = vec![0f32; n * k];
    for row in 0..n {
        for col in 0..k {
            let scale = scales[(row / bn) * col_blocks + col / bk];
            let q = ((w[row * k + col] / scale).round() as i32).clamp(-offset, offset - 1);
            fields[row * k + col] = q + offset;
            expected[row * k + col] = scale * q as f32;
        }
    }
    let name = |leaf: &str| format!("{prefix}.{leaf}");
    Written {
        tensors: vec![
            StoredTensor { name: name("weight_packed"), dtype: Dtype::I32, shape: vec![n, k * bits / 32], bytes: i32_bytes(&pack_rows(&fields, n, k, bits)) },
            StoredTensor { name: name("weight_scale"), dtype: Dtype::F16, shape: vec![row_blocks, col_blocks], bytes: f16_bytes(&scales) },
        ],
        expected,
    }
}

/// Nearest e4m3 code (ties to the even mantissa).
pub fn e4m3_code(v: f32) -> u8 {
    (0..=255u8)
        .filter(|&c| e4m3_value(c).is_finite())
        .min_by(|&a, &b| {
            let (da, db) = ((e4m3_value(a) - v).abs(), (e4m3_value(b) - v).abs());
            da.total_cmp(&db).then((a & 1).cmp(&(b & 1)))
        })
        .unwrap_or(0)
}

/// FP8 weights `[n, k]` with one scale, plus a static input scale of 0.05, both scales
/// stored as `scale_dtype` (F16 or F32).
pub fn write_fp8_static(prefix: &str, w: &[f32], n: usize, k: usize, scale_dtype: Dtype) -> Written {
    let encode = |v: f32| match scale_dtype {
        Dtype::F16 => f16_bytes(&[v]),
        _ => v.to_le_bytes().to_vec(),
    };
    let amax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = match scale_dtype {
        Dtype::F16 => f16::from_f32(amax / 448.0).to_f32(),
        _ => amax / 448.0,
    };
    let codes: Vec<u8> = w.iter().map(|x| e4m3_code(x / scale)).collect();
    let expected = codes.iter().map(|&c| e4m3_value(c) * scale).collect();
    let name = |leaf: &str| format!("{prefix}.{leaf}");
    Written {
        tensors: vec![
            StoredTensor { name: name("weight"), dtype: Dtype::F8_E4M3, shape: vec![n, k], bytes: codes },
            StoredTensor { name: name("weight_scale"), dtype: scale_dtype, shape: vec![1], bytes: encode(scale) },
            StoredTensor { name: name("input_scale"), dtype: scale_dtype, shape: vec![1], bytes: encode(0.05) },
        ],
        expected,
    }
}

fn check(group: serde_json::Value, write: impl Fn(&str, &[f32], usize, usize) -> Written, logit_limit: f32) {
    let config = json!({"quant_method": "compressed-tensors", "format": group["format"].clone(), "config_groups": {"group_0": group}, "ignore": ["lm_head"]});
    let written = quantized_llama("quantization_config", config, &[], write);
    let loaded = written.load();
    written.assert_unpacks_exactly(&loaded);
    assert_logits_near_float(&loaded, logit_limit);
}

#[test]
fn compressed_tensors_int4_asymmetric_groups() {
    let group = json!({"targets": ["Linear"], "format": "pack-quantized",
        "weights": {"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group", "group_size": 64}});
    check(group, |p, w, n, k| write_packed(p, w, n, k, 4, 64, false), 0.12);
}

#[test]
fn compressed_tensors_int8_packed_per_channel() {
    let group = json!({"targets": ["Linear"], "format": "pack-quantized",
        "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"}});
    check(group, |p, w, n, k| write_packed(p, w, n, k, 8, k, true), 0.02);
}

#[test]
fn compressed_tensors_int4_block_scales() {
    let group = json!({"targets": ["Linear"], "format": "pack-quantized",
        "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "block", "block_structure": [16, 32]}});
    check(group, |p, w, n, k| write_packed_blocks(p, w, n, k, 4, [16, 32]), 0.15);
}

#[test]
fn compressed_tensors_fp8_static_input_scale() {
    let group = json!({"targets": ["Linear"], "format": "float-quantized",
        "weights": {"num_bits": 8, "type": "float", "symmetric": true, "strategy": "tensor"},
        "input_activations": {"num_bits": 8, "type": "float", "symmetric": true, "strategy": "tensor", "dynamic": false}});
    check(group, |p, w, n, k| write_fp8_static(p, w, n, k, Dtype::F16), 0.05);
}
