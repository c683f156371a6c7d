//! Generated bad inputs against every parser: corrupted safetensors files, shard
//! indexes, configs and quantized tensors. Every case must end in a typed error or a
//! load that works — a panic fails the test. The generators are seeded, so CI explores
//! the same cases every run; each test prints how its cases ended.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use burn::tensor::Device;
use ember::checkpoint::{SafetensorsCheckpoint, SafetensorsFile};
use ember::quant::{ComputeDtype, TensorSource};
use ember::{load_model, LoadOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{fixture, rewrite_fixture};

const CASES: u32 = 1000;

/// Runs `check` over `CASES` generated values; it returns whether the input loaded.
/// Prints the tally to the real stderr, past the test harness's capture.
fn run_cases<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> bool) {
    let config = Config { cases: CASES, failure_persistence: None, max_shrink_iters: 200, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let (loaded, refused) = (Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&strategy, |value| {
        let counter = if check(value) { &loaded } else { &refused };
        counter.set(counter.get() + 1);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{name}: {failure}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "{name}: {} generated cases, {} loaded, {} refused with a typed error",
        loaded.get() + refused.get(),
        loaded.get(),
        refused.get()
    );
    assert!(loaded.get() + refused.get() >= CASES);
}

// ---------------------------------------------------------------- safetensors headers

/// Numbers a lying header would use.
fn wild_number() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..64, Just(u32::MAX as u64), Just(1 << 40), Just(i64::MAX as u64), Just(u64::MAX), any::<u64>()]
}

#[derive(Debug, Clone)]
enum HeaderEdit {
    Offsets { tensor: usize, start: u64, end: u64 },
    Shape { tensor: usize, shape: Vec<u64> },
    Dtype { tensor: usize, dtype: &'static str },
    Remove { tensor: usize },
    NotAnObject(Value),
}

#[derive(Debug, Clone)]
enum ByteEdit {
    HeaderLength(u64),
    Truncate(usize),
    Flip { at: usize, byte: u8 },
    Append(Vec<u8>),
}

const DTYPES: [&str; 14] = ["F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F64", "C64", "Q4"];

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    prop_oneof![
        (0usize..3, wild_number(), wild_number()).prop_map(|(tensor, start, end)| HeaderEdit::Offsets { tensor, start, end }),
        (0usize..3, (0u64..24).prop_map(|s| s * 2)).prop_map(|(tensor, end)| HeaderEdit::Offsets { tensor, start: end / 2, end }),
        (0usize..3, prop::collection::vec(wild_number(), 0..5)).prop_map(|(tensor, shape)| HeaderEdit::Shape { tensor, shape }),
        (0usize..3, prop::collection::vec(0u64..8, 0..4)).prop_map(|(tensor, shape)| HeaderEdit::Shape { tensor, shape }),
        (0usize..3, prop::sample::select(DTYPES.to_vec())).prop_map(|(tensor, dtype)| HeaderEdit::Dtype { tensor, dtype }),
        (0usize..3).prop_map(|tensor| HeaderEdit::Remove { tensor }),
        prop_oneof![Just(json!([])), Just(json!(null)), Just(json!("x")), Just(json!({ "a": 1 })), Just(json!({ "a": { "dtype": "F32" } }))]
            .prop_map(HeaderEdit::NotAnObject),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        wild_number().prop_map(ByteEdit::HeaderLength),
        (0usize..400).prop_map(ByteEdit::Truncate),
        (0usize..400, any::<u8>()).prop_map(|(at, byte)| ByteEdit::Flip { at, byte }),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(ByteEdit::Append),
    ]
}

const TENSORS: [(&str, &str, [usize; 2]); 3] = [("a", "F32", [2, 3]), ("b", "I32", [4, 1]), ("c", "F16", [3, 2])];

