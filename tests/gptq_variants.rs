//! GPTQ variants without a tool-made fixture (8-bit, act-order, asymmetric, v2 zero
//! points, other group sizes), written here from the float Llama following GPTQ's
//! published layout: every unpacked weight must equal `scale · (q − zero)` exactly.

use half::f16;
use safetensors::Dtype;

use crate::common::synthetic::{assert_logits_near_float, i32_bytes, quantized_llama, Written};
use crate::common::StoredTensor;

#[derive(Clone, Copy, Debug)]
struct Variant {
    bits: u32,
    group_size: i64,
    desc_act: bool,
    sym: bool,
    v2: bool,
}

/// Deterministic permutation of 0..k (an act-order).
fn permutation(k: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..k).collect();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for i in (1..k).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        perm.swap(i, (state >> 33) as usize % (i + 1));
    }
    perm
}

/// Quantizes `weight` (`[n, k]`, nn.Linear layout) and packs it as GPTQ does.
fn quantize(prefix: &str, weight: &[f32], n: usize, k: usize, v: Variant, seed: u64) -> Written {
    let (b, per) = (v.bits as usize, 32 / v.bits as usize);
    let max_q = (1i32 << b) - 1;
    let g = if v.group_size < 0 { k } else { v.group_size as usize };
    let groups = k / g;
    let order = if v.desc_act { permutation(k, seed) } else { (0..k).collect() };
    let mut g_idx = vec![0i32; k];
    for (i, &row) in order.iter().enumerate() {
        g_idx[row] = (i / g) as i32;
    }
    let mut scales = vec![0f32; groups * n];
    let mut zeros = vec![0i32; groups * n];
    for col in 0..n {
        for group in 0..groups {
            let values = (0..k).filter(|&r| g_idx[r] as usize == group).map(|r| weight[col * k + r]);
            let (lo, hi) = values.fold((0f32, 0f32), |(lo, hi), x| (lo.min(x), hi.max(x)));
            let (scale, zero) = if v.sym {
                (lo.abs().max(hi) * 2.0 / max_q as f32, 1 << (b - 1))
            } else {
                let scale = (hi - lo) / max_q as f32;
                // v1 cannot store a zero point of 0 (it writes zero - 1).
                (scale, ((-lo / scale).round() as i32).clamp(i32::from(!v.v2), max_q))
            };
            scales[group * n + col] = f16::from_f32(scale.max(1e-6)).to_f32();
            zeros[group * n + col] = zero;
        }
    }
    let mut q = vec![0i32; k * n];
    let mut expected = vec![0f32; n * k];
    for col in 0..n {
        for row in 0..k {
            let at = g_idx[row] as usize * n + col;
            let (scale, zero) = (scales[at], zeros[at]);
            let value = ((weight[col * k + row] / scale).round() as i32 + zero).clamp(0, max_q);
            q[row * n + col] = value;
            expected[col * k + row] = scale * (value - zero) as f32;
        }
    }
    let mut qweight = vec![0i32; k / per * n];
    for row in 0..k {
        for col in 0..n {
            qweight[(row / per) * n + col] |= q[row * n + col] << (b * (row % per));
        }
    }
    let stored_zero = |z: i32| if v.v2 { z } else { (z - 1) & max_q };
    let mut qzeros = vec![0i32; groups * n / per];
    for group in 0..groups {
        for col in 0..n {
            qzeros[group * (n / per) + col / per] |= stored_zero(zeros[group * n + col]) << (b * (col % per));
        }
    }
    let f16_bytes: Vec<u8> = scales.iter().flat_map(|s| f16::from_f32(*s).to_le_bytes()).collect();
    let tensor = |leaf: &str, dtype, shape: Vec<usize>, bytes| StoredTensor { name: format!("{prefix}.{leaf}"), dtype, shape, bytes };
    Written {
        tensors: vec![
            tensor("qweight", Dtype::I32, vec![k / per, n], i32_bytes(&qweight)),
            tensor("qzeros", Dtype::I32, vec![groups, n / per], i32_bytes(&qzeros)),
            tensor("scales", Dtype::F16, vec![groups, n], f16_bytes),
            tensor("g_idx", Dtype::I32, vec![k], i32_bytes(&g_idx)),
        ],
        expected,
    }
}

fn check_variant(v: Variant) {
    let config = serde_json::json!({
        "quant_method": "gptq", "bits": v.bits, "group_size": v.group_size, "desc_act": v.desc_act,
        "sym": v.sym, "checkpoint_format": if v.v2 { "gptq_v2" } else { "gptq" },
    });
    // Each layer gets its own act-order permutation, seeded by its name.
    let seed = |prefix: &str| prefix.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let written = quantized_llama("quantization_config", config, &[], |prefix, w, n, k| quantize(prefix, w, n, k, v, seed(prefix)));
    assert_eq!(written.expected.len(), 28);
    let loaded = written.load();
    written.assert_unpacks_exactly(&loaded);
    assert_logits_near_float(&loaded, if v.bits == 8 { 0.02 } else { 0.12 });
}

#[test]
fn gptq_4bit_act_order_asymmetric_v1() {
    check_variant(Variant { bits: 4, group_size: 32, desc_act: true, sym: false, v2: false });
}

#[test]
fn gptq_4bit_group_64_asymmetric_v2() {
    check_variant(Variant { bits: 4, group_size: 64, desc_act: false, sym: false, v2: true });
}

#[test]
fn gptq_8bit_act_order_symmetric_v2() {
    check_variant(Variant { bits: 8, group_size: 64, desc_act: true, sym: true, v2: true });
}

#[test]
fn gptq_8bit_per_channel_asymmetric_v1() {
    check_variant(Variant { bits: 8, group_size: -1, desc_act: false, sym: false, v2: false });
}
