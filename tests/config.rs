//! config.json of real published models, in their own spellings.

use std::path::Path;

use burn::tensor::Device;
use ember::models::layers::Rope;
use ember::models::{ModelConfig, RopeScaling};
use ember::quant::ComputeDtype;
use ember::{load_model, LoadFormat, LoadOptions};

use crate::common::{fixture, max_abs_diff, prompt_logits, rewrite_fixture, test_data, Reference};

fn config(name: &str) -> ModelConfig {
    ModelConfig::from_file(&test_data(name).join("config.json")).unwrap()
}

#[test]
fn llama_3_1_config_reads_llama3_rope_scaling() {
    let c = config("llama-3.1-8b");
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
    assert_eq!(c.rope_theta, 500_000.0);
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 }
    );
    let rope = Rope::new(&c);
    let freqs = rope.inv_freq();
    assert_eq!(freqs.len(), 64);
    // Short wavelengths (< 8192 / 4) keep their frequency; long ones (> 8192) are divided
    // by the factor; the band between is interpolated, so frequencies stay decreasing.
    assert_eq!(freqs[0], 1.0);
    let unscaled_last = 1.0 / 500_000f32.powf(126.0 / 128.0);
    assert!((freqs[63] - unscaled_last / 8.0).abs() < 1e-12, "{} vs {}", freqs[63], unscaled_last / 8.0);
    assert!(freqs.windows(2).all(|w| w[1] < w[0]));
}

#[test]
fn linear_rope_scaling_divides_every_frequency() {
    let mut raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("llama-tiny-f16").join("config.json")).unwrap()).unwrap();
    let plain = ModelConfig::from_str(&raw.to_string(), Path::new("config.json")).unwrap();
    raw["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0});
    let scaled = ModelConfig::from_str(&raw.to_string(), Path::new("config.json")).unwrap();
    assert_eq!(scaled.rope_scaling, RopeScaling::Linear { factor: 4.0 });
    for (a, b) in Rope::new(&plain).inv_freq().iter().zip(Rope::new(&scaled).inv_freq()) {
        assert_eq!(a / 4.0, *b);
    }
    raw["rope_scaling"] = serde_json::json!({"type": "yarn-ish", "factor": 4.0});
    let err = ModelConfig::from_str(&raw.to_string(), Path::new("config.json")).unwrap_err();
    assert!(err.to_string().contains("yarn-ish"), "{err}");
}

#[test]
fn mistral_config_honours_sliding_window_and_qwen2_only_when_enabled() {
    let mistral = config("mistral-7b");
    assert_eq!(mistral.architecture, "MistralForCausalLM");
    assert_eq!(mistral.sliding_window, Some(4096));
    assert!(!mistral.qkv_bias);
    let qwen = config("qwen2-0.5b");
    assert_eq!(qwen.sliding_window, None, "use_sliding_window is false");
    assert!(qwen.qkv_bias && !qwen.o_bias && qwen.tie_word_embeddings);
    assert_eq!(qwen.head_dim, 64);
}

#[test]
fn transformers_5_rope_parameters_are_read() {
    let c = ModelConfig::from_file(&fixture("llama-tiny-f16").join("config.json")).unwrap();
    assert_eq!(c.rope_theta, 10_000.0);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.stored_dtype.as_deref(), Some("float16"));
}

#[test]
fn zero_or_inconsistent_dimensions_are_rejected() {
    let base = std::fs::read_to_string(fixture("llama-tiny-f16").join("config.json")).unwrap();
    for (field, value, needle) in [
        ("hidden_size", 0, "hidden_size"),
        ("num_key_value_heads", 3, "num_key_value_heads"),
        ("head_dim", 63, "head_dim"),
    ] {
        let mut raw: serde_json::Value = serde_json::from_str(&base).unwrap();
        raw[field] = serde_json::json!(value);
        let err = ModelConfig::from_str(&raw.to_string(), Path::new("config.json")).unwrap_err();
        assert!(err.to_string().contains(needle), "{field}={value}: {err}");
    }
}

/// A sliding window wider than the prompt changes nothing; a narrow one leaves the first
/// `window` positions untouched and changes later ones (they lose early context). The
/// cached path masks the same way as the full pass.
#[test]
fn sliding_window_masks_distant_keys() {
    let reference = Reference::read("llama-tiny-f16");
    let ids = &reference.input_ids;
    let vocab = 2048;
    let with_window = |window: usize| {
        rewrite_fixture("llama-tiny-f16", |c| c["sliding_window"] = serde_json::json!(window), |_| {})
    };
    let options = LoadOptions::new(Device::flex(), ComputeDtype::F32);
    let wide = load_model(with_window(64).path(), &options).unwrap();
    assert!(max_abs_diff(&prompt_logits(&wide, ids), &reference.logits) < 1e-4);

    let narrow = load_model(with_window(8).path(), &options).unwrap();
    let logits = prompt_logits(&narrow, ids);
    assert!(max_abs_diff(&logits[..8 * vocab], &reference.logits[..8 * vocab]) < 1e-4);
    assert!(max_abs_diff(&logits[8 * vocab..], &reference.logits[8 * vocab..]) > 1e-2);

    let mut cache = narrow.model.new_cache();
    let mut stepped = narrow.model.forward_ids(&ids[..5], &mut cache).try_into_vec_as::<f32>().unwrap();
    for &id in &ids[5..] {
        stepped.extend(narrow.model.forward_ids(&[id], &mut cache).try_into_vec_as::<f32>().unwrap());
    }
    assert!(max_abs_diff(&stepped, &logits) < 1e-4);
}

/// Tied embeddings: with `tie_word_embeddings` and no `lm_head.weight`, the head reuses the
/// embedding matrix — the same logits as an untied copy whose head equals the embedding.
#[test]
fn tied_embeddings_reuse_the_embedding_matrix() {
    let reference = Reference::read("llama-tiny-f16");
    let tied = rewrite_fixture("llama-tiny-f16", |c| c["tie_word_embeddings"] = serde_json::json!(true), |t| {
        t.retain(|t| t.name != "lm_head.weight")
    });
    let untied = rewrite_fixture("llama-tiny-f16", |_| {}, |t| {
        let embed = t.iter().find(|t| t.name == "model.embed_tokens.weight").unwrap().bytes.clone();
        t.iter_mut().find(|t| t.name == "lm_head.weight").unwrap().bytes = embed;
    });
    let options = LoadOptions::new(Device::flex(), ComputeDtype::F32);
    let a = prompt_logits(&load_model(tied.path(), &options).unwrap(), &reference.input_ids);
    let b = prompt_logits(&load_model(untied.path(), &options).unwrap(), &reference.input_ids);
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

/// Qwen2-0.5B's real config (biases, tied embeddings, 151k vocabulary), one layer of dummy
/// weights, one forward step.
#[test]
fn dummy_qwen2_runs_one_layer_forward() {
    let mut options = LoadOptions::new(Device::flex(), ComputeDtype::F32);
    options.load_format = LoadFormat::Dummy;
    options.num_layers = Some(1);
    let loaded = load_model(&test_data("qwen2-0.5b"), &options).unwrap();
    assert!(loaded.tokenizer.is_none());
    let logits = prompt_logits(&loaded, &[151643, 100, 2000]);
    assert_eq!(logits.len(), 3 * 151_936);
    assert!(logits.iter().all(|v| v.is_finite()));
}
