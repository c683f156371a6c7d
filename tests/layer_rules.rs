//! Per-layer decisions that live in the methods: GPTQModel's `dynamic` overrides, AWQ's
//! `modules_to_not_convert`, compressed-tensors `ignore` patterns, torchao per-module
//! configs, and the router / lm_head rules.

use ember::quant::{LayerInfo, LayerKind, QuantRegistry};
use serde_json::{json, Value};

fn layer(prefix: &str, kind: LayerKind) -> LayerInfo {
    LayerInfo { prefix: prefix.into(), in_features: 256, out_features: 768, bias: false, kind }
}

/// The scheme description each layer gets under `quantization_config`.
fn schemes(quantization_config: Value, layers: &[LayerInfo]) -> Vec<String> {
    let method = QuantRegistry::with_builtins().resolve(&json!({ "quantization_config": quantization_config }), None).unwrap();
    layers.iter().map(|l| method.linear(l).unwrap().describe()).collect()
}

#[test]
fn gptq_dynamic_skips_and_overrides_per_module() {
    let config = json!({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true,
        "dynamic": {"-:model\\.layers\\.0\\..*": {}, "+:.*down_proj": {"bits": 8, "group_size": 64}}});
    let got = schemes(config, &[
        layer("model.layers.0.mlp.up_proj", LayerKind::Linear),
        layer("model.layers.1.mlp.down_proj", LayerKind::Linear),
        layer("model.layers.1.mlp.up_proj", LayerKind::Linear),
        layer("model.layers.1.mlp.gate", LayerKind::Router),
        layer("lm_head", LayerKind::LmHead),
    ]);
    assert_eq!(got, ["float", "int8 g64 sym (gptq)", "int4 g128 sym (gptq)", "float", "float"]);
}

#[test]
fn gptq_lm_head_is_quantized_only_when_the_config_says_so() {
    let config = json!({"quant_method": "gptq", "bits": 4, "group_size": 128, "lm_head": true});
    assert_eq!(schemes(config, &[layer("lm_head", LayerKind::LmHead)]), ["int4 g128 sym (gptq)"]);
}

#[test]
fn awq_modules_to_not_convert_match_by_substring() {
    let config = json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": true,
        "modules_to_not_convert": ["self_attn.o_proj"]});
    let got = schemes(config, &[
        layer("model.layers.3.self_attn.o_proj", LayerKind::Linear),
        layer("model.layers.3.self_attn.q_proj", LayerKind::Linear),
    ]);
    assert_eq!(got, ["float", "int4 g128 zp (awq)"]);
}

#[test]
fn compressed_tensors_ignore_and_targets_use_regex_patterns() {
    let config = json!({"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head", "re:.*mlp\\.gate$"],
        "config_groups": {
            "group_1": {"targets": ["re:.*self_attn\\..*"], "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"}},
            "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 128}}}});
    let got = schemes(config, &[
        layer("model.layers.0.self_attn.k_proj", LayerKind::Linear),
        layer("model.layers.0.mlp.experts.2.w1", LayerKind::Expert { index: 2 }),
        layer("model.layers.0.mlp.gate", LayerKind::Router),
        layer("lm_head", LayerKind::LmHead),
    ]);
    assert_eq!(got, [
        "int8 sym per-channel (compressed-tensors pack-quantized)",
        "int4 sym g128 (compressed-tensors pack-quantized)",
        "float",
        "float",
    ]);
}

#[test]
fn torchao_module_fqn_to_config_picks_per_module() {
    let int4 = json!({"_type": "IntxWeightOnlyConfig", "_version": 2, "_data": {"weight_dtype": {"_type": "torch.dtype", "_data": "int4"},
        "granularity": {"_type": "PerGroup", "_data": {"group_size": 32}}}});
    let config = json!({"quant_method": "torchao", "quant_type": {"default": {"_type": "ModuleFqnToConfig", "_data": {"module_fqn_to_config": {
        "_default": {"_type": "Int8WeightOnlyConfig", "_version": 2, "_data": {}},
        "model.layers.0.mlp.down_proj": int4,
        "model.layers.1.self_attn.q_proj": null}}}}});
    let got = schemes(config, &[
        layer("model.layers.0.mlp.up_proj", LayerKind::Linear),
        layer("model.layers.0.mlp.down_proj", LayerKind::Linear),
        layer("model.layers.1.self_attn.q_proj", LayerKind::Linear),
        layer("lm_head", LayerKind::LmHead),
    ]);
    assert_eq!(got, ["int8 per-channel (torchao)", "int4 g32 (torchao)", "float", "float"]);
}

#[test]
fn quantization_override_and_legacy_compression_config() {
    let registry = QuantRegistry::with_builtins();
    let float_config = json!({"architectures": ["LlamaForCausalLM"]});
    assert_eq!(registry.resolve(&float_config, None).unwrap().name(), "unquantized");
    let legacy = json!({"compression_config": {"format": "pack-quantized", "config_groups": {"g": {"targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}}}});
    assert_eq!(registry.resolve(&legacy, None).unwrap().name(), "compressed-tensors");
    let err = registry.resolve(&float_config, Some("gguf")).unwrap_err().to_string();
    assert!(err.contains("gguf") && err.contains("awq"), "{err}");
}
