//! The `ember` binary, run as users run it.

use std::collections::HashMap;
use std::process::Command;

use ember::checkpoint::SafetensorsFile;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;

use crate::common::{fixture, max_abs_diff, test_data, Reference};

fn ember(args: &[&str], cache: &TempDir) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .env("XDG_CACHE_HOME", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("ember runs");
    assert!(
        output.status.success(),
        "ember {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn run_on_embedded_default_prints_readable_text() {
    let cache = TempDir::new().unwrap();
    let out = ember(&["run", "--prompt", "The government said", "--max-tokens", "12"], &cache);
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    assert!(stdout.starts_with("The government said"), "{stdout}");
    let continuation = &stdout["The government said".len()..];
    let words = continuation.split_whitespace().filter(|w| w.chars().any(char::is_alphabetic)).count();
    assert!(words >= 3, "expected a few words of English, got {continuation:?}");
    assert!(!stdout.contains('\u{FFFD}'));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn run_chat_applies_the_template() {
    let cache = TempDir::new().unwrap();
    let model = fixture("llama-tiny-f16");
    let out = ember(&["run", "--model", model.to_str().unwrap(), "--prompt", "Hello", "--chat", "--max-tokens", "4"], &cache);
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt tokens"));
}

#[test]
fn inspect_describes_both_fixtures() {
    let cache = TempDir::new().unwrap();
    let llama = fixture("llama-tiny-f16");
    let out = String::from_utf8(ember(&["inspect", "--model", llama.to_str().unwrap()], &cache).stdout).unwrap();
    for needle in ["LlamaForCausalLM", "4 layers, hidden 256", "4 heads (2 kv, head_dim 64)", "float16", "2 shards", "F16 x"] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let mixtral = fixture("mixtral-tiny-bf16");
    let out = String::from_utf8(ember(&["inspect", "--model", mixtral.to_str().unwrap()], &cache).stdout).unwrap();
    for needle in ["MixtralForCausalLM", "4 per layer, top-2", "bfloat16", "BF16 x", "none (float checkpoint)"] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn logits_from_input_ids_match_reference() {
    let cache = TempDir::new().unwrap();
    let model = fixture("mixtral-tiny-bf16");
    let out_path = cache.path().join("ours.safetensors");
    let reference_file = model.join("reference.safetensors");
    ember(
        &["logits", "--model", model.to_str().unwrap(), "--input-ids", reference_file.to_str().unwrap(), "--out", out_path.to_str().unwrap()],
        &cache,
    );
    let reference = Reference::read("mixtral-tiny-bf16");
    let ours = SafetensorsFile::open(&out_path).unwrap();
    let logits = ours.tensor("logits").unwrap().unwrap();
    assert_eq!(logits.shape, vec![reference.input_ids.len(), 2048]);
    let diff = max_abs_diff(&logits.to_f32_vec().unwrap(), &reference.logits);
    assert!(diff <= 1e-3 * reference.logit_range(), "diff {diff}");
}

#[test]
fn logits_from_prompt_text_match_reference() {
    let cache = TempDir::new().unwrap();
    let model = fixture("llama-tiny-f16");
    let reference = Reference::read("llama-tiny-f16");
    let out_path = cache.path().join("ours.safetensors");
    ember(&["logits", "--model", model.to_str().unwrap(), "--prompt", &reference.prompt, "--out", out_path.to_str().unwrap()], &cache);
    let ours = SafetensorsFile::open(&out_path).unwrap();
    let ids: Vec<u32> = ours.tensor("input_ids").unwrap().unwrap().to_i64_vec().unwrap().into_iter().map(|v| v as u32).collect();
    assert_eq!(ids, reference.input_ids);
    let diff = max_abs_diff(&ours.tensor("logits").unwrap().unwrap().to_f32_vec().unwrap(), &reference.logits);
    assert!(diff <= 1e-3 * reference.logit_range(), "diff {diff}");
}

/// A real Mixtral-8x7B config with no weights on disk: dummy weights, one layer, one
/// forward step on the Flex device.
#[test]
fn dummy_mixtral_8x7b_runs_one_layer_forward() {
    let cache = TempDir::new().unwrap();
    let ids: Vec<u8> = [1i64, 415, 5565, 302].iter().flat_map(|v| v.to_le_bytes()).collect();
    let ids_path = cache.path().join("ids.safetensors");
    let view = TensorView::new(Dtype::I64, vec![4], &ids).unwrap();
    safetensors::serialize_to_file([("input_ids", view)], None::<HashMap<String, String>>, &ids_path).unwrap();
    let out_path = cache.path().join("logits.safetensors");
    let model = test_data("mixtral-8x7b");
    ember(
        &[
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--load-format",
            "dummy",
            "--dtype",
            "bf16",
            "--num-layers",
            "1",
            "--input-ids",
            ids_path.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ],
        &cache,
    );
    let out = SafetensorsFile::open(&out_path).unwrap();
    let logits = out.tensor("logits").unwrap().unwrap();
    assert_eq!(logits.shape, vec![4, 32000]);
    assert!(logits.to_f32_vec().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn bad_model_path_is_a_clear_error() {
    let cache = TempDir::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["inspect", "--model", "/nonexistent/model/dir"])
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/model/dir") && stderr.contains("not found"), "{stderr}");
}

/// A device that is not there (no CUDA driver here; no eighth GPU on a GPU machine) is one
/// error line naming the device and the backend's reason, not a backtrace per thread.
#[test]
fn unavailable_device_is_one_clear_error_line() {
    let cache = TempDir::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["run", "--device", "cuda:7", "--prompt", "x", "--max-tokens", "1"])
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: device `cuda:7`: ") && lines[0].len() < 400, "{stderr}");
}

#[test]
fn inspect_shows_the_scheme_of_each_layer() {
    let cache = TempDir::new().unwrap();
    let gptq = fixture("mixtral-gptq-4bit-g128");
    let out = String::from_utf8(ember(&["inspect", "--model", gptq.to_str().unwrap()], &cache).stdout).unwrap();
    for needle in [
        "gptq bits=4 group_size=128 desc_act=false sym=true",
        "model.layers.0.mlp.experts.3.down_proj",
        "int4 g128 sym (gptq) x",
        "model.layers.0.mlp.gate",
        "lm_head",
        "float x",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let router = out.lines().find(|l| l.contains("model.layers.0.mlp.gate ")).unwrap();
    assert!(router.ends_with("float"), "the router stays float: {router}");

    let ct = fixture("llama-ct-w8a8-int8");
    let out = String::from_utf8(ember(&["inspect", "--model", ct.to_str().unwrap()], &cache).stdout).unwrap();
    assert!(out.contains("w8a8-int8 per-channel (compressed-tensors) x28"), "{out}");
}

/// A repo id resolves through the standard Hugging Face cache layout
/// (`$HF_HOME/hub/models--org--name/{refs/main, snapshots/<rev>/}`), offline.
#[test]
fn hub_ids_resolve_through_the_local_hf_cache() {
    let home = TempDir::new().unwrap();
    let repo = home.path().join("hub").join("models--ember-test--tiny-llama");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    for entry in std::fs::read_dir(fixture("llama-tiny-f16")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["inspect", "--model", model])
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let found = run("ember-test/tiny-llama");
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert!(String::from_utf8_lossy(&found.stdout).contains("0123abcd"));
    let missing = run("ember-test/not-there");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("ember-test/not-there") && stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}

/// `ember quantize` writes a checkpoint that `ember perplexity` scores exactly as the same
/// scheme applied at load.
#[test]
fn quantize_then_perplexity_matches_online_quantization() {
    let cache = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let model = fixture("llama-tiny-f16");
    let text = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/perplexity.txt");
    let (model, text, out_dir) = (model.to_str().unwrap(), text.to_str().unwrap(), out.path().to_str().unwrap());
    let stdout = |o: std::process::Output| String::from_utf8(o.stdout).unwrap();
    let report = stdout(ember(&["quantize", "--model", model, "--scheme", "w4a16", "--group-size", "64", "--out", out_dir], &cache));
    assert!(report.contains("28 linears quantized (int4 g64 sym)"), "{report}");
    let exported = stdout(ember(&["perplexity", "--model", out_dir, "--file", text], &cache));
    let online = stdout(ember(&["perplexity", "--model", model, "--file", text, "--quantization", "int4", "--group-size", "64"], &cache));
    let ppl = |s: &str| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or_else(|| panic!("no perplexity in {s:?}"));
    assert!(exported.starts_with("perplexity ") && exported.contains("tokens/s"), "{exported}");
    assert_eq!(ppl(&exported), ppl(&online));
}

/// Prompts as text, token ids and chat messages, with per-line sampling, in and out of
/// JSONL, in input order; the greedy token-id line reproduces the reference tokens.
#[test]
fn generate_round_trips_a_jsonl_file() {
    let cache = TempDir::new().unwrap();
    let reference = Reference::read("llama-tiny-f16");
    let input = cache.path().join("prompts.jsonl");
    let lines = [
        serde_json::json!("The government said"),
        serde_json::json!({ "prompt_token_ids": reference.input_ids, "max_tokens": 16, "ignore_eos": true }),
        serde_json::json!({ "prompt": "Hundreds of people", "n": 2, "temperature": 0.9, "seed": 3, "max_tokens": 6, "stop": ["zzz"] }),
        serde_json::json!({ "messages": [{ "role": "user", "content": "Hello" }], "max_tokens": 4, "logprobs": 2 }),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text + "\n").unwrap();
    let output = cache.path().join("out.jsonl");
    let model = fixture("llama-tiny-f16");
    let args = ["generate", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--max-tokens", "8"];
    let out = ember(&args, &cache);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));
    let results: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 4);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i);
    }
    let greedy: Vec<u32> = serde_json::from_value(results[1]["outputs"][0]["token_ids"].clone()).unwrap();
    assert_eq!(greedy, reference.greedy_new_ids, "token-id prompt, greedy");
    assert_eq!(results[1]["outputs"][0]["finish_reason"], "length");
    assert!(results[0]["outputs"][0]["token_ids"].as_array().unwrap().len() <= 8, "--max-tokens is the default");
    assert_eq!(results[2]["outputs"].as_array().unwrap().len(), 2, "n = 2");
    assert_eq!(results[2]["usage"]["completion_tokens"].as_u64().unwrap() as usize, 12);
    let logprobs = results[3]["outputs"][0]["logprobs"].as_array().unwrap();
    assert!(!logprobs.is_empty() && logprobs[0]["top"].as_array().unwrap().len() == 2);

    // A bad line is reported with its number and nothing runs.
    std::fs::write(&input, "\"fine\"\n{\"prompt\": \"x\", \"temprature\": 1}\n").unwrap();
    let failed = Command::new(env!("CARGO_BIN_EXE_ember")).args(args).env("XDG_CACHE_HOME", cache.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(stderr.contains("line 2") && stderr.contains("temprature"), "{stderr}");
}

#[test]
fn bench_on_dummy_weights_prints_its_table_and_json() {
    let cache = TempDir::new().unwrap();
    let model = fixture("llama-tiny-f16");
    let json = cache.path().join("bench.json");
    let args = [
        "bench", "--model", model.to_str().unwrap(), "--load-format", "dummy", "--num-layers", "2", "--batch-sizes", "1,4",
        "--input-len", "16", "--output-len", "8", "--json", json.to_str().unwrap(),
    ];
    let out = ember(&args, &cache);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("TTFT ms") && stdout.contains("output tok/s"), "{stdout}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.iter().map(|r| r["batch_size"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 4]);
    for row in &rows {
        assert!(row["output_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(row["preemptions"], 0);
    }
}

#[test]
fn check_reports_every_fixture_clean() {
    let cache = TempDir::new().unwrap();
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("config.json").exists() {
            continue;
        }
        let out = ember(&["check", dir.to_str().unwrap()], &cache);
        let report = String::from_utf8(out.stdout).unwrap();
        assert!(report.contains("result         clean"), "{}:\n{report}", dir.display());
        assert!(!report.contains("problem"), "{report}");
    }
}

#[test]
fn check_names_each_problem_of_a_broken_checkpoint() {
    use crate::common::rewrite_fixture;
    let broken = rewrite_fixture(
        "llama-gptq-4bit-g128",
        |_| {},
        |tensors| {
            let nan = half::f16::NAN.to_le_bytes();
            let scales = tensors.iter_mut().find(|t| t.name == "model.layers.1.mlp.up_proj.scales").unwrap();
            scales.bytes[6..8].copy_from_slice(&nan);
            let g_idx = tensors.iter_mut().find(|t| t.name == "model.layers.2.self_attn.o_proj.g_idx").unwrap();
            g_idx.bytes[0..4].copy_from_slice(&7i32.to_le_bytes());
            let qweight = tensors.iter_mut().find(|t| t.name == "model.layers.3.mlp.gate_proj.qweight").unwrap();
            qweight.shape.reverse();
            tensors.retain(|t| t.name != "model.layers.0.post_attention_layernorm.weight");
        },
    );
    let output = Command::new(env!("CARGO_BIN_EXE_ember")).args(["check", broken.path().to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success(), "a broken checkpoint must fail the check");
    let report = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "`model.layers.1.mlp.up_proj.scales` holds 1 non-finite values",
        "`model.layers.2.self_attn.o_proj.g_idx` names group 7, but the layer has 2 groups",
        "model.layers.3.mlp.gate_proj.qweight",
        "`model.layers.0.post_attention_layernorm.weight` is missing",
        "result         4 problems",
    ] {
        assert!(report.contains(needle), "missing {needle:?} in:\n{report}");
    }
}
