//! The W8A8 and FP8 kernels on the CubeCL runtimes CI has (wgpu on lavapipe, the CPU
//! runtime) against the Burn-ops reference (run on Flex): activation quantization code for code, the int8
//! GEMM bit for bit, the FP8 GEMM (quantized and weight-only, every scale layout) within
//! f32 rounding, the fixtures' logits through the kernels, and the selector's reasons.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use ember::quant::kernels::host::TileProducts;
use ember::quant::kernels::{self, GemmKernel, KernelPolicy, MmaTiling, Staging, WEIGHT_STAGES};
use ember::quant::repr::{e4m3_table, e4m3_value, quantize_activations, ActivationGrid, ActivationQuant, Fp8Weight, W8A8Weight};
use ember::quant::ComputeDtype;
use ember::{load_model, LoadOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{fixture, max_abs_diff, prompt_logits, Reference};

const ROWS: [usize; 5] = [1, 3, 16, 64, 257];

pub(crate) fn to_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().try_to_vec::<f32>().expect("f32 data")
}

fn to_i32(t: Tensor<2, Int>) -> Vec<i32> {
    t.into_data().convert::<i32>().try_to_vec::<i32>().expect("i32 data")
}

fn floats(values: Vec<f32>, shape: [usize; 2], dtype: DType, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(values, shape), (device, DType::F32)).cast(dtype)
}

/// Activations whose rows span six orders of magnitude, with an all-zero row, exact
/// ties of the int8 grid and values past the static scale's range.
pub(crate) fn activations(rows: usize, k: usize, dtype: DType, device: &Device, rng: &mut StdRng) -> Tensor<2> {
    let mut values = Vec::with_capacity(rows * k);
    for row in 0..rows {
        let magnitude = 10f32.powf(rng.random_range(-3.0..3.0));
        for col in 0..k {
            values.push(match (row % 7, col % 29) {
                (5, _) => 0.0,
                (_, 3) => magnitude * 0.5,
                _ => magnitude * rng.random_range(-1.0f32..1.0),
            });
        }
    }
    floats(values, [rows, k], dtype, device)
}

/// Bytes of `[rows, k/4]` words, little end first.
fn bytes(words: Vec<i32>) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn decode(grid: ActivationGrid, byte: u8) -> f32 {
    match grid {
        ActivationGrid::Int8 => byte as i8 as f32,
        ActivationGrid::E4M3 => e4m3_value(byte),
    }
}

/// The kernel's codes and scales equal the reference's grid values and scales exactly.
fn activation_quant_on(device: Device) {
    let mut rng = StdRng::seed_from_u64(3);
    let k = 320;
    let modes = || {
        [
            ActivationQuant::DynamicPerToken,
            ActivationQuant::DynamicPerTensor,
            ActivationQuant::DynamicPerGroup(128),
            ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.0125f32], [1]), (&device, DType::F32))),
        ]
    };
    let dtypes: Vec<DType> = [DType::F32, DType::F16, DType::BF16].into_iter().filter(|&d| device.supports_dtype(d)).collect();
    for grid in [ActivationGrid::Int8, ActivationGrid::E4M3] {
        for mode in modes() {
            for (i, rows) in ROWS.into_iter().enumerate() {
                let dtype = dtypes[i % dtypes.len()];
                let x = activations(rows, k, dtype, &device, &mut rng);
                let what = format!("{grid:?} {} rows={rows} {dtype:?}", mode.describe());
                let ours = kernels::quantize_activations(x.clone(), &mode, grid).expect("quantized");
                let reference = quantize_activations(x.to_device(&Device::flex()), &activation_mode_on_flex(&mode), grid).expect("quantized");
                let values: Vec<f32> = bytes(to_i32(ours.codes)).into_iter().map(|b| decode(grid, b)).collect();
                let expected = to_f32(reference.values);
                let mismatches = values.iter().zip(&expected).filter(|(a, b)| a != b).count();
                assert_eq!(mismatches, 0, "{what}: {mismatches} codes differ from the reference");
                // The reference broadcasts its scales over the columns they cover.
                let [scale_rows, groups] = ours.scales.dims();
                let scales = to_f32(ours.scales);
                let [ref_rows, ref_cols] = reference.scales.dims();
                let ref_scales = to_f32(reference.scales);
                assert!(scale_rows == ref_rows || ref_rows == 1, "{what}: scales {scale_rows} rows, reference {ref_rows}");
                for r in 0..scale_rows {
                    for g in 0..groups {
                        let col = if ref_cols == 1 { 0 } else { g * 128 };
                        assert_eq!(scales[r * groups + g], ref_scales[r.min(ref_rows - 1) * ref_cols + col], "{what}: scale ({r}, {g})");
                    }
                }
            }
        }
    }
}

#[test]
fn activation_quantization_on_wgpu() {
    activation_quant_on(Device::wgpu(Default::default()));
}

#[test]
fn activation_quantization_on_cubecl_cpu() {
    activation_quant_on(Device::cpu());
}

fn random_words(n: usize, k: usize, rng: &mut StdRng, byte: impl Fn(&mut StdRng) -> u8) -> Vec<i32> {
    (0..n * k / 4).map(|_| i32::from_le_bytes([byte(rng), byte(rng), byte(rng), byte(rng)])).collect()
}

fn w8a8_weight(k: usize, n: usize, activations: ActivationQuant, device: &Device, rng: &mut StdRng) -> W8A8Weight {
    w8a8_weight_within(k, n, activations, device, rng, i8::MIN..=i8::MAX)
}

