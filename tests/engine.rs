//! The engine: sampling, stop handling, continuous batching over the paged KV cache,
//! preemption, cancellation and parallel completions.

use burn::tensor::Device;
use ember::models::SequenceChunk;
use ember::engine::{argmax, Completion, Engine, EngineConfig, FinishReason, KvCacheSize, Prompt, Sampler, SamplingParams, StopStrings};

use crate::common::{load, max_abs_diff, prompt_logits, Reference};

#[test]
fn greedy_is_argmax_with_first_index_on_ties() {
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let mut logits = vec![0.1, 3.0, -1.0, 3.0];
    assert_eq!(sampler.sample(&mut logits, &[], &[]), 1);
    assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
}

#[test]
fn top_k_one_is_greedy_at_any_temperature() {
    let params = SamplingParams { temperature: 5.0, top_k: 1, seed: Some(3), ..SamplingParams::default() };
    let mut sampler = Sampler::new(params);
    for _ in 0..20 {
        assert_eq!(sampler.sample(&mut [0.0, 0.5, 0.4, -2.0], &[], &[]), 1);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let params = SamplingParams { temperature: 1.0, top_p: 0.9, seed: Some(42), ..SamplingParams::default() };
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    let draw = |params: &SamplingParams| {
        let mut sampler = Sampler::new(params.clone());
        (0..30).map(|_| sampler.sample(&mut logits.clone(), &[], &[])).collect::<Vec<_>>()
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
        assert_eq!(sampler.sample(&mut [4.0, 2.0, 1.0, 0.0], &[], &[]), 0);
    }
}

#[test]
fn repetition_penalty_demotes_seen_tokens() {
    let params = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
    let mut sampler = Sampler::new(params);
    assert_eq!(sampler.sample(&mut [3.0, 2.0, 0.0], &[0], &[]), 1);
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
fn min_p_and_output_penalties_shape_the_distribution() {
    // min_p 0.5 keeps only tokens at least half as likely as the best: token 0 alone.
    let params = SamplingParams { temperature: 1.0, min_p: 0.5, seed: Some(7), ..SamplingParams::default() };
    let mut sampler = Sampler::new(params);
    for _ in 0..50 {
        assert_eq!(sampler.sample(&mut [2.0, 1.0, 0.5, 0.0], &[], &[]), 0);
    }
    // Presence and frequency penalties apply to generated tokens, not to the prompt.
    let mut sampler = Sampler::new(SamplingParams { presence_penalty: 1.5, ..SamplingParams::greedy() });
    assert_eq!(sampler.sample(&mut [3.0, 2.0, 0.0], &[1], &[0]), 1);
    assert_eq!(sampler.sample(&mut [3.0, 2.0, 0.0], &[0], &[]), 0);
    let mut sampler = Sampler::new(SamplingParams { frequency_penalty: 0.6, ..SamplingParams::greedy() });
    assert_eq!(sampler.sample(&mut [3.0, 2.0, 0.0], &[], &[0]), 0, "one occurrence costs 0.6");
    assert_eq!(sampler.sample(&mut [3.0, 2.0, 0.0], &[], &[0, 0]), 1, "two cost 1.2");
}

fn engine(name: &str, config: EngineConfig) -> Engine {
    Engine::new(load(name, Device::flex()), &config).unwrap()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::greedy() }
}

fn run_one(engine: &mut Engine, prompt: &[u32], params: SamplingParams) -> Vec<Completion> {
    let out = engine.generate(vec![(Prompt::Tokens(prompt.to_vec()), params)], false).unwrap();
    out.into_iter().next().unwrap().completions
}

#[test]
fn engine_greedy_matches_the_reference_continuation() {
    let reference = Reference::read("llama-tiny-f16");
    let mut engine = engine("llama-tiny-f16", EngineConfig::default());
    let n = reference.greedy_new_ids.len();
    let out = run_one(&mut engine, &reference.input_ids, greedy(n));
    assert_eq!(out[0].token_ids, reference.greedy_new_ids);
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    let tokenizer = engine.loaded().tokenizer().unwrap();
    assert_eq!(out[0].text, tokenizer.decode(&reference.greedy_new_ids, true).unwrap());
}

/// One batched step over a paged cache (a whole prompt, then a mixed batch of prefill
/// chunks and single tokens, then a decode over blocks copied for a fork) gives the
/// logits of the contiguous full forward, through the host attention kernel and through
/// the gathered Burn-ops path.
#[test]
fn paged_steps_match_the_full_forward() {
    use ember::quant::kernels::{self, AttentionKernel, KernelPolicy};
    let reference = Reference::read("llama-tiny-f16");
    let loaded = load("llama-tiny-f16", Device::flex());
    let model = &loaded.model;
    let vocab = model.config().vocab_size;
    let ids = &reference.input_ids;
    let full = prompt_logits(&loaded, ids);
    let row = |p: usize| &full[p * vocab..(p + 1) * vocab];
    for (policy, kernel) in [(KernelPolicy::Auto, AttentionKernel::Host), (KernelPolicy::Reference, AttentionKernel::Reference)] {
        kernels::with_policy(policy, || {
            assert_eq!(kernels::select::paged_attention(&Device::flex(), burn::tensor::DType::F32, 64, false).kernel, kernel);
            let mut cache = model.new_paged_cache(32, 4);
            // Sequence A prefills in two chunks, sequence B (the same prompt, other blocks) whole.
            let (table_a, table_b): (Vec<u32>, Vec<u32>) = ((0..16).rev().collect(), (16..32).collect());
            let split = 5;
            let (table_a, table_b) = (&table_a[..], &table_b[..]);
            let first = model.forward_paged(&[chunk(&ids[..split], 0, table_a)], &mut cache).unwrap().try_into_vec_as::<f32>().unwrap();
            assert!(max_abs_diff(&first, row(split - 1)) < 1e-4, "{kernel:?}");
            let last = ids.len() - 1;
            let mixed = model
                .forward_paged(&[chunk(&ids[split..last], split, table_a), chunk(&ids[..], 0, table_b)], &mut cache)
                .unwrap()
                .try_into_vec_as::<f32>()
                .unwrap();
            assert!(max_abs_diff(&mixed[..vocab], row(last - 1)) < 1e-4, "{kernel:?}: chunked prefill");
            assert!(max_abs_diff(&mixed[vocab..], row(last)) < 1e-4, "{kernel:?}: whole prefill beside it");
            let decode = model.forward_paged(&[chunk(&ids[last..], last, table_a)], &mut cache).unwrap().try_into_vec_as::<f32>().unwrap();
            assert!(max_abs_diff(&decode, row(last)) < 1e-4, "{kernel:?}: decode after chunks");
            // A fork: the prompt's blocks copied to others (the last one partly filled),
            // where the next token is written and its context read.
            let mut forked = model.new_paged_cache(32, 4);
            model.forward_paged(&[chunk(&ids[..last], 0, table_b)], &mut forked).unwrap();
            let pairs: Vec<(u32, u32)> = table_b[..last.div_ceil(4)].iter().copied().zip(table_a.iter().copied()).collect();
            forked.copy_blocks(&pairs, model.device());
            let decode = model.forward_paged(&[chunk(&ids[last..], last, table_a)], &mut forked).unwrap().try_into_vec_as::<f32>().unwrap();
            assert!(max_abs_diff(&decode, row(last)) < 1e-4, "{kernel:?}: decode over copied blocks");
            let err = model.forward_paged(&[chunk(&ids[..], 0, &table_a[..1])], &mut cache).unwrap_err();
            assert!(err.to_string().contains("blocks"), "{err}");
        });
    }
}

fn chunk<'a>(tokens: &'a [u32], start: usize, block_table: &'a [u32]) -> SequenceChunk<'a> {
    SequenceChunk { tokens, start, block_table }
}

/// Sixteen prompts of different lengths and budgets: a few run at a time, the others
/// join as slots free up, and every one gets exactly the tokens it gets alone.
fn assert_batching_is_exact(name: &str, config: EngineConfig, expect_preemption: bool) {
    let reference = Reference::read(name);
    let ids = &reference.input_ids;
    let requests: Vec<(Vec<u32>, SamplingParams)> = (0..16)
        .map(|i| {
            let start = i % 5;
            let len = (3 + i * 2).min(ids.len() - start);
            (ids[start..start + len].to_vec(), greedy(3 + (i * 7) % 11))
        })
        .collect();
    let mut engine = engine(name, config);
    let alone: Vec<Vec<u32>> = requests.iter().map(|(p, params)| run_one(&mut engine, p, params.clone())[0].token_ids.clone()).collect();
    let batch: Vec<(Prompt, SamplingParams)> = requests.iter().map(|(p, params)| (Prompt::Tokens(p.clone()), params.clone())).collect();
    let together = engine.generate(batch, false).unwrap();
    for (i, (out, want)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(&out.completions[0].token_ids, want, "{name}: request {i} differs in the batch");
        assert_eq!(out.metrics.completion_tokens, requests[i].1.max_tokens);
    }
    let stats = engine.stats();
    assert_eq!((stats.kv_blocks_used, stats.running, stats.waiting), (0, 0, 0), "{name}: pool back to empty");
    assert_eq!(stats.preemptions > 0, expect_preemption, "{name}: preemptions {}", stats.preemptions);
}

#[test]
fn llama_batched_greedy_equals_alone() {
    let config = EngineConfig { max_num_seqs: 6, ..EngineConfig::default() };
    assert_batching_is_exact("llama-tiny-f16", config, false);
}

#[test]
fn mixtral_batched_greedy_equals_alone() {
    let config = EngineConfig { max_num_seqs: 6, ..EngineConfig::default() };
    assert_batching_is_exact("mixtral-tiny-bf16", config, false);
}

/// A pool of 12 blocks of 4 tokens cannot hold the batch: sequences are preempted and
/// recomputed, and prefills run in chunks of 7 tokens; outputs stay exact.
#[test]
fn preemption_and_chunked_prefill_keep_outputs_exact() {
    let config = EngineConfig { block_size: 4, kv_cache: KvCacheSize::Blocks(12), max_num_batched_tokens: 7, ..EngineConfig::default() };
    assert_batching_is_exact("llama-tiny-f16", config, true);
}

#[test]
fn cancelled_requests_free_their_blocks_at_once() {
    let reference = Reference::read("llama-tiny-f16");
    let mut engine = engine("llama-tiny-f16", EngineConfig { block_size: 4, ..EngineConfig::default() });
    let total = engine.stats().kv_blocks_total;
    let ids: Vec<_> = (0..8).map(|_| engine.add_request(Prompt::Tokens(reference.input_ids.clone()), greedy(30)).unwrap()).collect();
    for _ in 0..3 {
        engine.step().unwrap();
    }
    let used = engine.stats().kv_blocks_used;
    assert!(used > 0);
    for &id in ids.iter().step_by(2) {
        assert!(engine.abort(id));
    }
    let after = engine.stats();
    assert!(after.kv_blocks_used < used, "aborting frees blocks now: {used} -> {}", after.kv_blocks_used);
    assert_eq!(after.running + after.waiting, 4);
    assert!(!engine.abort(ids[0]), "an aborted request is gone");
    let mut finished = 0;
    while engine.has_unfinished() {
        for output in engine.step().unwrap() {
            assert!(ids[1..].iter().step_by(2).any(|&id| id == output.request), "an aborted request produced output");
            finished += usize::from(output.finished.is_some());
        }
    }
    assert_eq!(finished, 4);
    assert_eq!(engine.stats().kv_blocks_used, 0);
    assert_eq!(engine.stats().kv_blocks_total, total);
}

#[test]
fn seeded_sampling_is_the_same_alone_and_in_a_batch() {
    let reference = Reference::read("llama-tiny-f16");
    let mut engine = engine("llama-tiny-f16", EngineConfig::default());
    let sampled = |seed| SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), max_tokens: 12, ignore_eos: true, ..SamplingParams::default() };
    let alone = run_one(&mut engine, &reference.input_ids, sampled(5));
    let mut batch: Vec<(Prompt, SamplingParams)> = (0..6).map(|i| (Prompt::Tokens(reference.input_ids[i..].to_vec()), sampled(100 + i as u64))).collect();
    batch.insert(3, (Prompt::Tokens(reference.input_ids.clone()), sampled(5)));
    let together = engine.generate(batch, false).unwrap();
    assert_eq!(together[3].completions[0].text, alone[0].text);
    assert_eq!(together[3].completions[0].token_ids, alone[0].token_ids);
    let other = run_one(&mut engine, &reference.input_ids, sampled(6));
    assert_ne!(other[0].token_ids, alone[0].token_ids, "another seed samples other tokens");
}