/// A valid file's header and data, then the edits.
fn corrupted_file(header_edits: &[HeaderEdit], byte_edits: &[ByteEdit]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape) in TENSORS {
        let bytes = shape[0] * shape[1] * if dtype == "F16" { 2 } else { 4 };
        header.insert(name.into(), json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes] }));
        offset += bytes;
    }
    let data: Vec<u8> = (0..offset).map(|i| (i * 37 % 251) as u8).collect();
    let mut header = Value::Object(header);
    for edit in header_edits {
        let entry = |header: &mut Value, tensor: usize| header.get(TENSORS[tensor].0).filter(|e| e.is_object()).cloned();
        match edit {
            HeaderEdit::Offsets { tensor, start, end } => {
                if entry(&mut header, *tensor).is_some() {
                    header[TENSORS[*tensor].0]["data_offsets"] = json!([start, end]);
                }
            }
            HeaderEdit::Shape { tensor, shape } => {
                if entry(&mut header, *tensor).is_some() {
                    header[TENSORS[*tensor].0]["shape"] = json!(shape);
                }
            }
            HeaderEdit::Dtype { tensor, dtype } => {
                if entry(&mut header, *tensor).is_some() {
                    header[TENSORS[*tensor].0]["dtype"] = json!(dtype);
                }
            }
            HeaderEdit::Remove { tensor } => {
                if let Some(map) = header.as_object_mut() {
                    map.remove(TENSORS[*tensor].0);
                }
            }
            HeaderEdit::NotAnObject(value) => header = value.clone(),
        }
    }
    let text = header.to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    bytes.extend(&data);
    for edit in byte_edits {
        match edit {
            ByteEdit::HeaderLength(len) => bytes[..8].copy_from_slice(&len.to_le_bytes()),
            ByteEdit::Truncate(at) => bytes.truncate(*at),
            ByteEdit::Flip { at, byte } => {
                if let Some(b) = bytes.get_mut(*at) {
                    *b = *byte;
                }
            }
            ByteEdit::Append(extra) => bytes.extend(extra),
        }
    }
    bytes
}

/// Opens a file and reads every tensor it lists; whatever it hands out must be in bounds
/// and sized as its dtype × shape says.
fn open_and_read(path: &Path) -> bool {
    let Ok(file) = SafetensorsFile::open(path) else { return false };
    let mut all = true;
    for name in file.names().collect::<Vec<_>>() {
        match file.tensor(&name) {
            Some(Ok(tensor)) => {
                let elements: usize = tensor.shape.iter().product();
                assert_eq!(tensor.bytes.len(), elements * tensor.dtype.size_in_bytes(), "`{name}` of {path:?}");
                std::hint::black_box(tensor.bytes.iter().map(|&b| b as u64).sum::<u64>());
            }
            Some(Err(_)) | None => all = false,
        }
    }
    all
}

#[test]
fn corrupted_safetensors_headers_end_in_typed_errors() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.safetensors");
    let edits = (prop::collection::vec(header_edit(), 0..3), prop::collection::vec(byte_edit(), 0..3))
        .prop_filter("at least one edit", |(h, b)| !h.is_empty() || !b.is_empty());
    run_cases("safetensors headers", edits, |(header_edits, byte_edits)| {
        std::fs::write(&path, corrupted_file(&header_edits, &byte_edits)).unwrap();
        open_and_read(&path)
    });
}

// ---------------------------------------------------------------- shard indexes

