//! Float Llama and Mixtral fixtures against the logits and greedy tokens transformers
//! computed for them in float32.

use burn::tensor::{DType, Device};
use ember::quant::{ComputeDtype, LinearRepr};
use ember::{load_model, LoadOptions};
use safetensors::Dtype;

use crate::common::{greedy_tokens, load, max_abs_diff, prompt_logits, rewrite_fixture, Reference, StoredTensor};

/// Logits within 1e-3 × (reference logit range), as the fixtures' README asks.
fn assert_logits_match(fixture: &str, device: Device) {
    let reference = Reference::read(fixture);
    let loaded = load(fixture, device);
    let ours = prompt_logits(&loaded, &reference.input_ids);
    let diff = max_abs_diff(&ours, &reference.logits);
    let tolerance = 1e-3 * reference.logit_range();
    println!("{fixture}: max |logit diff| {diff:.3e}, tolerance {tolerance:.3e}");
    assert!(diff <= tolerance, "{fixture}: max |logit diff| {diff} exceeds {tolerance}");
}

fn assert_greedy_matches(fixture: &str, device: Device) {
    let reference = Reference::read(fixture);
    let loaded = load(fixture, device);
    let tokens = greedy_tokens(loaded, &reference.input_ids, reference.greedy_new_ids.len());
    assert_eq!(tokens, reference.greedy_new_ids, "{fixture}: greedy continuation differs");
}

#[test]
fn llama_logits_match_reference_on_flex() {
    assert_logits_match("llama-tiny-f16", Device::flex());
}

/// On Flex with f32 compute, float checkpoints' f16 / bf16 linears (and the embedding
/// table) keep their stored dtype; the logit tests above run through them. On the
/// CubeCL devices weights are converted to the compute dtype.
#[test]
fn flex_keeps_half_precision_float_weights() {
    for (fixture, stored) in [("llama-tiny-f16", DType::F16), ("mixtral-tiny-bf16", DType::BF16)] {
        let loaded = load(fixture, Device::flex());
        let dense: Vec<DType> = loaded.model.linears().iter().filter_map(|l| match l.repr() {
            LinearRepr::Dense { weight_t } => Some(weight_t.dtype()),
            _ => None,
        }).collect();
        assert!(!dense.is_empty() && dense.iter().all(|&d| d == stored), "{fixture}: {dense:?}");
    }
    let loaded = load("llama-tiny-f16", Device::wgpu(Default::default()));
    assert!(loaded.model.linears().iter().all(|l| matches!(l.repr(), LinearRepr::Dense { weight_t } if weight_t.dtype() == DType::F32)));
}

#[test]
fn llama_greedy_tokens_match_reference_on_flex() {
    assert_greedy_matches("llama-tiny-f16", Device::flex());
}

#[test]
fn mixtral_logits_match_reference_on_flex() {
    assert_logits_match("mixtral-tiny-bf16", Device::flex());
}

#[test]
fn mixtral_greedy_tokens_match_reference_on_flex() {
    assert_greedy_matches("mixtral-tiny-bf16", Device::flex());
}

#[test]
fn llama_logits_match_reference_on_wgpu() {
    assert_logits_match("llama-tiny-f16", Device::wgpu(Default::default()));
}

#[test]
fn llama_greedy_tokens_match_reference_on_wgpu() {
    assert_greedy_matches("llama-tiny-f16", Device::wgpu(Default::default()));
}

#[test]
fn llama_logits_match_reference_on_cubecl_cpu() {
    assert_logits_match("llama-tiny-f16", Device::cpu());
}

/// The KV-cache path (prefill then one token at a time) gives the same logits as one
/// full forward pass over the whole sequence.
#[test]
fn cached_decoding_matches_full_forward() {
    let reference = Reference::read("llama-tiny-f16");
    let loaded = load("llama-tiny-f16", Device::flex());
    let ids = &reference.input_ids;
    let full = prompt_logits(&loaded, ids);
    let vocab = loaded.model.config().vocab_size;
    let mut cache = loaded.model.new_cache();
    let split = ids.len() - 4;
    let mut stepped = loaded.model.forward_ids(&ids[..split], &mut cache).try_into_vec_as::<f32>().unwrap();
    for &id in &ids[split..] {
        stepped.extend(loaded.model.forward_ids(&[id], &mut cache).try_into_vec_as::<f32>().unwrap());
    }
    assert_eq!(stepped.len(), ids.len() * vocab);
    let diff = max_abs_diff(&stepped, &full);
    assert!(diff < 1e-4, "cached vs full forward differ by {diff}");
}

