//! Sampling and stop handling.

use burn::tensor::Device;
use ember::engine::{argmax, generate, FinishReason, GenerationRequest, Sampler, SamplingParams, StopStrings};

use crate::common::{load, Reference};

#[test]
fn greedy_is_argmax_with_first_index_on_ties() {
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let mut logits = vec![0.1, 3.0, -1.0, 3.0];
    assert_eq!(sampler.sample(&mut logits, &[]), 1);
    assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
}

#[test]
fn top_k_one_is_greedy_at_any_temperature() {
    let params = SamplingParams { temperature: 5.0, top_k: 1, seed: Some(3), ..SamplingParams::default() };
    let mut sampler = Sampler::new(params);
    for _ in 0..20 {
        assert_eq!(sampler.sample(&mut vec![0.0, 0.5, 0.4, -2.0], &[]), 1);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let params = SamplingParams { temperature: 1.0, top_p: 0.9, seed: Some(42), ..SamplingParams::default() };
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    let draw = |params: &SamplingParams| {
        let mut sampler = Sampler::new(params.clone());
        (0..30).map(|_| sampler.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
    };
    let first = draw(&params);
    assert_eq!(first, draw(&params));
    assert!(first.iter().collect::<std::collections::HashSet<_>>().len() > 1, "temperature 1 should vary");
    let other = SamplingParams { seed: Some(43), ..params };
    assert_ne!(first, draw(&other));
}

#[test]
fn top_p_keeps_only_the_nucleus() {
    // Token 0 holds ~88% of the mass: with top_p 0.5 it is the only candidate.
    let params = SamplingParams { temperature: 1.0, top_p: 0.5, seed: Some(1), ..SamplingParams::default() };
    let mut sampler = Sampler::new(params);
    for _ in 0..50 {
        assert_eq!(sampler.sample(&mut vec![4.0, 2.0, 1.0, 0.0], &[]), 0);
    }
}

#[test]
fn repetition_penalty_demotes_seen_tokens() {
    let params = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
    let mut sampler = Sampler::new(params);
    assert_eq!(sampler.sample(&mut vec![3.0, 2.0, 0.0], &[0]), 1);
}

#[test]
fn invalid_sampling_params_are_rejected() {
    assert!(SamplingParams { top_p: 0.0, ..SamplingParams::default() }.validate().is_err());
    assert!(SamplingParams { temperature: -1.0, ..SamplingParams::default() }.validate().is_err());
    assert!(SamplingParams { temperature: f32::NAN, ..SamplingParams::default() }.validate().is_err());
}

#[test]
fn stop_strings_hold_back_partial_matches_and_cut_before_the_stop() {
    let stops = vec!["STOP".to_string()];
    let mut s = StopStrings::new(&stops);
    assert_eq!(s.push("hello ST"), ("hello ", false));
    assert_eq!(s.push("A"), ("STA", false));
    assert_eq!(s.push("rt"), ("rt", false));
    assert_eq!(s.push(" now STO"), (" now ", false));
    assert_eq!(s.push("P and more"), ("", true));
    assert_eq!(s.into_text(), "hello STArt now ");

    let mut s = StopStrings::new(&stops);
    assert_eq!(s.push("tail S"), ("tail ", false));
    assert_eq!(s.flush(), "S");
}

#[test]
fn generation_stops_on_stop_token_and_stop_string() {
    let reference = Reference::read("llama-tiny-f16");
    let loaded = load("llama-tiny-f16", Device::flex());
    let tokenizer = loaded.tokenizer().unwrap();
    let base = GenerationRequest {
        prompt_ids: reference.input_ids.clone(),
        sampling: SamplingParams::greedy(),
        max_tokens: 16,
        stop_token_ids: Vec::new(),
        stop_strings: Vec::new(),
    };
    // The greedy continuation is ". The United States to be be the United ...".
    let stop_token = GenerationRequest { stop_token_ids: vec![reference.greedy_new_ids[2]], ..base.clone() };
    let out = generate(&loaded.model, tokenizer, &stop_token, &mut |_| {}).unwrap();
    assert_eq!(out.tokens, reference.greedy_new_ids[..2]);
    assert_eq!(out.finish_reason, FinishReason::Stop);

    let stop_string = GenerationRequest { stop_strings: vec!["States".into()], ..base.clone() };
    let mut streamed = String::new();
    let out = generate(&loaded.model, tokenizer, &stop_string, &mut |t| streamed.push_str(t)).unwrap();
    assert_eq!(out.text, ". The United ");
    assert_eq!(streamed, out.text);
    assert_eq!(out.finish_reason, FinishReason::Stop);

    let budget = GenerationRequest { max_tokens: 5, ..base };
    let out = generate(&loaded.model, tokenizer, &budget, &mut |_| {}).unwrap();
    assert_eq!(out.tokens.len(), 5);
    assert_eq!(out.finish_reason, FinishReason::Length);
}

#[test]
fn prompts_outside_the_vocabulary_are_rejected() {
    let loaded = load("llama-tiny-f16", Device::flex());
    let request = GenerationRequest {
        prompt_ids: vec![0, 5000],
        sampling: SamplingParams::greedy(),
        max_tokens: 1,
        stop_token_ids: vec![],
        stop_strings: vec![],
    };
    let err = generate(&loaded.model, loaded.tokenizer().unwrap(), &request, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("5000"), "{err}");
}