#[derive(Debug, Clone)]
enum IndexEdit {
    Place { tensor: &'static str, shard: Value },
    Unlist(&'static str),
    /// The tensor is stored in the second shard as well.
    StoreTwice(&'static str),
    DeleteShard(&'static str),
    Replace(&'static str),
}

const SHARDS: [&str; 2] = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

fn index_edit() -> impl Strategy<Value = IndexEdit> {
    let tensor = prop::sample::select(vec!["a", "b", "c", "ghost"]);
    let shard = prop_oneof![
        prop::sample::select(vec![SHARDS[0], SHARDS[1], "missing.safetensors", "../model-00001-of-00002.safetensors", "", "sub/x.safetensors", "."])
            .prop_map(|s| json!(s)),
        Just(json!(3)),
        Just(json!(null)),
        Just(json!([SHARDS[0]])),
    ];
    prop_oneof![
        (tensor.clone(), shard).prop_map(|(tensor, shard)| IndexEdit::Place { tensor, shard }),
        tensor.clone().prop_map(IndexEdit::Unlist),
        prop::sample::select(vec!["a", "b"]).prop_map(IndexEdit::StoreTwice),
        prop::sample::select(SHARDS.to_vec()).prop_map(IndexEdit::DeleteShard),
        prop::sample::select(vec!["{", "[]", "{\"weight_map\": []}", "{\"weight_map\": {}}", "{\"metadata\": {}}", ""]).prop_map(IndexEdit::Replace),
    ]
}

fn write_shard(path: &Path, names: &[&str]) {
    let bytes: Vec<Vec<u8>> = names.iter().map(|n| n.bytes().cycle().take(16).collect()).collect();
    let views: Vec<(String, TensorView)> =
        names.iter().zip(&bytes).map(|(n, b)| (n.to_string(), TensorView::new(Dtype::F32, vec![2, 2], b).unwrap())).collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path).unwrap();
}

#[test]
fn corrupted_shard_indexes_end_in_typed_errors() {
    let strategy = prop::collection::vec(index_edit(), 1..4);
    run_cases("shard indexes", strategy, |edits| {
        let dir = TempDir::new().unwrap();
        let mut second = vec!["c"];
        let mut map = json!({ "a": SHARDS[0], "b": SHARDS[0], "c": SHARDS[1] });
        let mut index_text = None;
        let mut deleted = Vec::new();
        for edit in &edits {
            match edit {
                IndexEdit::Place { tensor, shard } => map[*tensor] = shard.clone(),
                IndexEdit::Unlist(tensor) => {
                    map.as_object_mut().unwrap().remove(*tensor);
                }
                IndexEdit::StoreTwice(tensor) => second.push(tensor),
                IndexEdit::DeleteShard(shard) => deleted.push(*shard),
                IndexEdit::Replace(text) => index_text = Some(text.to_string()),
            }
        }
        second.sort_unstable();
        second.dedup();
        write_shard(&dir.path().join(SHARDS[0]), &["a", "b"]);
        write_shard(&dir.path().join(SHARDS[1]), &second);
        for shard in deleted {
            let _ = std::fs::remove_file(dir.path().join(shard)); // may be listed twice
        }
        let index = index_text.unwrap_or_else(|| json!({ "metadata": {}, "weight_map": map }).to_string());
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let Ok(checkpoint) = SafetensorsCheckpoint::open(dir.path()) else { return false };
        // Whatever opened must be consistent: each tensor owned by one file, readable.
        for name in checkpoint.tensor_names() {
            let owners = checkpoint.files().iter().filter(|f| f.meta(&name).is_some()).count();
            assert_eq!(owners, 1, "`{name}` stored in {owners} shards was accepted: {edits:?}");
            assert!(checkpoint.meta(&name).is_some());
        }
        true
    });
}

// ---------------------------------------------------------------- configs

#[derive(Debug, Clone)]
enum ConfigEdit {
    Remove(&'static str),
    Set(&'static str, Value),
    RemoveQuant(&'static str),
    SetQuant(&'static str, Value),
}

const CONFIG_KEYS: [&str; 18] = [
    "architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "rope_scaling", "tie_word_embeddings",
    "sliding_window", "dtype", "attention_bias", "quantization_config", "unknown_extra_field",
];
const QUANT_KEYS: [&str; 10] = ["bits", "group_size", "desc_act", "sym", "quant_method", "checkpoint_format", "format", "dynamic", "lm_head", "zero_point"];

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![-1i64, 0, 1, 2, 3, 4, 7, 8, 16, 32, 64, 100, 128, 256, 512, 768, 1 << 20, 1 << 40, i64::MIN, i64::MAX])
            .prop_map(|n| json!(n)),
        prop::sample::select(vec![0.5f64, -1.0, 1e-30, 1e30, 3.7]).prop_map(|f| json!(f)),
        prop::sample::select(vec!["", "gptq", "awq", "fp8", "llama", "LlamaForCausalLM", "float16", "linear", "nope"]).prop_map(|s| json!(s)),
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(json!([])),
        Just(json!(["MixtralForCausalLM"])),
        Just(json!({ "rope_type": "llama3", "factor": 0 })),
        Just(json!({ "type": "linear", "factor": -2.0 })),
        Just(json!({})),
        Just(json!({ "re:.*": { "bits": 3 } })),
    ]
}

fn config_edit() -> impl Strategy<Value = ConfigEdit> {
    let key = prop::sample::select(CONFIG_KEYS.to_vec());
    let quant_key = prop::sample::select(QUANT_KEYS.to_vec());
    prop_oneof![
        key.clone().prop_map(ConfigEdit::Remove),
        (key, json_value()).prop_map(|(k, v)| ConfigEdit::Set(k, v)),
        quant_key.clone().prop_map(ConfigEdit::RemoveQuant),
        (quant_key, json_value()).prop_map(|(k, v)| ConfigEdit::SetQuant(k, v)),
    ]
}

/// Loads `dir` on Flex and, if it loads, runs a forward pass over three tokens.
fn load_and_run(dir: &Path) -> bool {
    let Ok(loaded) = load_model(dir, &LoadOptions::new(Device::flex(), ComputeDtype::F32)) else { return false };
    let vocab = loaded.model.config().vocab_size;
    let ids: Vec<u32> = [1u32, 5, 9].into_iter().filter(|&t| (t as usize) < vocab).collect();
    if !ids.is_empty() {
        let mut cache = loaded.model.new_cache();
        let logits = loaded.model.forward_ids(&ids, &mut cache);
        assert_eq!(logits.dims(), [ids.len(), vocab]);
    }
    true
}

/// A directory that links to a fixture's files, with its own config.json.
fn with_config(name: &str, config: &Value) -> TempDir {
    let dir = TempDir::new().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "config.json" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn mutated_configs_end_in_typed_errors_or_working_models() {
    let base: Value = serde_json::from_str(&std::fs::read_to_string(fixture("llama-gptq-4bit-g128").join("config.json")).unwrap()).unwrap();
    run_cases("configs and quantization configs", prop::collection::vec(config_edit(), 1..4), |edits| {
        let mut config = base.clone();
        for edit in &edits {
            match edit {
                ConfigEdit::Remove(key) => {
                    config.as_object_mut().unwrap().remove(*key);
                }
                ConfigEdit::Set(key, value) => config[*key] = value.clone(),
                ConfigEdit::RemoveQuant(key) => {
                    if let Some(quant) = config.get_mut("quantization_config").and_then(Value::as_object_mut) {
                        quant.remove(*key);
                    }
                }
                ConfigEdit::SetQuant(key, value) => {
                    if let Some(quant) = config.get_mut("quantization_config").filter(|q| q.is_object()) {
                        quant[*key] = value.clone();
                    }
                }
            }
        }
        load_and_run(with_config("llama-gptq-4bit-g128", &config).path())
    });
}

// ---------------------------------------------------------------- quantized tensors

#[derive(Debug, Clone)]
enum TensorEdit {
    /// Drops the last element along a dimension.
    Shrink { tensor: usize, dim: usize },
    Transpose(usize),
    Flatten(usize),
    Retype { tensor: usize, dtype: Dtype },
    Remove(usize),
    /// Overwrites one 4-byte value.
    Poke { tensor: usize, at: usize, value: [u8; 4] },
}

const QUANT_TENSORS: [&str; 8] = [
    "model.layers.0.self_attn.q_proj.qweight",
    "model.layers.0.self_attn.q_proj.qzeros",
    "model.layers.0.self_attn.q_proj.scales",
    "model.layers.0.self_attn.q_proj.g_idx",
    "model.layers.0.mlp.down_proj.qweight",
    "model.layers.0.mlp.down_proj.scales",
    "model.layers.0.mlp.down_proj.g_idx",
    "model.layers.0.mlp.down_proj.qzeros",
];

fn tensor_edit() -> impl Strategy<Value = TensorEdit> {
    let tensor = 0usize..QUANT_TENSORS.len();
    let poke = prop_oneof![
        Just(f32::NAN.to_le_bytes()),
        Just(f32::INFINITY.to_le_bytes()),
        Just((half::f16::NAN.to_bits() as u32 | (half::f16::INFINITY.to_bits() as u32) << 16).to_le_bytes()),
        Just((-1i32).to_le_bytes()),
        Just(i32::MAX.to_le_bytes()),
        Just(2i32.to_le_bytes()),
        any::<[u8; 4]>(),
    ];
    prop_oneof![
        (tensor.clone(), 0usize..2).prop_map(|(tensor, dim)| TensorEdit::Shrink { tensor, dim }),
        tensor.clone().prop_map(TensorEdit::Transpose),
        tensor.clone().prop_map(TensorEdit::Flatten),
        (tensor.clone(), prop::sample::select(vec![Dtype::F16, Dtype::F32, Dtype::I32, Dtype::U8, Dtype::I64])).prop_map(|(tensor, dtype)| TensorEdit::Retype { tensor, dtype }),
        tensor.clone().prop_map(TensorEdit::Remove),
        (tensor.clone(), 0usize..4096, poke.clone()).prop_map(|(tensor, at, value)| TensorEdit::Poke { tensor, at, value }),
        (tensor, 0usize..4096, poke).prop_map(|(tensor, at, value)| TensorEdit::Poke { tensor, at, value }),
    ]
}

fn apply_tensor_edit(tensors: &mut Vec<crate::common::StoredTensor>, edit: &TensorEdit) {
    let index = |t: usize| QUANT_TENSORS[t];
    let find = |tensors: &mut Vec<crate::common::StoredTensor>, t: usize| tensors.iter().position(|s| s.name == index(t));
    let Some(i) = find(tensors, match edit {
        TensorEdit::Shrink { tensor, .. } | TensorEdit::Retype { tensor, .. } | TensorEdit::Poke { tensor, .. } => *tensor,
        TensorEdit::Transpose(t) | TensorEdit::Flatten(t) | TensorEdit::Remove(t) => *t,
    }) else {
        return;
    };
    let stored = &mut tensors[i];
    let element = stored.dtype.bitsize() / 8;
    match edit {
        TensorEdit::Shrink { dim, .. } => {
            let dim = (*dim).min(stored.shape.len().saturating_sub(1));
            if stored.shape.is_empty() || stored.shape[dim] == 0 {
                return;
            }
            let outer: usize = stored.shape[..dim].iter().product();
            let inner: usize = stored.shape[dim + 1..].iter().product::<usize>() * element;
            let rows = stored.shape[dim];
            let mut bytes = Vec::new();
            for o in 0..outer {
                let start = o * rows * inner;
                bytes.extend_from_slice(&stored.bytes[start..start + (rows - 1) * inner]);
            }
            stored.shape[dim] -= 1;
            stored.bytes = bytes;
        }
        TensorEdit::Transpose(_) => stored.shape.reverse(),
        TensorEdit::Flatten(_) => stored.shape = vec![stored.shape.iter().product()],
        TensorEdit::Retype { dtype, .. } => {
            let elements = stored.bytes.len() / (dtype.bitsize() / 8);
            stored.dtype = *dtype;
            stored.shape = vec![elements];
            stored.bytes.truncate(elements * (dtype.bitsize() / 8));
        }
        TensorEdit::Remove(_) => {
            tensors.remove(i);
        }
        TensorEdit::Poke { at, value, .. } => {
            let len = stored.bytes.len();
            if len >= 4 {
                let at = (at * 4) % (len - len % 4).max(4);
                stored.bytes[at..at + 4].copy_from_slice(value);
            }
        }
    }
}

#[test]
fn mutated_quantized_tensors_end_in_typed_errors_or_working_models() {
    let non_finite_loaded = Cell::new(0);
    run_cases("quantized tensors", prop::collection::vec(tensor_edit(), 1..3), |edits| {
        let dir = rewrite_fixture(
            "llama-gptq-4bit-g128",
            |config| config["num_hidden_layers"] = json!(1),
            |tensors| {
                tensors.retain(|t| !t.name.contains("layers.") || t.name.contains("layers.0."));
                for edit in &edits {
                    apply_tensor_edit(tensors, edit);
                }
            },
        );
        let loaded = load_and_run(dir.path());
        if loaded {
            // Non-finite scales must never load.
            let source = SafetensorsCheckpoint::open(dir.path()).unwrap();
            for name in source.tensor_names().iter().filter(|n| n.ends_with(".scales")) {
                let tensor = source.files()[0].tensor(name).unwrap().unwrap();
                if tensor.dtype == ember::quant::StoredDtype::F16 {
                    let finite = tensor.bytes.chunks_exact(2).all(|b| half::f16::from_le_bytes([b[0], b[1]]).is_finite());
                    if !finite {
                        non_finite_loaded.set(non_finite_loaded.get() + 1);
                    }
                }
            }
        }
        loaded
    });
    assert_eq!(non_finite_loaded.get(), 0, "checkpoints with NaN/Inf scales loaded");
}