/// A random int8 weight whose codes lie in `codes`.
pub(crate) fn w8a8_weight_within(k: usize, n: usize, activations: ActivationQuant, device: &Device, rng: &mut StdRng, codes: std::ops::RangeInclusive<i8>) -> W8A8Weight {
    let codes = random_words(n, k, rng, |rng| rng.random_range(codes.clone()) as u8);
    let scales: Vec<f32> = (0..n).map(|_| rng.random_range(1e-3..1e-2)).collect();
    W8A8Weight {
        in_features: k,
        out_features: n,
        codes: Tensor::from_data(TensorData::new(codes, [n, k / 4]), (device, DType::I32)),
        scales: floats(scales, [1, n], DType::F32, device),
        activations,
    }
}

fn activation_mode_on_flex(mode: &ActivationQuant) -> ActivationQuant {
    match mode {
        ActivationQuant::Static(scale) => ActivationQuant::Static(scale.clone().to_device(&Device::flex())),
        other => other.clone(),
    }
}

/// The same weight on Flex, where the Burn-ops reference runs without the Cube runtimes'
/// per-shape matmul autotuning (minutes on the CPU runtime for these many shapes).
fn w8a8_on_flex(weight: &W8A8Weight) -> W8A8Weight {
    let flex = Device::flex();
    W8A8Weight {
        codes: weight.codes.clone().to_device(&flex),
        scales: weight.scales.clone().to_device(&flex),
        activations: activation_mode_on_flex(&weight.activations),
        ..weight.clone()
    }
}

fn fp8_on_flex(weight: &Fp8Weight) -> Fp8Weight {
    let flex = Device::flex();
    Fp8Weight {
        codes: weight.codes.clone().to_device(&flex),
        scales: weight.scales.clone().to_device(&flex),
        activations: activation_mode_on_flex(&weight.activations),
        table: weight.table.clone().to_device(&flex),
        ..weight.clone()
    }
}

/// int8 products accumulate exactly in i32: at K ≤ 1032 the f32 reference is exact too,
/// so the outputs are equal bit for bit, in f32 and after rounding to f16/bf16.
fn w8a8_on(device: Device) {
    let mut rng = StdRng::seed_from_u64(8);
    let (k, n) = (256, 192);
    let static_scale = || ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.004f32], [1]), (&device, DType::F32)));
    let dtypes: Vec<DType> = [DType::F32, DType::F16, DType::BF16].into_iter().filter(|&d| device.supports_dtype(d)).collect();
    for (mode, rows) in ROWS.into_iter().map(|r| (ActivationQuant::DynamicPerToken, r)).chain([(static_scale(), 5), (static_scale(), 64)]) {
        let weight = w8a8_weight(k, n, mode, &device, &mut rng);
        let on_flex = w8a8_on_flex(&weight);
        for &dtype in &dtypes {
            let x = activations(rows, k, dtype, &device, &mut rng);
            let GemmKernel::Portable { tile_m } = kernels::select::w8a8_gemm(&weight, &device, dtype, rows).kernel else {
                panic!("expected the portable W8A8 kernel");
            };
            let ours = to_f32(kernels::w8a8_gemm(&weight, x.clone(), tile_m));
            let reference = to_f32(on_flex.forward_reference(x.to_device(&Device::flex())));
            let mismatches = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
            assert_eq!(mismatches, 0, "{} rows={rows} {dtype:?}: {mismatches} outputs differ", weight.activations.describe());
        }
    }
    // At Llama's K the i32 sums are exact and the f32 reference rounds: equal within f32.
    let weight = w8a8_weight(4096, 64, ActivationQuant::DynamicPerToken, &device, &mut rng);
    let x = activations(3, 4096, DType::F32, &device, &mut rng);
    let ours = to_f32(kernels::w8a8_gemm(&weight, x.clone(), 4));
    let reference = to_f32(w8a8_on_flex(&weight).forward_reference(x.to_device(&Device::flex())));
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&ours, &reference) <= 1e-6 * scale, "K=4096: {}", max_abs_diff(&ours, &reference));
}

#[test]
fn w8a8_gemm_on_wgpu() {
    w8a8_on(Device::wgpu(Default::default()));
}

