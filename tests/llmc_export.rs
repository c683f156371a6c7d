//! Checkpoints in the layout LLMC's vLLM export writes (`save_vllm`): compressed-tensors
//! under the legacy `compression_config` key, symmetric packed weights with float16 scales
//! and no `weight_shape`, mixed-precision layers left as plain float `weight` without an
//! ignore entry, and FP8 through the `fp8` method with LLMC's nested `ignored_layers`.

use burn::tensor::Device;
use ember::quant::{CheckpointError, ComputeDtype};
use ember::{load_model, LoadOptions};
use half::f16;
use safetensors::Dtype;
use serde_json::json;

use crate::common::synthetic::{assert_logits_near_float, f16_bytes, quantized_llama, Written};
use crate::common::StoredTensor;
use crate::ct_variants::{write_fp8_static, write_packed};

/// A layer LLMC kept in float (mixed precision), not listed in `ignore`.
const FLOAT_LAYER: &str = "model.layers.1.mlp.down_proj";

/// int8 weights `[n, k]` with per-channel scales, LLMC's W8A8 (`int-quantized`).
fn write_int8(prefix: &str, w: &[f32], n: usize, k: usize) -> Written {
    let mut scales = vec![0f32; n];
    let mut bytes = vec![0u8; n * k];
    let mut expected = vec![0f32; n * k];
    for row in 0..n {
        let absmax = w[row * k..(row + 1) * k].iter().fold(0f32, |m, x| m.max(x.abs()));
        scales[row] = f16::from_f32((absmax / 127.0).max(1e-5)).to_f32();
        for col in 0..k {
            let q = (w[row * k + col] / scales[row]).round().clamp(-128.0, 127.0) as i8;
            bytes[row * k + col] = q as u8;
            expected[row * k + col] = q as f32 * scales[row];
        }
    }
    let name = |leaf: &str| format!("{prefix}.{leaf}");
    Written {
        tensors: vec![
            StoredTensor { name: name("weight"), dtype: Dtype::I8, shape: vec![n, k], bytes },
            StoredTensor { name: name("weight_scale"), dtype: Dtype::F16, shape: vec![n, 1], bytes: f16_bytes(&scales) },
        ],
        expected,
    }
}

fn check(config_key: &str, config: serde_json::Value, write: impl Fn(&str, &[f32], usize, usize) -> Written, logit_limit: f32) {
    let without_shape = |prefix: &str, w: &[f32], n: usize, k: usize| {
        let mut layer = write(prefix, w, n, k);
        // LLMC writes no `weight_shape`.
        layer.tensors.retain(|t| !t.name.ends_with(".weight_shape"));
        layer
    };
    let written = quantized_llama(config_key, config, &[FLOAT_LAYER], without_shape);
    let loaded = written.load();
    written.assert_unpacks_exactly(&loaded);
    let float_layer = loaded.model.linears().into_iter().find(|l| l.name() == FLOAT_LAYER).unwrap();
    assert_eq!(float_layer.scheme(), "float", "a layer stored in float loads as float");
    assert_logits_near_float(&loaded, logit_limit);
}

fn llmc_groups(format: &str, weights: serde_json::Value, input_activations: serde_json::Value) -> serde_json::Value {
    json!({
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": input_activations}},
        "format": format,
        "ignore": ["lm_head"],
        "quant_method": "compressed-tensors",
    })
}

#[test]
fn llmc_w4a16_pack_quantized_under_compression_config() {
    let weights = json!({"dynamic": false, "group_size": 128, "num_bits": 4, "observer": "minmax", "observer_kwargs": {},
        "strategy": "group", "symmetric": true, "type": "int"});
    let config = llmc_groups("pack-quantized", weights, serde_json::Value::Null);
    check("compression_config", config, |p, w, n, k| write_packed(p, w, n, k, 4, 128, true), 0.12);
}

#[test]
fn llmc_w8a8_int_quantized_per_token() {
    let weights = json!({"dynamic": false, "group_size": null, "num_bits": 8, "observer": "minmax", "observer_kwargs": {},
        "strategy": "channel", "symmetric": true, "type": "int"});
    let acts = json!({"dynamic": true, "group_size": null, "num_bits": 8, "observer": "minmax", "observer_kwargs": {},
        "strategy": "token", "symmetric": true, "type": "int"});
    check("compression_config", llmc_groups("int-quantized", weights, acts), write_int8, 0.03);
}

#[test]
fn llmc_fp8_static_with_nested_ignored_layers() {
    let config = json!({"activation_scheme": "static", "ignored_layers": [["lm_head"]], "quant_method": "fp8"});
    // LLMC's static FP8: one float32 weight scale and a float32 input scale.
    check("quantization_config", config, |p, w, n, k| write_fp8_static(p, w, n, k, Dtype::F32), 0.05);
}

/// LLMC's first vLLM export (`pack_mode: vllm_pack`) wrote asymmetric weights as unsigned
/// values plus 2^(b-1), OR-ed into int32 words, so values ≥ 2^(b-1) spill into the next
/// field and cannot be recovered; its zero points were stored unpacked, `[n, groups]`.
/// Such a checkpoint must be refused at the zero-point tensor, never decoded wrongly.
#[test]
fn llmc_asymmetric_vllm_pack_export_is_refused_at_the_zero_points() {
    let weights = json!({"dynamic": false, "group_size": 128, "num_bits": 4, "observer": "minmax", "observer_kwargs": {},
        "strategy": "group", "symmetric": false, "type": "int"});
    let config = llmc_groups("pack-quantized", weights, serde_json::Value::Null);
    let unpacked_zero_points = |prefix: &str, w: &[f32], n: usize, k: usize| {
        let mut layer = write_packed(prefix, w, n, k, 4, 128, true);
        let groups = k / 128;
        layer.tensors.push(StoredTensor { name: format!("{prefix}.weight_zero_point"), dtype: Dtype::F16, shape: vec![n, groups], bytes: f16_bytes(&vec![8.0; n * groups]) });
        layer
    };
    let written = quantized_llama("compression_config", config, &[], unpacked_zero_points);
    let err = load_model(written.dir.path(), &LoadOptions::new(Device::flex(), ComputeDtype::F32)).err().expect("loading must fail");
    assert!(matches!(err.as_checkpoint(), Some(CheckpointError::ShapeMismatch { .. })), "{err:?}");
    assert!(err.to_string().contains("weight_zero_point"), "{err}");
}