fn logits_of_dir(dir: &std::path::Path, ids: &[u32]) -> Vec<f32> {
    let loaded = load_model(dir, &LoadOptions::new(Device::flex(), ComputeDtype::F32)).unwrap();
    prompt_logits(&loaded, ids)
}

/// The two other Mixtral expert spellings found in the wild load to the same model.
#[test]
fn mixtral_expert_layouts_load_identically() {
    let reference = Reference::read("mixtral-tiny-bf16");
    let renames: [(&str, &str); 2] = [("block_sparse_moe", "block_sparse_moe"), ("block_sparse_moe", "mlp")];
    for (from_block, to_block) in renames {
        let dir = rewrite_fixture("mixtral-tiny-bf16", |_| {}, |tensors| {
            for t in tensors.iter_mut() {
                t.name = t
                    .name
                    .replace(".w1.", ".gate_proj.")
                    .replace(".w3.", ".up_proj.")
                    .replace(".w2.", ".down_proj.")
                    .replace(from_block, to_block);
            }
        });
        let diff = max_abs_diff(&logits_of_dir(dir.path(), &reference.input_ids), &reference.logits);
        assert!(diff <= 1e-3 * reference.logit_range(), "{to_block}.experts.E.gate_proj layout: diff {diff}");
    }
}

/// Qwen2 is the Llama decoder plus q/k/v biases: the Llama fixture relabelled as Qwen2
/// with biases added must shift logits exactly as a bias on v does (zero bias: identical;
/// a non-zero bias: different logits, proving the bias is applied).
#[test]
fn qwen2_applies_qkv_biases() {
    let reference = Reference::read("llama-tiny-f16");
    let with_bias = |value: f32| {
        rewrite_fixture("llama-tiny-f16", |c| c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]), move |tensors| {
            for layer in 0..4 {
                for (proj, size) in [("q_proj", 256), ("k_proj", 128), ("v_proj", 128)] {
                    let bytes = (0..size).flat_map(|_| half::f16::from_f32(value).to_le_bytes()).collect();
                    let name = format!("model.layers.{layer}.self_attn.{proj}.bias");
                    tensors.push(StoredTensor { name, dtype: Dtype::F16, shape: vec![size], bytes });
                }
            }
        })
    };
    let zero = logits_of_dir(with_bias(0.0).path(), &reference.input_ids);
    let diff = max_abs_diff(&zero, &reference.logits);
    assert!(diff <= 1e-3 * reference.logit_range(), "zero-bias Qwen2 differs from Llama by {diff}");
    let shifted = logits_of_dir(with_bias(0.5).path(), &reference.input_ids);
    assert!(max_abs_diff(&shifted, &reference.logits) > 1e-2, "a non-zero bias must change the logits");
}

fn logits_in_dtype(device: Device, dtype: ComputeDtype) -> Result<Vec<f32>, ember::Error> {
    let reference = Reference::read("llama-tiny-f16");
    let loaded = load_model(&crate::common::fixture("llama-tiny-f16"), &LoadOptions::new(device, dtype))?;
    Ok(prompt_logits(&loaded, &reference.input_ids))
}

/// Half-precision compute stays close to the float32 reference: f16 inside the float
/// tolerance, bf16 (8 mantissa bits) within 5e-3 of the range with the same argmax.
#[test]
fn half_precision_compute_tracks_reference() {
    let reference = Reference::read("llama-tiny-f16");
    let range = reference.logit_range();
    let f16 = logits_in_dtype(Device::flex(), ComputeDtype::F16).unwrap();
    assert!(max_abs_diff(&f16, &reference.logits) <= 1e-3 * range);
    let bf16 = logits_in_dtype(Device::flex(), ComputeDtype::BF16).unwrap();
    assert!(max_abs_diff(&bf16, &reference.logits) <= 5e-3 * range);
    let argmax = |l: &[f32]| l.chunks(2048).map(ember::engine::argmax).collect::<Vec<_>>();
    assert_eq!(argmax(&bf16), argmax(&reference.logits));
}

#[test]
fn unsupported_dtype_on_device_is_an_error() {
    let err = logits_in_dtype(Device::wgpu(Default::default()), ComputeDtype::BF16).expect_err("wgpu has no bf16");
    assert!(err.to_string().contains("bf16"), "{err}");
}
