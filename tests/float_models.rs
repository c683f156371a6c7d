//! Float Llama and Mixtral fixtures against the logits and greedy tokens transformers
//! computed for them in float32.

use burn::tensor::Device;
use ember::engine::{generate, GenerationRequest, SamplingParams};

use crate::common::{load, max_abs_diff, prompt_logits, Reference};

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
    let request = GenerationRequest {
        prompt_ids: reference.input_ids.clone(),
        sampling: SamplingParams::greedy(),
        max_tokens: reference.greedy_new_ids.len(),
        stop_token_ids: Vec::new(),
        stop_strings: Vec::new(),
    };
    let generation = generate(&loaded.model, loaded.tokenizer().unwrap(), &request, &mut |_| {}).unwrap();
    assert_eq!(generation.tokens, reference.greedy_new_ids, "{fixture}: greedy continuation differs");
}

#[test]
fn llama_logits_match_reference_on_flex() {
    assert_logits_match("llama-tiny-f16", Device::flex());
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
    let mut stepped = loaded.model.forward_ids(&ids[..split], &mut cache).into_data().to_vec::<f32>().unwrap();
    for &id in &ids[split..] {
        stepped.extend(loaded.model.forward_ids(&[id], &mut cache).into_data().to_vec::<f32>().unwrap());
    }
    assert_eq!(stepped.len(), ids.len() * vocab);
    let diff = max_abs_diff(&stepped, &full);
    assert!(diff < 1e-4, "cached vs full forward differ by {diff}");
}
