//! Quantized checkpoints that do not add up: each error has its kind and names the
//! tensor or config field at fault.

use burn::tensor::Device;
use ember::models::ModelError;
use ember::quant::{CheckpointError, ComputeDtype, QuantError};
use ember::{load_model, Error, LoadOptions};

use crate::common::{rewrite_fixture, StoredTensor};

const GPTQ: &str = "llama-gptq-4bit-g128";
const CT: &str = "llama-ct-w4a16";

fn load_error(dir: &tempfile::TempDir) -> Error {
    load_model(dir.path(), &LoadOptions::new(Device::flex(), ComputeDtype::F32)).err().expect("loading must fail")
}

fn gptq_with(edit_config: impl FnOnce(&mut serde_json::Value), edit_tensors: impl FnOnce(&mut Vec<StoredTensor>)) -> Error {
    load_error(&rewrite_fixture(GPTQ, edit_config, edit_tensors))
}

#[test]
fn group_size_that_does_not_divide_k_names_the_layer() {
    let err = gptq_with(|c| c["quantization_config"]["group_size"] = 96.into(), |_| {});
    assert!(matches!(err, Error::Model(ModelError::Quant(QuantError::UnsupportedLayer { .. }))), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("model.layers.0.self_attn.q_proj") && message.contains("group size 96"), "{message}");
}

#[test]
fn unsupported_bits_are_named() {
    let err = gptq_with(|c| c["quantization_config"]["bits"] = 3.into(), |_| {});
    assert!(matches!(err, Error::Model(ModelError::Quant(QuantError::InvalidConfig { .. }))), "{err:?}");
    assert!(err.to_string().contains("3-bit weights are not supported"), "{err}");
}

#[test]
fn missing_qzeros_is_named() {
    let err = gptq_with(|_| {}, |t| t.retain(|t| t.name != "model.layers.1.mlp.up_proj.qzeros"));
    assert!(matches!(err.as_checkpoint(), Some(CheckpointError::MissingTensor { .. })), "{err:?}");
    assert!(err.to_string().contains("model.layers.1.mlp.up_proj.qzeros"), "{err}");
}

#[test]
fn act_order_without_g_idx_is_named() {
    let err = gptq_with(|c| c["quantization_config"]["desc_act"] = true.into(), |t| t.retain(|t| !t.name.ends_with("o_proj.g_idx")));
    assert!(matches!(err.as_checkpoint(), Some(CheckpointError::MissingTensor { .. })), "{err:?}");
    assert!(err.to_string().contains("model.layers.0.self_attn.o_proj.g_idx"), "{err}");
}

#[test]
fn g_idx_out_of_range_is_named() {
    let err = gptq_with(|c| c["quantization_config"]["desc_act"] = true.into(), |t| {
        let g_idx = t.iter_mut().find(|t| t.name == "model.layers.2.self_attn.k_proj.g_idx").unwrap();
        g_idx.bytes[..4].copy_from_slice(&7i32.to_le_bytes());
    });
    assert!(matches!(err.as_checkpoint(), Some(CheckpointError::InvalidValues { .. })), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("model.layers.2.self_attn.k_proj.g_idx") && message.contains("group 7"), "{message}");
}

#[test]
fn wrong_packed_shape_is_named() {
    let err = gptq_with(|_| {}, |t| {
        let qweight = t.iter_mut().find(|t| t.name == "model.layers.0.self_attn.v_proj.qweight").unwrap();
        qweight.shape = vec![qweight.shape[1], qweight.shape[0]];
    });
    assert!(matches!(err.as_checkpoint(), Some(CheckpointError::ShapeMismatch { .. })), "{err:?}");
    assert!(err.to_string().contains("model.layers.0.self_attn.v_proj.qweight"), "{err}");
}

#[test]
fn non_finite_scales_are_named() {
    let err = gptq_with(|_| {}, |t| {
        let scales = t.iter_mut().find(|t| t.name == "model.layers.3.mlp.down_proj.scales").unwrap();
        scales.bytes[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    });
    assert!(matches!(err.as_checkpoint(), Some(CheckpointError::InvalidValues { .. })), "{err:?}");
    assert!(err.to_string().contains("model.layers.3.mlp.down_proj.scales"), "{err}");
}

#[test]
fn unknown_compressed_tensors_strategy_is_named() {
    let err = load_error(&rewrite_fixture(CT, |c| c["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] = "diagonal".into(), |_| {}));
    assert!(matches!(err, Error::Model(ModelError::Quant(QuantError::InvalidConfig { .. }))), "{err:?}");
    assert!(err.to_string().contains("strategy `diagonal`"), "{err}");
}

#[test]
fn compressed_tensors_weight_shape_must_match_the_layer() {
    let err = load_error(&rewrite_fixture(CT, |_| {}, |t| {
        let shape = t.iter_mut().find(|t| t.name == "model.layers.0.mlp.gate_proj.weight_shape").unwrap();
        shape.bytes[..8].copy_from_slice(&700i64.to_le_bytes());
    }));
    assert!(matches!(err.as_checkpoint(), Some(CheckpointError::InvalidValues { .. })), "{err:?}");
    assert!(err.to_string().contains("model.layers.0.mlp.gate_proj.weight_shape"), "{err}");
}