#[test]
fn w8a8_gemm_on_cubecl_cpu() {
    w8a8_on(Device::cpu());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fp8Scales {
    Tensor,
    Channel,
    /// 128×128 blocks (DeepSeek `weight_scale_inv`, compressed-tensors FP8_BLOCK).
    Block,
}

/// A random e4m3 weight (every finite byte) with scales of the given layout.
pub(crate) fn fp8_weight(k: usize, n: usize, scales: Fp8Scales, activations: ActivationQuant, device: &Device, rng: &mut StdRng) -> Fp8Weight {
    let codes = random_words(n, k, rng, |rng| loop {
        let byte = rng.random::<u8>();
        if byte & 0x7F != 0x7F {
            break byte;
        }
    });
    let (shape, block) = match scales {
        Fp8Scales::Tensor => ([1, 1], None),
        Fp8Scales::Channel => ([n, 1], None),
        Fp8Scales::Block => ([n.div_ceil(128), k.div_ceil(128)], Some([128, 128])),
    };
    let values: Vec<f32> = (0..shape[0] * shape[1]).map(|_| rng.random_range(1e-4..1e-3)).collect();
    Fp8Weight {
        in_features: k,
        out_features: n,
        codes: Tensor::from_data(TensorData::new(codes, [n, k / 4]), (device, DType::I32)),
        scales: floats(values, shape, DType::F32, device),
        block,
        activations,
        table: e4m3_table(device),
    }
}

fn fp8_relative_error(weight: &Fp8Weight, rows: usize, dtype: DType, device: &Device, rng: &mut StdRng) -> f32 {
    let selection = kernels::select::fp8_gemm(weight, device, dtype, rows);
    let GemmKernel::Portable { tile_m } = selection.kernel else {
        panic!("expected the portable FP8 kernel: {selection:?}");
    };
    fp8_relative_error_of(weight, rows, dtype, device, rng, |w, x| kernels::fp8_gemm(w, x, tile_m))
}

/// The largest error of `kernel`'s output against the reference, relative to each row's
/// largest reference value.
pub(crate) fn fp8_relative_error_of(weight: &Fp8Weight, rows: usize, dtype: DType, device: &Device, rng: &mut StdRng, kernel: impl Fn(&Fp8Weight, Tensor<2>) -> Tensor<2>) -> f32 {
    let x = activations(rows, weight.in_features, dtype, device, rng);
    let ours = to_f32(kernel(weight, x.clone()));
    let reference = to_f32(fp8_on_flex(weight).forward_reference(x.to_device(&Device::flex())));
    assert_eq!(ours.len(), reference.len());
    let diff = max_abs_diff(&ours, &reference);
    assert!(diff.is_finite(), "non-finite output");
    // Rows differ in magnitude by up to 10^6: compare each row against its own scale.
    let n = weight.out_features;
    (0..rows)
        .map(|r| {
            let (ours, reference) = (&ours[r * n..(r + 1) * n], &reference[r * n..(r + 1) * n]);
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            if scale == 0.0 { max_abs_diff(ours, reference) } else { max_abs_diff(ours, reference) / scale }
        })
        .fold(0f32, f32::max)
}

/// Every scale layout, quantized and weight-only, against the reference: equal up to
/// f32 summation order (the codes are the reference's, exactly) in f32, and up to the
/// reference's rounding of dequantized values to half precision otherwise.
fn fp8_on(device: Device) {
    let mut rng = StdRng::seed_from_u64(21);
    let static_scale = || ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.02f32], [1]), (&device, DType::F32)));
    let (k, n) = (320, 200);
    for rows in ROWS {
        let weight = fp8_weight(k, n, Fp8Scales::Channel, ActivationQuant::DynamicPerToken, &device, &mut rng);
        let err = fp8_relative_error(&weight, rows, DType::F32, &device, &mut rng);
        assert!(err < 2e-6, "per-channel, per-token rows={rows}: relative error {err}");
    }
    let cases = [
        (Fp8Scales::Tensor, ActivationQuant::DynamicPerTensor),
        (Fp8Scales::Tensor, static_scale()),
        (Fp8Scales::Channel, static_scale()),
        (Fp8Scales::Block, ActivationQuant::DynamicPerGroup(128)),
        (Fp8Scales::Block, ActivationQuant::DynamicPerToken),
        (Fp8Scales::Channel, ActivationQuant::DynamicPerGroup(64)),
        (Fp8Scales::Channel, ActivationQuant::None),
        (Fp8Scales::Block, ActivationQuant::None),
        (Fp8Scales::Tensor, ActivationQuant::None),
    ];
    for (scales, mode) in cases {
        let what = format!("{scales:?} {}", mode.describe());
        let weight = fp8_weight(k, n, scales, mode, &device, &mut rng);
        for rows in [1usize, 5, 16] {
            let err = fp8_relative_error(&weight, rows, DType::F32, &device, &mut rng);
            assert!(err < 2e-6, "{what} rows={rows}: relative error {err}");
        }
        for dtype in [DType::F16, DType::BF16].into_iter().filter(|&d| device.supports_dtype(d)) {
            let err = fp8_relative_error(&weight, 7, dtype, &device, &mut rng);
            assert!(err < 2e-2, "{what} {dtype:?}: relative error {err}");
        }
    }
}

#[test]
fn fp8_gemm_on_wgpu() {
    fp8_on(Device::wgpu(Default::default()));
}

#[test]
fn fp8_gemm_on_cubecl_cpu() {
    fp8_on(Device::cpu());
}