/// `n` completions share the prompt's blocks; completion `i` samples with `seed + i`, so
/// each equals a single request seeded that way (the shared partial block is copied
/// before anyone writes into it).
#[test]
fn parallel_completions_share_the_prompt_and_match_single_requests() {
    let reference = Reference::read("llama-tiny-f16");
    let prompt = &reference.input_ids[..13];
    let mut engine = engine("llama-tiny-f16", EngineConfig { block_size: 4, ..EngineConfig::default() });
    let params = SamplingParams { temperature: 0.8, seed: Some(11), max_tokens: 10, ignore_eos: true, n: 3, ..SamplingParams::default() };
    let out = engine.generate(vec![(Prompt::Tokens(prompt.to_vec()), params.clone())], false).unwrap();
    let completions = &out[0].completions;
    assert_eq!(completions.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(out[0].metrics.completion_tokens, 30);
    for (i, completion) in completions.iter().enumerate() {
        let single = SamplingParams { n: 1, seed: Some(11 + i as u64), ..params.clone() };
        assert_eq!(completion.token_ids, run_one(&mut engine, prompt, single)[0].token_ids, "completion {i}");
    }
    assert_eq!(engine.stats().kv_blocks_used, 0);
}

#[test]
fn logprobs_come_from_the_raw_distribution() {
    let reference = Reference::read("llama-tiny-f16");
    let mut engine = engine("llama-tiny-f16", EngineConfig::default());
    let out = run_one(&mut engine, &reference.input_ids, SamplingParams { logprobs: Some(3), ..greedy(4) });
    let logprobs = &out[0].logprobs;
    assert_eq!(logprobs.len(), 4);
    for (step, (entry, &token)) in logprobs.iter().zip(&out[0].token_ids).enumerate() {
        assert_eq!(entry.token, token);
        assert_eq!(entry.top.len(), 3);
        assert_eq!(entry.top[0].0, token, "greedy picks the most likely token (step {step})");
        assert!(entry.logprob <= 0.0 && (entry.logprob - entry.top[0].1).abs() < 1e-6);
        assert!(entry.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    let total: f64 = logprobs[0].top.iter().map(|&(_, lp)| (lp as f64).exp()).sum();
    assert!(total < 1.0 + 1e-5);
}

#[test]
fn generation_stops_on_stop_token_and_stop_string() {
    let reference = Reference::read("llama-tiny-f16");
    let mut engine = engine("llama-tiny-f16", EngineConfig::default());
    let ids = &reference.input_ids;
    // The greedy continuation is ". The United States to be be the United ...".
    let stop_token = SamplingParams { stop_token_ids: vec![reference.greedy_new_ids[2]], ..greedy(16) };
    let out = run_one(&mut engine, ids, stop_token);
    assert_eq!(out[0].token_ids, reference.greedy_new_ids[..2]);
    assert_eq!(out[0].finish_reason, FinishReason::Stop);

    let stop_string = SamplingParams { stop: vec!["States".into()], ..greedy(16) };
    let out = run_one(&mut engine, ids, stop_string);
    assert_eq!(out[0].text, ". The United ");
    assert_eq!(out[0].finish_reason, FinishReason::Stop);

    let out = run_one(&mut engine, ids, greedy(5));
    assert_eq!(out[0].token_ids.len(), 5);
    assert_eq!(out[0].finish_reason, FinishReason::Length);
}

#[test]
fn bad_requests_are_rejected_and_nothing_runs() {
    let mut engine = engine("llama-tiny-f16", EngineConfig { max_model_len: Some(64), ..EngineConfig::default() });
    let err = engine.generate(vec![(Prompt::Tokens(vec![1, 2]), greedy(2)), (Prompt::Tokens(vec![0, 5000]), greedy(1))], false).unwrap_err();
    assert!(err.to_string().contains("request 1") && err.to_string().contains("5000"), "{err}");
    assert!(!engine.has_unfinished(), "the valid request was withdrawn too");
    for (prompt, params, needle) in [
        (Prompt::Tokens(vec![]), greedy(1), "empty"),
        (Prompt::Tokens(vec![1; 64]), greedy(1), "context is 64"),
        (Prompt::Tokens(vec![1]), SamplingParams { n: 0, ..greedy(1) }, "n must"),
        (Prompt::Tokens(vec![1]), SamplingParams { logprobs: Some(50), ..greedy(1) }, "logprobs"),
        (Prompt::Tokens(vec![1]), SamplingParams { min_p: 2.0, ..greedy(1) }, "min_p"),
    ] {
        let err = engine.add_request(prompt, params).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = Engine::new(load("llama-tiny-f16", Device::flex()), &EngineConfig { kv_cache: KvCacheSize::Bytes(10), ..EngineConfig::default() }).err().unwrap();
    assert!(err.to_string().contains("at least one block"), "{err}");
}

/// A sequence that reaches the engine's context stops with `length`.
#[test]
fn generation_ends_at_the_context_length() {
    let mut engine = engine("llama-tiny-f16", EngineConfig { max_model_len: Some(10), ..EngineConfig::default() });
    let out = run_one(&mut engine, &[1, 2, 3, 4, 5, 6], greedy(100));
    assert_eq!(out[0].token_ids.len(), 4);
    assert_eq!(out[0].finish_reason, FinishReason::Length);
}

/// On a Cube device, decode steps run the paged attention kernel (prefill steps the
/// Burn-ops path); a batch there produces the tokens the Flex engine produces.
#[test]
fn wgpu_engine_with_the_decode_kernel_matches_flex() {
    use ember::quant::kernels::{self, AttentionKernel};
    let wgpu = Device::wgpu(Default::default());
    assert_eq!(kernels::select::paged_attention(&wgpu, burn::tensor::DType::F32, 64, true).kernel, AttentionKernel::PagedDecode);
    assert_eq!(kernels::select::paged_attention(&wgpu, burn::tensor::DType::F32, 64, false).kernel, AttentionKernel::Reference);
    let reference = Reference::read("llama-tiny-f16");
    let requests: Vec<(Prompt, SamplingParams)> =
        (0..4).map(|i| (Prompt::Tokens(reference.input_ids[i * 3..].to_vec()), greedy(6 + i))).collect();
    let tokens = |engine: &mut Engine| -> Vec<Vec<u32>> {
        engine.generate(requests.clone(), false).unwrap().into_iter().map(|o| o.completions[0].token_ids.clone()).collect()
    };
    let on_flex = tokens(&mut engine("llama-tiny-f16", EngineConfig::default()));
    let config = EngineConfig { block_size: 4, kv_cache: KvCacheSize::Blocks(64), ..EngineConfig::default() };
    let on_wgpu = tokens(&mut Engine::new(load("llama-tiny-f16", wgpu), &config).unwrap());
    assert_eq!(on_wgpu, on_flex);
}

/// First come, first served: a request that does not fit yet holds its place, and a
/// smaller one behind it waits rather than overtaking it.
#[test]
fn waiting_requests_are_admitted_in_arrival_order() {
    let mut engine = engine("llama-tiny-f16", EngineConfig { block_size: 4, kv_cache: KvCacheSize::Blocks(8), ..EngineConfig::default() });
    let prompt = |len: usize| Prompt::Tokens((0..len as u32).map(|i| 10 + i).collect());
    let first = engine.add_request(prompt(20), greedy(10)).unwrap();
    let big = engine.add_request(prompt(28), greedy(2)).unwrap();
    let small = engine.add_request(prompt(4), greedy(2)).unwrap();
    let mut order = Vec::new();
    while engine.has_unfinished() {
        let stats = engine.stats();
        for output in engine.step().unwrap() {
            if output.finished.is_some() {
                order.push(output.request);
            }
        }
        assert!(stats.running <= 1 || order.contains(&first), "nothing joins beside the first request while the big one waits");
    }
    assert_eq!(order, [first, big, small]);
    assert_eq!(engine.stats().kv_blocks_used, 0);
}
