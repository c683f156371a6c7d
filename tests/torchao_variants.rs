//! torchao `Int4WeightOnlyConfig` (version 2, plain `Int4Tensor`), written here from the
//! float Llama following torchao's layout: two's-complement int4 pairs along K (even k in
//! the low nibble), scales and float zero points `[K/g, N]`, `W = q · scale + zero_point`.

use safetensors::Dtype;
use serde_json::json;

use crate::common::synthetic::{assert_logits_near_float, f16_bytes, quantized_llama, Written};
use crate::common::StoredTensor;

const GROUP: usize = 64;

fn write_int4_plain(prefix: &str, w: &[f32], n: usize, k: usize) -> Written {
    let groups = k / GROUP;
    let round16 = |x: f32| half::f16::from_f32(x).to_f32();
    let (mut scales, mut zeros) = (vec![0f32; groups * n], vec![0f32; groups * n]);
    for row in 0..n {
        for g in 0..groups {
            let block = &w[row * k + g * GROUP..row * k + (g + 1) * GROUP];
            let (lo, hi) = block.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let scale = ((hi - lo) / 15.0).max(1e-6);
            scales[g * n + row] = round16(scale);
            zeros[g * n + row] = round16(lo + 8.0 * scale);
        }
    }
    let mut q = vec![0i32; n * k];
    let mut expected = vec![0f32; n * k];
    for row in 0..n {
        for col in 0..k {
            let at = (col / GROUP) * n + row;
            let value = ((w[row * k + col] - zeros[at]) / scales[at]).round().clamp(-8.0, 7.0) as i32;
            q[row * k + col] = value;
            expected[row * k + col] = value as f32 * scales[at] + zeros[at];
        }
    }
    let qdata: Vec<u8> = q.chunks_exact(2).map(|pair| ((pair[0] & 0xF) | ((pair[1] & 0xF) << 4)) as u8).collect();
    let name = |leaf: &str| format!("{prefix}.{leaf}");
    Written {
        tensors: vec![
            StoredTensor { name: name("_weight_qdata"), dtype: Dtype::I8, shape: vec![n, k / 2], bytes: qdata },
            StoredTensor { name: name("_weight_scale"), dtype: Dtype::F16, shape: vec![groups, n], bytes: f16_bytes(&scales) },
            StoredTensor { name: name("_weight_zero_point"), dtype: Dtype::F16, shape: vec![groups, n], bytes: f16_bytes(&zeros) },
        ],
        expected,
    }
}

#[test]
fn torchao_int4_plain_with_float_zero_points() {
    let config = json!({"quant_method": "torchao", "include_input_output_embeddings": false, "modules_to_not_convert": null,
        "quant_type": {"default": {"_type": "Int4WeightOnlyConfig", "_version": 2, "_data": {"group_size": GROUP,
            "int4_packing_format": {"_type": "Int4PackingFormat", "_data": "PLAIN"}}}}});
    let written = quantized_llama("quantization_config", config, &[], write_int4_plain);
    let loaded = written.load();
    written.assert_unpacks_exactly(&loaded);
    assert_logits_near_float(&loaded, 0.12);
}

/// tinygemm's `tile_packed_to_4d` is a kernel-specific opaque layout: refused by name,
/// before any tensor is read.
#[test]
fn torchao_int4_tile_packed_layout_is_refused() {
    let config = json!({"quant_method": "torchao",
        "quant_type": {"default": {"_type": "Int4WeightOnlyConfig", "_version": 2, "_data": {"group_size": GROUP,
            "int4_packing_format": {"_type": "Int4PackingFormat", "_data": "TILE_PACKED_TO_4D"}}}}});
    let written = quantized_llama("quantization_config", config, &[], write_int4_plain);
    let options = ember::LoadOptions::new(burn::tensor::Device::flex(), ember::quant::ComputeDtype::F32);
    let err = ember::load_model(written.dir.path(), &options).err().expect("loading must fail");
    assert!(err.to_string().contains("int4_packing_format TILE_PACKED_TO_4D is not supported"), "{err}");
}