#[test]
fn byte_gemm_selector_explains_its_choice() {
    let mut rng = StdRng::seed_from_u64(2);
    let flex = Device::flex();
    let weight = fp8_weight(256, 64, Fp8Scales::Block, ActivationQuant::DynamicPerGroup(128), &flex, &mut rng);
    let on_flex = kernels::select::fp8_gemm(&weight, &flex, DType::F32, 1);
    assert_eq!(on_flex.kernel, GemmKernel::Host);
    assert!(on_flex.reason.contains("Flex") && on_flex.reason.contains("fused kernel"), "{}", on_flex.reason);
    // Tiled under every vector set but AMX, whose tile unit takes block-scaled FP8 at
    // every row count, from its own rows with quantized activations and with float ones.
    let float_activations = fp8_weight(256, 64, Fp8Scales::Block, ActivationQuant::None, &flex, &mut rng);
    for weight in [&weight, &float_activations] {
        let tiled = kernels::select::fp8_gemm(weight, &flex, DType::F32, 66);
        match kernels::host::amx_rows(TileProducts::Bytes) {
            Some(rows) => assert!(tiled.reason.contains(&format!("fused kernel, at every row count (on AMX's tile unit from {rows} rows)")), "{}", tiled.reason),
            None => assert!(tiled.reason.contains("tiled kernel"), "{}", tiled.reason),
        }
    }
    let forced = kernels::with_policy(KernelPolicy::Reference, || kernels::select::fp8_gemm(&weight, &flex, DType::F32, 1));
    assert_eq!(forced.kernel, GemmKernel::Reference);
    let per_group_int8 = w8a8_weight(128, 64, ActivationQuant::DynamicPerGroup(32), &flex, &mut rng);
    let refused = kernels::select::w8a8_gemm(&per_group_int8, &flex, DType::F32, 4);
    assert_eq!(refused.kernel, GemmKernel::Reference);
    assert!(refused.reason.contains("per-group"), "{}", refused.reason);

    let wgpu = Device::wgpu(Default::default());
    let block = fp8_weight(256, 64, Fp8Scales::Block, ActivationQuant::DynamicPerGroup(128), &wgpu, &mut rng);
    assert_eq!(kernels::select::fp8_gemm(&block, &wgpu, DType::F32, 20).kernel, GemmKernel::Portable { tile_m: 8 });
    let mismatched = fp8_weight(256, 64, Fp8Scales::Block, ActivationQuant::DynamicPerGroup(64), &wgpu, &mut rng);
    let refused = kernels::select::fp8_gemm(&mismatched, &wgpu, DType::F32, 20);
    assert_eq!(refused.kernel, GemmKernel::Reference);
    assert!(refused.reason.contains("do not match"), "{}", refused.reason);
    // The refused layout still runs, on the reference.
    let x = activations(2, 256, DType::F32, &wgpu, &mut rng);
    assert_eq!(to_f32(kernels::fp8_forward(&mismatched, &kernels::FragmentCache::new(), x.clone())), to_f32(mismatched.forward_reference(x)));

    let float_acts = w8a8_weight(128, 64, ActivationQuant::None, &wgpu, &mut rng);
    let refused = kernels::select::w8a8_gemm(&float_acts, &wgpu, DType::F32, 4);
    assert_eq!(refused.kernel, GemmKernel::Reference);
    assert!(refused.reason.contains("float"), "{}", refused.reason);
    let per_token = w8a8_weight(128, 64, ActivationQuant::DynamicPerToken, &wgpu, &mut rng);
    assert_eq!(kernels::select::w8a8_gemm(&per_token, &wgpu, DType::F32, 4).kernel, GemmKernel::Portable { tile_m: 4 });
    let forced = kernels::with_policy(KernelPolicy::Reference, || kernels::select::w8a8_gemm(&per_token, &wgpu, DType::F32, 4));
    assert!(forced.reason.contains("EMBER_KERNELS"), "{}", forced.reason);
    // Asking for tensor cores on a runtime without them keeps the portable kernel.
    let asked = kernels::with_policy(KernelPolicy::TensorCores, || kernels::select::w8a8_gemm(&per_token, &wgpu, DType::F32, 4));
    assert_eq!(asked.kernel, GemmKernel::Portable { tile_m: 4 });
    assert!(asked.reason.contains("no tensor cores"), "{}", asked.reason);

    // byte_mma streams the weights of decode shapes through shared memory, stages both
    // operands for many rows, with half the rows per warp when scales change along K.
    let decode = kernels::byte_mma_tiling(&wgpu, 16, 4096, 4096, false);
    assert_eq!((decode.m_tiles, decode.staging), (1, Staging::Weights { stages: WEIGHT_STAGES }));
    let prefill = kernels::byte_mma_tiling(&wgpu, kernels::select::STAGED_ROWS, 4096, 4096, false);
    assert_eq!((prefill.m_tiles, prefill.warps, prefill.staging), (4, 2, Staging::Operands { stages: 3 }));
    let blocks = kernels::byte_mma_tiling(&wgpu, 4096, 4096, 4096, true);
    assert_eq!((blocks.m_tiles, blocks.staging), (2, Staging::Operands { stages: 3 }));
}

/// Each W8A8 / FP8 fixture on wgpu: the kernels' logits match the Burn-ops path's on the
/// same device and still match the tool's reference (tolerances are fractions of the
/// reference logit range). With weight-only layers the paths differ by f32 summation
/// order alone. Where activations are quantized at every layer, a last-bit difference
/// can move a value across an e4m3 rounding boundary in a later layer (a step of up to
/// 1/16 of it), so the paths agree less tightly than either agrees with the tool.
fn fixture_through_kernels(name: &str, fp8_weight_only: bool, path_tolerance: f32, tool_tolerance: f32) {
    let device = Device::wgpu(Default::default());
    fixture_through(&device, KernelPolicy::Auto, name, fp8_weight_only, path_tolerance, tool_tolerance, |kernel| matches!(kernel, GemmKernel::Portable { .. }));
}

/// [`fixture_through_kernels`] on `device` under `policy`, each quantized layer's kernel
/// checked by `expected`.
fn fixture_through(device: &Device, policy: KernelPolicy, name: &str, fp8_weight_only: bool, path_tolerance: f32, tool_tolerance: f32, expected: impl Fn(&GemmKernel) -> bool) {
    let device = device.clone();
    let mut options = LoadOptions::new(device.clone(), ComputeDtype::F32);
    options.fp8_weight_only = fp8_weight_only;
    let loaded = load_model(&fixture(name), &options).expect("fixture loads");
    let linears = loaded.model.linears();
    let quantized: Vec<_> = linears.iter().filter(|l| !matches!(l.repr(), ember::quant::LinearRepr::Dense { .. })).collect();
    assert!(!quantized.is_empty(), "{name}: no quantized layers");
    for layer in &quantized {
        let kernel = kernels::with_policy(policy, || match layer.repr() {
            ember::quant::LinearRepr::Fp8(w) => kernels::select::fp8_gemm(w, &device, DType::F32, 4).kernel,
            ember::quant::LinearRepr::W8A8(w) => kernels::select::w8a8_gemm(w, &device, DType::F32, 4).kernel,
            other => panic!("{name}: {} is {}", layer.name(), other.name()),
        });
        assert!(expected(&kernel), "{name}: {} runs {kernel:?}", layer.name());
    }
    let reference = Reference::read(name);
    let ours = kernels::with_policy(policy, || prompt_logits(&loaded, &reference.input_ids));
    let burn_ops = kernels::with_policy(KernelPolicy::Reference, || prompt_logits(&loaded, &reference.input_ids));
    let range = reference.logit_range();
    let vs_path = max_abs_diff(&ours, &burn_ops);
    let vs_tool = max_abs_diff(&ours, &reference.logits);
    println!("{name} (weight-only {fp8_weight_only}): kernels vs Burn-ops {:.2e}, vs tool {:.2e} of range", vs_path / range, vs_tool / range);
    assert!(vs_path <= path_tolerance * range, "{name}: kernels differ from the reference path by {vs_path}");
    assert!(vs_tool <= tool_tolerance * range, "{name}: kernels differ from the tool by {vs_tool}");
}

