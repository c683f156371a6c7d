//! Every quantized fixture, made by the real tools: unpacked weights equal the tool's
//! dequantizer bit for bit, logits match within the fixtures' tolerance, and greedy
//! tokens agree with the tool's.

use burn::tensor::Device;
use ember::checkpoint::SafetensorsFile;
use ember::quant::ComputeDtype;
use ember::{load_model, LoadOptions, LoadedModel};

use crate::common::{fixture, greedy_tokens, max_abs_diff, prompt_logits, Reference};

/// Tolerance for quantized folders, as a fraction of the reference logit range.
const QUANTIZED_TOLERANCE: f32 = 5e-3;

fn load_on(name: &str, device: Device) -> LoadedModel {
    load_model(&fixture(name), &LoadOptions::new(device, ComputeDtype::F32)).expect("fixture loads")
}

/// The float32 reference: GPTQModel folders carry one computed with the tool's dequantized
/// weights in float32 (`logits_f32_dequant`); the others were computed in float32 already.
fn f32_reference(name: &str) -> (Vec<f32>, Vec<u32>) {
    let dir = fixture(name);
    let file = SafetensorsFile::open(&dir.join("reference.safetensors")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let (logits_name, greedy_key) = match file.meta("logits_f32_dequant") {
        Some(_) => ("logits_f32_dequant", "greedy_new_ids_f32_dequant"),
        None => ("logits", "greedy_new_ids"),
    };
    let logits = file.tensor(logits_name).unwrap().unwrap().to_f32_vec().unwrap();
    let greedy = json[greedy_key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    (logits, greedy)
}

/// Unpacked weights vs `dequant.<module>`: bit-exact, except where the tool itself is not.
fn assert_dequant_exact(name: &str, loaded: &LoadedModel) {
    let file = SafetensorsFile::open(&fixture(name).join("reference.safetensors")).unwrap();
    let names: Vec<String> = file.names().filter(|n| n.starts_with("dequant.")).collect();
    assert!(!names.is_empty(), "{name} has dequant tensors");
    let linears = loaded.model.linears();
    for tensor_name in names {
        let module = &tensor_name["dequant.".len()..];
        let layer = linears.iter().find(|l| l.name() == module).unwrap_or_else(|| panic!("{name}: no layer {module}"));
        let ours = layer.dequantized_weight().unwrap().try_into_vec_as::<f32>().unwrap();
        let theirs = file.tensor(&tensor_name).unwrap().unwrap().to_f32_vec().unwrap();
        let diff = max_abs_diff(&ours, &theirs);
        println!("{name}: {module} ({}) dequant max diff {diff:e}", layer.scheme());
        // torchao's own dequantize() rounds in a different float32 op order (fixtures README).
        let tolerance = if name.contains("torchao") { 1.3e-8 } else { 0.0 };
        assert!(diff <= tolerance, "{name}: {module} unpacks differently from the tool (max diff {diff:e})");
    }
}

/// Dequantization, logits (within `tolerance` × the reference logit range) and greedy
/// tokens (at least `min_greedy_prefix` leading tokens equal) for one fixture on one device.
fn check_fixture_within(name: &str, device: Device, tolerance: f32, min_greedy_prefix: usize) {
    let loaded = load_on(name, device);
    assert_dequant_exact(name, &loaded);
    let reference = Reference::read(name);
    let (logits, reference_greedy) = f32_reference(name);
    let ours = prompt_logits(&loaded, &reference.input_ids);
    let range = reference.logit_range();
    let diff = max_abs_diff(&ours, &logits);
    let tokens = greedy_tokens(loaded, &reference.input_ids, reference_greedy.len());
    let prefix = tokens.iter().zip(&reference_greedy).take_while(|(a, b)| a == b).count();
    println!("{name}: logits max diff {diff:.3e} ({:.2e} of range), greedy prefix {prefix}/16", diff / range);
    assert!(diff <= tolerance * range, "{name}: logits differ by {diff} (range {range})");
    assert!(prefix >= min_greedy_prefix, "{name}: greedy agrees on {prefix} tokens, expected {min_greedy_prefix}: {tokens:?} vs {reference_greedy:?}");
}

fn check_fixture(name: &str, device: Device, min_greedy_prefix: usize) {
    check_fixture_within(name, device, QUANTIZED_TOLERANCE, min_greedy_prefix);
}

/// This folder's reference leaves activations in float32, while the scheme (as vLLM and
/// transformers run it) quantizes them to e4m3 per token and group of 128 inputs. e4m3
/// keeps 3 mantissa bits, which moves these logits by about 1% of their range.
const FP8_BLOCK_ACTIVATION_TOLERANCE: f32 = 1.5e-2;

#[test]
fn gptq_int4_llama_matches_reference() {
    check_fixture("llama-gptq-4bit-g128", Device::flex(), 16);
}

#[test]
fn gptq_int4_llama_matches_reference_on_wgpu() {
    check_fixture("llama-gptq-4bit-g128", Device::wgpu(Default::default()), 16);
}

#[test]
fn gptq_int4_mixtral_with_quantized_experts_matches_reference() {
    check_fixture("mixtral-gptq-4bit-g128", Device::flex(), 16);
}

#[test]
fn awq_int4_llama_matches_reference() {
    check_fixture("llama-awq-4bit-g128", Device::flex(), 16);
}

#[test]
fn compressed_tensors_w4a16_matches_reference() {
    check_fixture("llama-ct-w4a16", Device::flex(), 16);
}

#[test]
fn compressed_tensors_w8a8_int8_matches_reference() {
    check_fixture("llama-ct-w8a8-int8", Device::flex(), 16);
}

#[test]
fn compressed_tensors_fp8_dynamic_matches_reference() {
    check_fixture("llama-ct-fp8-dynamic", Device::flex(), 16);
}

#[test]
fn deepseek_fp8_block_matches_reference() {
    check_fixture_within("llama-fp8-block-scaleinv", Device::flex(), FP8_BLOCK_ACTIVATION_TOLERANCE, 16);
}

#[test]
fn deepseek_fp8_block_matches_reference_on_wgpu() {
    check_fixture_within("llama-fp8-block-scaleinv", Device::wgpu(Default::default()), FP8_BLOCK_ACTIVATION_TOLERANCE, 16);
}

/// Weight-only FP8 (activations left in float32) reproduces this folder's reference, which
/// was computed that way, within the quantized tolerance.
#[test]
fn deepseek_fp8_block_weight_only_matches_reference() {
    let mut options = LoadOptions::new(Device::flex(), ComputeDtype::F32);
    options.fp8_weight_only = true;
    let loaded = load_model(&fixture("llama-fp8-block-scaleinv"), &options).unwrap();
    let reference = Reference::read("llama-fp8-block-scaleinv");
    let diff = max_abs_diff(&prompt_logits(&loaded, &reference.input_ids), &reference.logits);
    println!("llama-fp8-block-scaleinv weight-only: logits max diff {diff:.3e}");
    assert!(diff <= QUANTIZED_TOLERANCE * reference.logit_range(), "diff {diff}");
}

#[test]
fn torchao_int8_weight_only_matches_reference() {
    check_fixture("llama-torchao-int8wo", Device::flex(), 16);
}

/// Half-precision compute against the tool's own half-precision run (`logits`): GPTQ's
/// float16 scales applied in a bfloat16 Mixtral, and the f16 Llama.
fn check_half_precision(name: &str, dtype: ComputeDtype, tolerance: f32) {
    let loaded = load_model(&fixture(name), &LoadOptions::new(Device::flex(), dtype)).unwrap();
    let reference = Reference::read(name);
    let diff = max_abs_diff(&prompt_logits(&loaded, &reference.input_ids), &reference.logits);
    println!("{name} in {dtype}: logits max diff {diff:.3e} ({:.2e} of range)", diff / reference.logit_range());
    assert!(diff <= tolerance * reference.logit_range(), "{name} in {dtype}: diff {diff}");
}

#[test]
fn gptq_mixtral_in_bf16_matches_the_tools_bf16_run() {
    check_half_precision("mixtral-gptq-4bit-g128", ComputeDtype::BF16, QUANTIZED_TOLERANCE);
}

#[test]
fn gptq_llama_in_f16_matches_the_tools_f16_run() {
    check_half_precision("llama-gptq-4bit-g128", ComputeDtype::F16, 1e-3);
}

/// Mixtral's GPTQ experts are stacked and run as two grouped kernel launches per block on
/// a Cube runtime: the fixture still matches the tool, and the logits match the
/// per-expert Burn-ops reference path on the same device.
#[test]
fn gptq_mixtral_grouped_experts_match_reference_on_wgpu() {
    let name = "mixtral-gptq-4bit-g128";
    check_fixture(name, Device::wgpu(Default::default()), 16);
    let loaded = load_on(name, Device::wgpu(Default::default()));
    assert_eq!(loaded.model.stacked_moe_blocks(), loaded.model.config().num_layers, "every MoE block stacked");
    let reference = Reference::read(name);
    let kernels = prompt_logits(&loaded, &reference.input_ids);
    let burn_ops = ember::quant::kernels::with_policy(ember::quant::kernels::KernelPolicy::Reference, || prompt_logits(&loaded, &reference.input_ids));
    let diff = max_abs_diff(&kernels, &burn_ops);
    println!("{name}: grouped kernels vs Burn-ops reference, max diff {diff:e} ({:.2e} of range)", diff / reference.logit_range());
    assert!(diff <= 1e-4 * reference.logit_range(), "grouped experts differ from the reference path by {diff}");
}

/// The integer fixtures on a CUDA GPU with the tensor-core W4A16 / W8A16 kernel opted in:
/// every Int4 / Int8 layer, Mixtral's grouped experts included, runs `int_mma`. The 4-bit
/// logits match the tool's half-precision runs within the tolerances the Burn-ops path
/// meets; the 8-bit Llama (whose tool reference is f32) matches the Burn-ops path in f16.
#[test]
#[ignore = "needs a CUDA GPU (sm_80+): cargo test --release -- --ignored int_fixtures_through_tensor_cores_on_cuda"]
fn int_fixtures_through_tensor_cores_on_cuda() {
    use ember::quant::kernels::{self, IntGemmKernel, KernelPolicy};
    use ember::quant::LinearRepr;
    let device = Device::cuda(0);
    let on_tensor_cores = |name: &str, dtype: ComputeDtype| {
        let loaded = load_model(&fixture(name), &LoadOptions::new(device.clone(), dtype)).unwrap();
        for layer in loaded.model.linears() {
            if let LinearRepr::Int4(weight) | LinearRepr::Int8(weight) = layer.repr() {
                let kernel = kernels::with_policy(KernelPolicy::TensorCores, || kernels::select::int_gemm(weight, &device, dtype.burn(), 4).kernel);
                assert!(matches!(kernel, IntGemmKernel::TensorCores(_)), "{name}: {} runs {kernel:?}", layer.name());
            }
        }
        loaded
    };
    for (name, dtype, tolerance) in [("llama-gptq-4bit-g128", ComputeDtype::F16, 1e-3), ("mixtral-gptq-4bit-g128", ComputeDtype::BF16, QUANTIZED_TOLERANCE)] {
        let loaded = on_tensor_cores(name, dtype);
        let reference = Reference::read(name);
        let logits = kernels::with_policy(KernelPolicy::TensorCores, || prompt_logits(&loaded, &reference.input_ids));
        let diff = max_abs_diff(&logits, &reference.logits);
        println!("{name} in {dtype} on tensor cores: logits max diff {diff:.3e} ({:.2e} of range)", diff / reference.logit_range());
        assert!(diff <= tolerance * reference.logit_range(), "{name} in {dtype}: diff {diff}");
    }
    let name = "llama-torchao-int8wo";
    let loaded = on_tensor_cores(name, ComputeDtype::F16);
    let reference = Reference::read(name);
    let logits = kernels::with_policy(KernelPolicy::TensorCores, || prompt_logits(&loaded, &reference.input_ids));
    let burn_ops = kernels::with_policy(KernelPolicy::Reference, || prompt_logits(&loaded, &reference.input_ids));
    let diff = max_abs_diff(&logits, &burn_ops);
    println!("{name} in f16 on tensor cores: vs Burn-ops {diff:.3e} ({:.2e} of range)", diff / reference.logit_range());
    assert!(diff <= 1e-3 * reference.logit_range(), "{name}: tensor cores differ from the Burn-ops path by {diff}");
}
