//! Safetensors reading (sharded and single, every stored dtype) and dummy weights.

use std::collections::HashMap;

use ember::checkpoint::{DummySource, SafetensorsCheckpoint};
use ember::quant::{ComputeDtype, DtypeRule, StoredDtype, TensorSource, WeightSpec};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;

use crate::common::fixture;

#[test]
fn sharded_checkpoint_reads_tensors_from_both_shards() {
    let checkpoint = SafetensorsCheckpoint::open(&fixture("llama-tiny-f16")).unwrap();
    assert_eq!(checkpoint.files().len(), 2);
    let names = checkpoint.tensor_names();
    assert!(names.contains(&"model.embed_tokens.weight".to_string()));
    assert!(names.contains(&"lm_head.weight".to_string()));
    let spec = WeightSpec::float("model.layers.0.self_attn.q_proj.weight", [256, 256]);
    let tensor = checkpoint.load(&spec).unwrap();
    assert_eq!(tensor.dtype, StoredDtype::F16);
    assert_eq!(tensor.to_f32_vec().unwrap().len(), 256 * 256);
    assert!(checkpoint.describe().contains("2 shards"));
}

/// Every dtype of the issue round-trips: floats decode, ints decode, FP8 stays raw bits.
#[test]
fn every_stored_dtype_reads_back() {
    let dir = TempDir::new().unwrap();
    let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let i64s: Vec<u8> = [7i64, -9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i32s: Vec<u8> = [7i32, -9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i16s: Vec<u8> = [7i16, -9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i8s: Vec<u8> = vec![7, (-9i8) as u8];
    let u8s: Vec<u8> = vec![7, 250];
    let fp8: Vec<u8> = vec![0x38, 0xC0];
    let tensors = [
        ("f32", Dtype::F32, &f32s),
        ("f16", Dtype::F16, &f16s),
        ("bf16", Dtype::BF16, &bf16s),
        ("i64", Dtype::I64, &i64s),
        ("i32", Dtype::I32, &i32s),
        ("i16", Dtype::I16, &i16s),
        ("i8", Dtype::I8, &i8s),
        ("u8", Dtype::U8, &u8s),
        ("e4m3", Dtype::F8_E4M3, &fp8),
        ("e5m2", Dtype::F8_E5M2, &fp8),
    ];
    let views: Vec<(&str, TensorView)> =
        tensors.iter().map(|(n, d, b)| (*n, TensorView::new(*d, vec![2], b).unwrap())).collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &dir.path().join("model.safetensors")).unwrap();
    let checkpoint = SafetensorsCheckpoint::open(dir.path()).unwrap();
    let load = |name: &str, dtype: StoredDtype| checkpoint.load(&WeightSpec::new(name, [2], DtypeRule::Exactly(dtype))).unwrap();
    for (name, dtype) in [("f32", StoredDtype::F32), ("f16", StoredDtype::F16), ("bf16", StoredDtype::BF16)] {
        assert_eq!(load(name, dtype).to_f32_vec().unwrap(), vec![1.5, -2.0], "{name}");
    }
    for (name, dtype) in [("i64", StoredDtype::I64), ("i32", StoredDtype::I32), ("i16", StoredDtype::I16), ("i8", StoredDtype::I8)] {
        assert_eq!(load(name, dtype).to_i64_vec().unwrap(), vec![7, -9], "{name}");
    }
    assert_eq!(load("u8", StoredDtype::U8).to_i64_vec().unwrap(), vec![7, 250]);
    assert_eq!(load("e4m3", StoredDtype::F8E4M3).bytes.as_ref(), &[0x38, 0xC0]);
    assert_eq!(load("e5m2", StoredDtype::F8E5M2).bytes.as_ref(), &[0x38, 0xC0]);
    // FP8 is not silently treated as a float Burn can hold.
    assert!(load("e4m3", StoredDtype::F8E4M3).to_f32_vec().is_err());
}

#[test]
fn dummy_weights_are_deterministic_and_shaped() {
    let a = DummySource::new(ComputeDtype::BF16, 0);
    let b = DummySource::new(ComputeDtype::BF16, 0);
    let spec = WeightSpec::float("model.layers.3.mlp.up_proj.weight", [64, 32]);
    let ta = a.load(&spec).unwrap();
    assert_eq!(ta.dtype, StoredDtype::BF16);
    assert_eq!(ta.shape, vec![64, 32]);
    assert_eq!(ta.bytes, b.load(&spec).unwrap().bytes);
    let other = a.load(&WeightSpec::float("model.layers.3.mlp.down_proj.weight", [64, 32])).unwrap();
    assert_ne!(ta.bytes, other.bytes, "different names get different values");
    let values = ta.to_f32_vec().unwrap();
    assert!(values.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
    let packed = a.load(&WeightSpec::new("x.qweight", [4, 8], DtypeRule::Exactly(StoredDtype::I32))).unwrap();
    assert_eq!(packed.bytes.len(), 4 * 8 * 4);
}