#[test]
fn w8a8_int8_fixture_through_kernels() {
    fixture_through_kernels("llama-ct-w8a8-int8", false, 1e-3, 5e-3);
}

#[test]
fn fp8_dynamic_fixture_through_kernels() {
    fixture_through_kernels("llama-ct-fp8-dynamic", false, 1e-3, 5e-3);
}

/// DeepSeek-style block FP8, with the scheme's e4m3 activation groups (whose effect on
/// these logits the tool's float-activation reference does not include; see
/// quantized_models.rs) and weight-only.
#[test]
fn fp8_block_fixture_through_kernels() {
    fixture_through_kernels("llama-fp8-block-scaleinv", false, 1e-3, 1.5e-2);
    fixture_through_kernels("llama-fp8-block-scaleinv", true, 1e-5, 5e-3);
}

/// Row tiles per warp, K splits, rows: the tensor-core kernels' coverage cases, from one
/// row to three row tiles, one K slice to several (direct output and f32 partials).
const MMA_SHAPES: [(u32, u32, usize); 5] = [(1, 1, 1), (1, 3, 5), (2, 1, 17), (1, 2, 33), (4, 2, 64)];

/// A tiling of `m_tiles`, `splits` with `warps` warps along N, loading its operands as at
/// decode (the weights staged [`WEIGHT_STAGES`] K blocks deep).
fn mma_tiling(m_tiles: u32, splits: u32, warps: u32, tensor_cores: bool) -> MmaTiling {
    MmaTiling { m_tiles, warps, k_slices: 1, splits, staging: Staging::Weights { stages: WEIGHT_STAGES }, tensor_cores }
}

/// Row tiles per warp, K splits, rows for `byte_mma` staged through shared memory: cubes
/// of two warp rows, more K blocks per split than slots (K = 256 and 384 are 4 and 6
/// blocks), and rows past one cube.
const STAGED_SHAPES: [(u32, u32, usize); 3] = [(1, 1, 5), (1, 2, 40), (2, 1, 70)];

/// A tiling of `m_tiles`, `splits` with `warps` warps along N and `staging`.
fn tiling_with(warps: u32, staging: Staging, tensor_cores: bool) -> impl Fn(u32, u32) -> MmaTiling {
    move |m_tiles, splits| MmaTiling { staging, ..mma_tiling(m_tiles, splits, warps, tensor_cores) }
}

/// Both operands staged `stages` K blocks deep.
const fn all_staged(stages: u32) -> Staging {
    Staging::Operands { stages }
}

/// The int8 tensor-core kernel against the portable one: the i32 sums are the same
/// integers, so with one K slice the outputs are equal bit for bit (same epilogue), and
/// with several they differ by the f32 rounding of adding scaled slices.
fn w8a8_mma_on(device: &Device, tiling: impl Fn(u32, u32) -> MmaTiling, shapes: &[(u32, u32, usize)], dtypes: &[DType]) {
    let mut rng = StdRng::seed_from_u64(40);
    let static_scale = || ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.004f32], [1]), (device, DType::F32)));
    // N = 40 leaves a partial column block and, with two warps, an idle warp.
    for (mode, (k, n)) in [(ActivationQuant::DynamicPerToken, (256, 40)), (static_scale(), (128, 48))] {
        let weight = w8a8_weight(k, n, mode, device, &mut rng);
        for &(m_tiles, splits, rows) in shapes {
            for &dtype in dtypes {
                let tiling = tiling(m_tiles, splits);
                let what = format!("{} k={k} n={n} rows={rows} {tiling:?} {dtype:?}", weight.activations.describe());
                let x = activations(rows, k, dtype, device, &mut rng);
                let ours = to_f32(kernels::w8a8_mma_gemm(&weight, x.clone(), tiling));
                let portable = to_f32(kernels::w8a8_gemm(&weight, x, 4));
                if splits == 1 {
                    let mismatches = ours.iter().zip(&portable).filter(|(a, b)| a != b).count();
                    assert_eq!(mismatches, 0, "{what}: {mismatches} outputs differ");
                } else {
                    let tolerance = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
                    let err = max_relative_error(&ours, &portable, n);
                    assert!(err <= tolerance, "{what}: relative error {err}");
                }
            }
        }
    }
}

