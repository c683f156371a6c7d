//! A quantization method registered from outside Ember (examples/custom_quant_method.rs)
//! is resolved by name and used for every layer it claims.

use burn::tensor::Device;
use ember::quant::{ComputeDtype, QuantRegistry};
use ember::{load_model, LoadOptions};

use crate::common::{fixture, max_abs_diff, prompt_logits, Reference};

#[path = "../examples/custom_quant_method.rs"]
mod example;

#[test]
fn registered_method_is_selected_by_name_and_quantizes_layers() {
    let reference = Reference::read("llama-tiny-f16");
    let mut options = LoadOptions::new(Device::flex(), ComputeDtype::F32);
    options.registry = example::registry();
    options.quantization = Some(example::NAME.into());
    let loaded = load_model(&fixture("llama-tiny-f16"), &options).unwrap();
    assert_eq!(loaded.quant_method, example::NAME);
    let linears = loaded.model.linears();
    let q_proj = linears.iter().find(|l| l.name() == "model.layers.0.self_attn.q_proj").unwrap();
    assert_eq!(q_proj.repr().name(), "custom");
    assert_eq!(q_proj.scheme(), "int8 per-row RTN (rowwise-int8)");
    let lm_head = linears.iter().find(|l| l.name() == "lm_head").unwrap();
    assert_eq!(lm_head.scheme(), "float");

    // Per-row int8 is close to float, and not identical to it.
    let logits = prompt_logits(&loaded, &reference.input_ids);
    let diff = max_abs_diff(&logits, &reference.logits);
    assert!(diff > 0.0 && diff < 0.05 * reference.logit_range(), "diff {diff}");
}

#[test]
fn unregistered_name_lists_what_is_registered() {
    let mut options = LoadOptions::new(Device::flex(), ComputeDtype::F32);
    options.registry = QuantRegistry::with_builtins();
    options.quantization = Some(example::NAME.into());
    let err = load_model(&fixture("llama-tiny-f16"), &options).err().unwrap().to_string();
    assert!(err.contains(example::NAME) && err.contains("gptq") && err.contains("compressed-tensors"), "{err}");
}
