//! One test per class of user error: the error has the right kind, and its message names
//! the culprit (file, tensor, field) and what was expected.

use std::path::Path;

use burn::tensor::Device;
use ember::models::{ConfigError, ModelError};
use ember::quant::{CheckpointError, ComputeDtype, QuantError};
use ember::{load_model, Error, LoadOptions};
use safetensors::Dtype;
use tempfile::TempDir;

use crate::common::{copy_side_files, fixture, rewrite_fixture, StoredTensor};

const LLAMA: &str = "llama-tiny-f16";

fn try_load(dir: &Path) -> Result<ember::LoadedModel, Error> {
    load_model(dir, &LoadOptions::new(Device::flex(), ComputeDtype::F32))
}

fn rewritten_llama(edit: impl FnOnce(&mut Vec<StoredTensor>)) -> TempDir {
    rewrite_fixture(LLAMA, |_| {}, edit)
}

fn checkpoint_error(result: Result<ember::LoadedModel, Error>) -> (CheckpointError, String) {
    let err = result.err().expect("loading must fail");
    let message = err.to_string();
    match err {
        Error::Model(ModelError::Checkpoint(e)) => (e, message),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn missing_config_file_names_the_file() {
    let dir = TempDir::new().unwrap();
    let err = try_load(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Model(ModelError::Config(ConfigError::Io { .. }))), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn missing_weights_name_the_directory() {
    let dir = TempDir::new().unwrap();
    copy_side_files(LLAMA, dir.path());
    let (err, message) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::NoWeights { .. }), "{err:?}");
    assert!(message.contains(&dir.path().display().to_string()) && message.contains("model.safetensors"), "{message}");
}

#[test]
fn missing_tensor_names_tensor_and_file() {
    let dir = rewritten_llama(|t| t.retain(|t| t.name != "model.layers.2.mlp.up_proj.weight"));
    let (err, message) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::MissingTensor { .. }), "{err:?}");
    assert!(message.contains("model.layers.2.mlp.up_proj.weight"), "{message}");
    assert!(message.contains("model.safetensors"), "{message}");
}

#[test]
fn wrong_shape_reports_seen_and_expected() {
    let dir = rewritten_llama(|t| {
        let norm = t.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
        norm.shape = vec![128];
        norm.bytes.truncate(256);
    });
    let (err, message) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::ShapeMismatch { .. }), "{err:?}");
    assert!(message.contains("model.norm.weight") && message.contains("[128]") && message.contains("[256]"), "{message}");
}

#[test]
fn wrong_dtype_reports_seen_and_expected() {
    let dir = rewritten_llama(|t| {
        let norm = t.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
        norm.dtype = Dtype::I16;
    });
    let (err, message) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::DtypeMismatch { .. }), "{err:?}");
    assert!(message.contains("model.norm.weight") && message.contains("I16") && message.contains("float"), "{message}");
}

#[test]
fn truncated_file_is_reported_with_its_path() {
    let dir = rewritten_llama(|_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (err, message) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::Truncated { .. }), "{err:?}");
    assert!(message.contains("model.safetensors"), "{message}");

    // Shorter than the length prefix itself.
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    let (err, _) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::Truncated { .. }), "{err:?}");
}

#[test]
fn malformed_header_is_reported_with_its_path() {
    let dir = TempDir::new().unwrap();
    copy_side_files(LLAMA, dir.path());
    let header = b"{not json";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let (err, message) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::MalformedHeader { .. }), "{err:?}");
    assert!(message.contains("model.safetensors") && message.contains("JSON"), "{message}");

    // A header length far beyond the file is caught before anything is allocated.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(dir.path().join("model.safetensors"), &huge).unwrap();
    let (err, _) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::Truncated { .. }), "{err:?}");
}

#[test]
fn missing_shard_is_named() {
    let dir = TempDir::new().unwrap();
    copy_side_files(LLAMA, dir.path());
    std::fs::copy(fixture(LLAMA).join("model.safetensors.index.json"), dir.path().join("model.safetensors.index.json")).unwrap();
    std::fs::copy(fixture(LLAMA).join("model-00001-of-00002.safetensors"), dir.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    let (err, message) = checkpoint_error(try_load(dir.path()));
    assert!(matches!(err, CheckpointError::MissingShard { .. }), "{err:?}");
    assert!(message.contains("model-00002-of-00002.safetensors"), "{message}");
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let dir = TempDir::new().unwrap();
    copy_side_files(LLAMA, dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("LlamaForCausalLM", "GPT2LMHeadModel")).unwrap();
    let err = try_load(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Model(ModelError::UnknownArchitecture { .. })), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("GPT2LMHeadModel") && message.contains("LlamaForCausalLM") && message.contains("MixtralForCausalLM"), "{message}");
}

#[test]
fn bad_json_reports_path_and_line() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"hidden_size\": 256,,\n}").unwrap();
    let err = try_load(dir.path()).err().unwrap();
    match err.as_config() {
        Some(ConfigError::Json { line, .. }) => assert_eq!(*line, 3),
        other => panic!("expected a JSON error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("config.json") && message.contains("line 3"), "{message}");
}

#[test]
fn unknown_quant_method_lists_registered_ones() {
    let dir = TempDir::new().unwrap();
    copy_side_files(LLAMA, dir.path());
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    config["quantization_config"] = serde_json::json!({"quant_method": "mystery-q", "bits": 3});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = try_load(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Model(ModelError::Quant(QuantError::UnknownMethod { .. }))), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("mystery-q") && message.contains("unquantized"), "{message}");
}