/// The FP8 tensor-core kernel against the reference for every scale layout with e4m3
/// activations (the codes are the reference's; sums differ in order).
fn fp8_mma_on(device: &Device, tiling: impl Fn(u32, u32) -> MmaTiling, shapes: &[(u32, u32, usize)], dtypes: &[DType]) {
    let mut rng = StdRng::seed_from_u64(41);
    let static_scale = || ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.02f32], [1]), (device, DType::F32)));
    let cases = [
        (Fp8Scales::Channel, ActivationQuant::DynamicPerToken, (256, 40)),
        (Fp8Scales::Tensor, static_scale(), (128, 24)),
        (Fp8Scales::Tensor, ActivationQuant::DynamicPerTensor, (192, 16)),
        // Two weight blocks along N and three 128-column chunks, the last one split.
        (Fp8Scales::Block, ActivationQuant::DynamicPerGroup(128), (384, 200)),
        (Fp8Scales::Channel, ActivationQuant::DynamicPerGroup(64), (256, 32)),
    ];
    for (scales, mode, (k, n)) in cases {
        let weight = fp8_weight(k, n, scales, mode, device, &mut rng);
        for &(m_tiles, splits, rows) in shapes {
            for &dtype in dtypes {
                let tiling = tiling(m_tiles, splits);
                let what = format!("{scales:?} {} k={k} n={n} rows={rows} {tiling:?} {dtype:?}", weight.activations.describe());
                let err = fp8_relative_error_of(&weight, rows, dtype, device, &mut rng, |w, x| kernels::fp8_mma_gemm(w, x, tiling));
                let tolerance = if dtype == DType::F32 { 2e-6 } else { 2e-2 };
                assert!(err < tolerance, "{what}: relative error {err}");
            }
        }
    }
}

/// Largest `|a - b|` per row of `n`, relative to the row's largest `|b|`.
fn max_relative_error(ours: &[f32], reference: &[f32], n: usize) -> f32 {
    ours.chunks(n)
        .zip(reference.chunks(n))
        .map(|(ours, reference)| {
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(ours, reference);
            if scale == 0.0 { diff } else { diff / scale }
        })
        .fold(0f32, f32::max)
}

/// The emulation on wgpu checks the fragment indexing, the chunked scale epilogue and
/// the K splits, with the weights staged as at decode (K = 128 to 384 is two to six
/// blocks: fewer blocks than slots, and slots reused) and unstaged; the CPU runtime adds
/// nothing here (no bit tricks differ between runtimes) and takes minutes to compile and
/// run the barrier-heavy emulation.
#[test]
fn byte_mma_emulated_on_wgpu() {
    let device = Device::wgpu(Default::default());
    let decode = |m_tiles, splits| mma_tiling(m_tiles, splits, 2, false);
    w8a8_mma_on(&device, decode, &MMA_SHAPES, &[DType::F32]);
    w8a8_mma_on(&device, decode, &MMA_SHAPES[2..3], &[DType::F16]);
    fp8_mma_on(&device, decode, &MMA_SHAPES, &[DType::F32]);
    fp8_mma_on(&device, decode, &MMA_SHAPES[1..2], &[DType::F16]);
    let unstaged = || tiling_with(2, Staging::Direct, false);
    w8a8_mma_on(&device, unstaged(), &MMA_SHAPES[..2], &[DType::F32]);
    fp8_mma_on(&device, unstaged(), &MMA_SHAPES[1..3], &[DType::F32]);

    // K or scale chunks in partial 64-column blocks run the portable kernels instead.
    let mut rng = StdRng::seed_from_u64(43);
    let tiling = mma_tiling(1, 1, 2, false);
    let int8 = w8a8_weight(96, 32, ActivationQuant::DynamicPerToken, &device, &mut rng);
    let x = activations(3, 96, DType::F32, &device, &mut rng);
    assert_eq!(to_f32(kernels::w8a8_mma_gemm(&int8, x.clone(), tiling)), to_f32(kernels::w8a8_gemm(&int8, x, 8)));
    let fp8 = fp8_weight(128, 32, Fp8Scales::Channel, ActivationQuant::DynamicPerGroup(32), &device, &mut rng);
    let x = activations(3, 128, DType::F32, &device, &mut rng);
    assert_eq!(to_f32(kernels::fp8_mma_gemm(&fp8, x.clone(), tiling)), to_f32(kernels::fp8_gemm(&fp8, x, 8)));
}

/// `byte_mma` with both operands staged through shared memory, emulated on wgpu: two and
/// three K blocks deep, one and two warps along N (lavapipe gives a cube 32 KiB of shared
/// memory, stage and emulation together).
#[test]
fn byte_mma_staged_emulated_on_wgpu() {
    let device = Device::wgpu(Default::default());
    w8a8_mma_on(&device, tiling_with(1, all_staged(2), false), &STAGED_SHAPES, &[DType::F32]);
    w8a8_mma_on(&device, tiling_with(2, all_staged(3), false), &STAGED_SHAPES[1..2], &[DType::F16]);
    fp8_mma_on(&device, tiling_with(1, all_staged(3), false), &STAGED_SHAPES, &[DType::F32]);
    fp8_mma_on(&device, tiling_with(2, all_staged(2), false), &STAGED_SHAPES[2..], &[DType::F32]);
}

/// With one scale for every activation, activations that load directly are quantized
/// inside `byte_mma` (weights staged or not): the codes are the quantization kernel's,
/// so the outputs equal those of the kernel staging both operands, which reads that
/// kernel's codes.
#[test]
fn byte_mma_fused_quantization_emulated_on_wgpu() {
    let device = Device::wgpu(Default::default());
    let mut rng = StdRng::seed_from_u64(44);
    let static_scale = |value: f32| ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![value], [1]), (&device, DType::F32)));
    let staged = tiling_with(1, all_staged(2), false)(1, 2);
    for (fused, dtype) in [(mma_tiling(1, 2, 2, false), DType::F32), (mma_tiling(1, 2, 2, false), DType::F16), (tiling_with(2, Staging::Direct, false)(1, 2), DType::F16)] {
        assert!(kernels::quantizes_as_it_loads(&ActivationQuant::DynamicPerTensor, &fused) && !kernels::quantizes_as_it_loads(&ActivationQuant::DynamicPerTensor, &staged));
        let x = activations(21, 256, dtype, &device, &mut rng);
        let int8 = w8a8_weight(256, 40, static_scale(0.004), &device, &mut rng);
        assert_eq!(to_f32(kernels::w8a8_mma_gemm(&int8, x.clone(), fused)), to_f32(kernels::w8a8_mma_gemm(&int8, x.clone(), staged)), "int8 static {dtype:?} {fused:?}");
        for mode in [static_scale(0.02), ActivationQuant::DynamicPerTensor] {
            let what = format!("fp8 {} {dtype:?} {fused:?}", mode.describe());
            let fp8 = fp8_weight(256, 40, Fp8Scales::Channel, mode, &device, &mut rng);
            assert_eq!(to_f32(kernels::fp8_mma_gemm(&fp8, x.clone(), fused)), to_f32(kernels::fp8_mma_gemm(&fp8, x.clone(), staged)), "{what}");
        }
    }
}

