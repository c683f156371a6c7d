//! Quantized checkpoints written by the tests from the float Llama fixture, for formats
//! and variants no tool-made fixture covers.

use burn::tensor::Device;
use ember::quant::ComputeDtype;
use ember::{load_model, LoadOptions, LoadedModel};
use half::f16;
use tempfile::TempDir;

use super::{max_abs_diff, prompt_logits, rewrite_fixture, Reference, StoredTensor};

/// One layer as a test wrote it, and the weight (`[n, k]`) it stands for.
pub struct Written {
    pub tensors: Vec<StoredTensor>,
    pub expected: Vec<f32>,
}

pub fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()
}

/// A written checkpoint and the weights its quantized layers must unpack to.
pub struct QuantizedLlama {
    pub dir: TempDir,
    pub expected: Vec<(String, Vec<f32>)>,
}

/// Rewrites `llama-tiny-f16` with `config` under `config_key`, every decoder-layer linear
/// (except modules named in `keep_float`) replaced by `write(prefix, weight, n, k)`.
pub fn quantized_llama(
    config_key: &str,
    config: serde_json::Value,
    keep_float: &[&str],
    write: impl Fn(&str, &[f32], usize, usize) -> Written,
) -> QuantizedLlama {
    let mut expected = Vec::new();
    let dir = rewrite_fixture(
        "llama-tiny-f16",
        |c| c[config_key] = config,
        |tensors| {
            for t in std::mem::take(tensors) {
                let prefix = t.name.trim_end_matches(".weight").to_string();
                let quantize = t.name.starts_with("model.layers.") && t.shape.len() == 2 && !keep_float.contains(&prefix.as_str());
                if !quantize {
                    tensors.push(t);
                    continue;
                }
                let weight: Vec<f32> = t.bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
                let written = write(&prefix, &weight, t.shape[0], t.shape[1]);
                tensors.extend(written.tensors);
                expected.push((prefix, written.expected));
            }
        },
    );
    QuantizedLlama { dir, expected }
}

impl QuantizedLlama {
    pub fn load(&self) -> LoadedModel {
        load_model(self.dir.path(), &LoadOptions::new(Device::flex(), ComputeDtype::F32)).expect("written checkpoint loads")
    }

    /// Every quantized layer unpacks to exactly the weight the test wrote.
    pub fn assert_unpacks_exactly(&self, loaded: &LoadedModel) {
        let linears = loaded.model.linears();
        for (prefix, weight) in &self.expected {
            let layer = linears.iter().find(|l| l.name() == prefix).unwrap_or_else(|| panic!("no layer {prefix}"));
            let ours = layer.dequantized_weight().unwrap().try_into_vec_as::<f32>().unwrap();
            assert_eq!(max_abs_diff(&ours, weight), 0.0, "{prefix} ({})", layer.scheme());
        }
    }
}

/// The quantized model still tracks the float one: logits within `limit` of the range.
pub fn assert_logits_near_float(loaded: &LoadedModel, limit: f32) {
    let reference = Reference::read("llama-tiny-f16");
    let diff = max_abs_diff(&prompt_logits(loaded, &reference.input_ids), &reference.logits);
    assert!(diff < limit * reference.logit_range(), "logits moved by {diff}");
}