/// Weight-only FP8 on the tensor-core integer kernel: the e4m3 bytes repack into 8-bit
/// fragments losslessly, and through the emulated `mma.m16n8k16` the products match the
/// reference for every scale layout (`dtypes` f16: bit-level decoding where the runtime
/// allows it; bf16: conversion).
fn fp8_weight_only_int_mma_on(device: &Device, warps: u32, tensor_cores: bool, cases: &[(Fp8Scales, usize, usize)], shapes: &[(u32, u32, usize)], dtypes: &[DType]) {
    use ember::quant::packing::unpack;
    use ember::quant::repr::IntFragments;
    let mut rng = StdRng::seed_from_u64(44);
    for &(scales, k, n) in cases {
        let weight = fp8_weight(k, n, scales, ActivationQuant::None, device, &mut rng);
        let fragments = IntFragments::repack_fp8(&weight).expect("whole blocks");
        let bytes = |t: Tensor<2, Int>| t.into_data().convert::<i32>().try_to_vec::<i32>().expect("i32");
        assert_eq!(bytes(fragments.values()), bytes(unpack(weight.codes.clone(), 8, 1).transpose()), "{scales:?}: repack lost bytes");
        for &(m_tiles, splits, rows) in shapes {
            for &dtype in dtypes {
                let tiling = mma_tiling(m_tiles, splits, warps, tensor_cores);
                let err = fp8_relative_error_of(&weight, rows, dtype, device, &mut rng, |_, x| kernels::int_mma_gemm(&fragments, x, tiling));
                assert!(err < 2e-2, "{scales:?} k={k} n={n} rows={rows} m_tiles={m_tiles} splits={splits} {dtype:?}: relative error {err}");
            }
        }
    }
}

const FP8_WEIGHT_ONLY_CASES: [(Fp8Scales, usize, usize); 3] = [(Fp8Scales::Tensor, 128, 48), (Fp8Scales::Channel, 192, 32), (Fp8Scales::Block, 256, 256)];

#[test]
fn fp8_weight_only_int_mma_emulated_on_wgpu() {
    let device = Device::wgpu(Default::default());
    fp8_weight_only_int_mma_on(&device, 2, false, &FP8_WEIGHT_ONLY_CASES, &MMA_SHAPES[..4], &[DType::F16]);
}

/// The CPU runtime decodes the bytes bit by bit in f16 (wgpu converts): one small case.
#[test]
fn fp8_weight_only_int_mma_emulated_on_cubecl_cpu() {
    let device = Device::cpu();
    fp8_weight_only_int_mma_on(&device, 1, false, &[(Fp8Scales::Channel, 64, 16)], &MMA_SHAPES[1..2], &[DType::F16, DType::BF16]);
}

/// The real `mma.sync` instructions (sm_89+), on every emulated case (weight-only FP8
/// through `int_mma` too) and at Llama-3-8B's shapes. Needs an NVIDIA GPU: `cargo test --release -- --ignored byte_mma_tensor_cores_on_cuda`.
#[test]
#[ignore = "needs a CUDA device with FP8 tensor cores (sm_89+)"]
fn byte_mma_tensor_cores_on_cuda() {
    let device = Device::cuda(0);
    let dtypes = [DType::F32, DType::F16, DType::BF16];
    for staging in [Staging::Direct, Staging::Weights { stages: 2 }, Staging::Weights { stages: WEIGHT_STAGES }, all_staged(2), all_staged(3)] {
        let shapes: &[_] = if staging.stages_activations() { &STAGED_SHAPES } else { &MMA_SHAPES };
        w8a8_mma_on(&device, tiling_with(4, staging, true), shapes, &dtypes);
        fp8_mma_on(&device, tiling_with(4, staging, true), shapes, &dtypes);
    }
    fp8_weight_only_int_mma_on(&device, 4, true, &FP8_WEIGHT_ONLY_CASES, &MMA_SHAPES, &dtypes[1..]);
    // The selector runs them only when asked to, and only for formats they cover.
    let mut rng = StdRng::seed_from_u64(42);
    let per_token = w8a8_weight(256, 64, ActivationQuant::DynamicPerToken, &device, &mut rng);
    let auto = kernels::select::w8a8_gemm(&per_token, &device, DType::BF16, 16);
    assert!(matches!(auto.kernel, GemmKernel::Portable { .. }) && auto.reason.contains("EMBER_KERNELS=tensor-cores"), "{auto:?}");
    let opted_in = kernels::with_policy(KernelPolicy::TensorCores, || kernels::select::w8a8_gemm(&per_token, &device, DType::BF16, 16));
    assert!(matches!(opted_in.kernel, GemmKernel::TensorCores(_)), "{opted_in:?}");
    assert!(!opted_in.reason.contains("quantizing"), "{opted_in:?}");
    let input_scale = ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.004f32], [1]), (&device, DType::F32)));
    let static_scale = w8a8_weight(256, 64, input_scale, &device, &mut rng);
    let fused = kernels::with_policy(KernelPolicy::TensorCores, || kernels::select::w8a8_gemm(&static_scale, &device, DType::BF16, 16));
    assert!(fused.reason.contains("quantizing the activations as it loads them"), "{fused:?}");
    for (k, n) in [(4096, 4096), (4096, 14336), (14336, 4096)] {
        let weight = w8a8_weight(k, n, ActivationQuant::DynamicPerToken, &device, &mut rng);
        let block = fp8_weight(k, n, Fp8Scales::Block, ActivationQuant::DynamicPerGroup(128), &device, &mut rng);
        for rows in [1, 16, 128, 512] {
            let x = activations(rows, k, DType::BF16, &device, &mut rng);
            let ours = to_f32(kernels::w8a8_mma_gemm(&weight, x.clone(), kernels::byte_mma_tiling(&device, rows, k, n, false)));
            let portable = to_f32(kernels::w8a8_gemm(&weight, x, 4));
            let err = max_relative_error(&ours, &portable, n);
            assert!(err <= 1e-2, "int8 [{k}x{n}] rows={rows}: relative error {err}");
            let err = fp8_relative_error_of(&block, rows, DType::BF16, &device, &mut rng, |w, x| kernels::fp8_mma_gemm(w, x, kernels::byte_mma_tiling(&device, rows, k, n, true)));
            assert!(err < 2e-2, "fp8 block [{k}x{n}] rows={rows}: relative error {err}");
        }
    }
}

/// The W8A8 and FP8 fixtures with every quantized layer on the tensor-core kernels:
/// logits as close to the Burn-ops path and to the tool as the portable kernels'.
/// Needs an NVIDIA GPU (sm_89+): `cargo test --release -- --ignored fixtures_through_tensor_cores_on_cuda`.
#[test]
#[ignore = "needs a CUDA device with FP8 tensor cores (sm_89+)"]
fn fixtures_through_tensor_cores_on_cuda() {
    let device = Device::cuda(0);
    let tensor_cores = |kernel: &GemmKernel| matches!(kernel, GemmKernel::TensorCores(_));
    fixture_through(&device, KernelPolicy::TensorCores, "llama-ct-w8a8-int8", false, 1e-3, 5e-3, tensor_cores);
    fixture_through(&device, KernelPolicy::TensorCores, "llama-ct-fp8-dynamic", false, 1e-3, 5e-3, tensor_cores);
    fixture_through(&device, KernelPolicy::TensorCores, "llama-fp8-block-scaleinv", false, 1e-3, 1.5e-2, tensor_cores);
}

/// The host kernels' pieces on Flex: the e4m3 decodes (per byte, and a slice times a
/// scale, whose vector form goes through f16) equal the table for every byte, and the
/// activation quantization gives the reference's grid values and scaled-back values
/// exactly, in every mode.
#[test]
fn host_activation_quantization_matches_the_reference() {
    use ember::quant::kernels::host::byte_gemm::{self, RowScales};
    for byte in 0..=255u8 {
        let (ours, table) = (byte_gemm::e4m3_to_f32(byte), e4m3_value(byte));
        assert!(ours == table || (ours.is_nan() && table.is_nan()), "byte {byte:#04x}: {ours} vs {table}");
    }
    // Every byte (sixteen at a time), eight more with both NaNs (eight at a time), then
    // three for the scalar tail.
    let bytes: Vec<u8> = (0..=255u8).chain([0x81, 0x7F, 0x38, 0xFF, 0x00, 0x08, 0x80, 0x77]).chain([0xF8, 0x7E, 0x01]).collect();
    for scale in [1.0f32, 3.0e-4, 0.7] {
        let mut decoded = vec![0f32; bytes.len()];
        byte_gemm::decode_e4m3(&bytes, scale, &mut decoded);
        for (&byte, &ours) in bytes.iter().zip(&decoded) {
            let expected = e4m3_value(byte) * scale;
            assert!(ours.to_bits() == expected.to_bits() || (ours.is_nan() && expected.is_nan()), "byte {byte:#04x} × {scale}: {ours} vs {expected}");
        }
    }
    let flex = Device::flex();
    let mut rng = StdRng::seed_from_u64(31);
    let k = 320;
    let static_mode = ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.0125f32], [1]), (&flex, DType::F32)));
    let modes = [
        (ActivationQuant::DynamicPerToken, RowScales::PerRow),
        (ActivationQuant::DynamicPerTensor, RowScales::PerTensor),
        (ActivationQuant::DynamicPerGroup(128), RowScales::PerGroup(128)),
        (static_mode, RowScales::Static(0.0125)),
    ];
    for grid in [ActivationGrid::Int8, ActivationGrid::E4M3] {
        for (mode, scales) in &modes {
            for rows in ROWS {
                let x = activations(rows, k, DType::F32, &flex, &mut rng);
                let what = format!("{grid:?} {} rows={rows}", mode.describe());
                let ours = byte_gemm::quantize(&to_f32(x.clone()), rows, k, *scales, grid);
                let reference = quantize_activations(x, mode, grid).expect("quantized");
                let expected = to_f32(reference.values.clone());
                let mismatches = ours.values.iter().zip(&expected).filter(|(a, b)| a != b).count();
                assert_eq!(mismatches, 0, "{what}: {mismatches} grid values differ from the reference");
                let dequantized = ours.dequantize();
                let expected = to_f32(reference.dequantize());
                let mismatches = dequantized.iter().zip(&expected).filter(|(a, b)| a != b).count();
                assert_eq!(mismatches, 0, "{what}: {mismatches} scaled-back values differ from the reference");
            }
        }
    }
}
