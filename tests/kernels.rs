//! The portable W4A16/W8A16 kernel against the Burn-ops reference on the CubeCL runtimes
//! CI has (wgpu on lavapipe, the CPU runtime): layouts, zero points, act-order, row
//! counts and dtypes, plus the selector's choices.

use burn::tensor::{DType, Device, Tensor, TensorData};
use ember_quant::kernels::{self, IntGemmKernel, KernelPolicy};
use ember_quant::packing::int_tensor;
use ember_quant::repr::{PackedIntWeight, ZeroPoints};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
enum Zeros {
    Midpoint,
    Integer,
    Float,
}

#[derive(Clone, Copy, Debug)]
enum Order {
    Plain,
    /// GPTQ desc_act: a permutation of rows, every group full.
    ActOrder,
    /// An act-order map whose groups have uneven sizes (stays indexed after sorting).
    Uneven,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    bits: u32,
    k: usize,
    n: usize,
    /// 0 = per-channel (one group spanning K).
    group_size: usize,
    zeros: Zeros,
    order: Order,
}

fn random_weight(case: Case, device: &Device, rng: &mut StdRng) -> PackedIntWeight {
    let Case { bits, k, n, .. } = case;
    let group_size = if case.group_size == 0 { k } else { case.group_size };
    let groups = k / group_size;
    let per = (32 / bits) as usize;
    let levels = 1i32 << bits;
    let q: Vec<i32> = (0..k * n).map(|_| rng.random_range(0..levels)).collect();
    let mut words = vec![0i32; k / per * n];
    for row in 0..k {
        for col in 0..n {
            words[row / per * n + col] |= q[row * n + col] << (bits as usize * (row % per));
        }
    }
    let packed = int_tensor(words, [k / per, n], device);
    let floats = |len: usize, lo: f32, hi: f32, rng: &mut StdRng| -> Vec<f32> { (0..len).map(|_| rng.random_range(lo..hi)).collect() };
    let upload = |values: Vec<f32>| Tensor::<2>::from_data(TensorData::new(values, [groups, n]), (device, DType::F32));
    let scales = upload(floats(groups * n, 0.002, 0.02, rng));
    let zeros = match case.zeros {
        Zeros::Midpoint => ZeroPoints::Midpoint,
        Zeros::Integer => ZeroPoints::Integer(int_tensor((0..groups * n).map(|_| rng.random_range(0..levels)).collect(), [groups, n], device)),
        Zeros::Float => ZeroPoints::Float(upload(floats(groups * n, -0.05, 0.05, rng))),
    };
    let weight = PackedIntWeight::new(bits, packed, scales, zeros, group_size);
    match case.order {
        Order::Plain => weight,
        Order::ActOrder => {
            let mut rows: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                rows.swap(i, rng.random_range(0..=i));
            }
            let g_idx: Vec<i32> = rows.iter().map(|&r| (r / group_size) as i32).collect();
            weight.with_act_order(&g_idx)
        }
        Order::Uneven => {
            let g_idx: Vec<i32> = (0..k).map(|_| rng.random_range(0..groups as i32)).collect();
            weight.with_act_order(&g_idx)
        }
    }
}

fn activations(rows: usize, k: usize, dtype: DType, device: &Device, rng: &mut StdRng) -> Tensor<2> {
    let values: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::<2>::from_data(TensorData::new(values, [rows, k]), (device, DType::F32)).cast(dtype)
}

fn to_f32(t: Tensor<2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().try_to_vec::<f32>().expect("f32 data")
}

/// Runs the selected kernel and the reference on the same inputs; returns the max
/// difference relative to the reference's largest magnitude.
fn relative_error(case: Case, rows: usize, dtype: DType, device: &Device, seed: u64) -> f32 {
    let mut rng = StdRng::seed_from_u64(seed);
    let weight = random_weight(case, device, &mut rng);
    let x = activations(rows, case.k, dtype, device, &mut rng);
    let selection = kernels::select::int_gemm(&weight, device, dtype, rows);
    let IntGemmKernel::Portable { tile_m } = selection.kernel else {
        panic!("{case:?}: expected the portable kernel, got {selection:?}");
    };
    let kernel = to_f32(kernels::int_weight_gemm(&weight, x.clone(), tile_m));
    let reference = to_f32(weight.forward_reference(x));
    assert_eq!(kernel.len(), rows * case.n);
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = kernel.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff.is_finite(), "{case:?} rows={rows}: non-finite output");
    diff / scale
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        // The reference rounds the dequantized weight to the activation dtype first.
        _ => 2e-2,
    }
}

const PLAIN_G128: Case = Case { bits: 4, k: 256, n: 192, group_size: 128, zeros: Zeros::Midpoint, order: Order::Plain };

/// Every row count on both runtimes (tile_m 1, 2/4 and 8, with ragged last tiles).
fn row_counts_on(device: Device) {
    for (i, rows) in [1usize, 3, 16, 64, 257].into_iter().enumerate() {
        let err = relative_error(PLAIN_G128, rows, DType::F32, &device, i as u64);
        assert!(err < tolerance(DType::F32), "rows={rows}: relative error {err}");
    }
}

/// Layout variants at a few rows each: bits, group sizes, zero points, act-order.
fn layouts_on(device: Device) {
    let cases = [
        Case { group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 },
        Case { group_size: 64, zeros: Zeros::Float, ..PLAIN_G128 },
        Case { group_size: 0, ..PLAIN_G128 },
        Case { order: Order::ActOrder, zeros: Zeros::Integer, ..PLAIN_G128 },
        Case { order: Order::Uneven, group_size: 64, ..PLAIN_G128 },
        Case { bits: 8, ..PLAIN_G128 },
        Case { bits: 8, group_size: 0, zeros: Zeros::Integer, ..PLAIN_G128 },
        Case { bits: 8, order: Order::ActOrder, ..PLAIN_G128 },
        // The tiny fixtures' shapes: hidden 64, MLP 128 (N not a multiple of the cube's 256).
        Case { k: 64, n: 128, group_size: 32, ..PLAIN_G128 },
        Case { k: 128, n: 64, group_size: 64, zeros: Zeros::Integer, ..PLAIN_G128 },
        Case { k: 128, n: 72, group_size: 0, ..PLAIN_G128 },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        for rows in [1usize, 5] {
            let err = relative_error(case, rows, DType::F32, &device, 100 + i as u64);
            assert!(err < tolerance(DType::F32), "{case:?} rows={rows}: relative error {err}");
        }
    }
}

fn half_dtypes_on(device: Device) {
    for dtype in [DType::F16, DType::BF16] {
        if !device.supports_dtype(dtype) {
            eprintln!("{device:?} has no {dtype:?}; skipped");
            continue;
        }
        for (case, rows) in [(PLAIN_G128, 1usize), (Case { zeros: Zeros::Integer, group_size: 32, ..PLAIN_G128 }, 16)] {
            let err = relative_error(case, rows, dtype, &device, 7);
            assert!(err < tolerance(dtype), "{dtype:?} {case:?} rows={rows}: relative error {err}");
        }
    }
}

#[test]
fn int_gemm_rows_on_wgpu() {
    row_counts_on(Device::wgpu(Default::default()));
}

#[test]
fn int_gemm_rows_on_cubecl_cpu() {
    row_counts_on(Device::cpu());
}

#[test]
fn int_gemm_layouts_on_wgpu() {
    layouts_on(Device::wgpu(Default::default()));
}

#[test]
fn int_gemm_layouts_on_cubecl_cpu() {
    layouts_on(Device::cpu());
}

#[test]
fn int_gemm_half_precision_on_wgpu() {
    half_dtypes_on(Device::wgpu(Default::default()));
}

#[test]
fn int_gemm_half_precision_on_cubecl_cpu() {
    half_dtypes_on(Device::cpu());
}

#[test]
fn selector_explains_its_choice() {
    let mut rng = StdRng::seed_from_u64(1);
    let flex = Device::flex();
    let weight = random_weight(PLAIN_G128, &flex, &mut rng);
    let on_flex = kernels::select::int_gemm(&weight, &flex, DType::F32, 1);
    assert_eq!(on_flex.kernel, IntGemmKernel::Reference);
    assert!(on_flex.reason.contains("Flex"), "{}", on_flex.reason);

    let wgpu = Device::wgpu(Default::default());
    let weight = random_weight(PLAIN_G128, &wgpu, &mut rng);
    assert_eq!(kernels::select::int_gemm(&weight, &wgpu, DType::F32, 64).kernel, IntGemmKernel::Portable { tile_m: 8 });
    let forced = kernels::with_policy(KernelPolicy::Reference, || kernels::select::int_gemm(&weight, &wgpu, DType::F32, 64));
    assert_eq!(forced.kernel, IntGemmKernel::Reference);
    assert!(forced.reason.contains("EMBER_KERNELS"), "{}", forced.reason);
}

/// Every kernel variant compiles to CUDA C++ through CubeCL's compiler, with no GPU.
#[test]
fn every_int_gemm_variant_generates_cuda_cpp() {
    let variants = ember_quant::kernels::codegen::int_weight_gemm_variants();
    assert_eq!(variants.len(), 2 * 2 * 3 * 4 * 3 * 2);
    let failures: Vec<_> = variants.iter().filter_map(|v| v.as_ref().err()).collect();
    assert!(failures.is_empty(), "variants that did not compile: {failures:#?}");
    for kernel in variants.iter().flatten() {
        assert!(kernel.source.contains("__global__"), "{}: no kernel entry point", kernel.name);
        let half_type = match &kernel.name {
            n if n.ends_with("_bf16") => Some("__nv_bfloat16"),
            n if n.ends_with("_f16") => Some("__half"),
            _ => None,
        };
        if let Some(ty) = half_type {
            assert!(kernel.source.contains(ty), "{}: activations are not {ty}", kernel.name);
        }
    }
}

/// The grouped (mixture-of-experts) launch against each expert's reference matmul, with
/// experts that get no rows, one row, and several row tiles.
fn grouped_on(device: Device) {
    use ember_quant::repr::ExpertStack;
    for (case, rows_per_expert, tile_m) in [
        (Case { k: 128, n: 64, group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 }, vec![1usize, 0, 2, 1], 1u32),
        (Case { k: 128, n: 64, group_size: 64, ..PLAIN_G128 }, vec![9, 3, 0, 20], 8),
        (Case { bits: 8, k: 128, n: 96, group_size: 0, zeros: Zeros::Float, ..PLAIN_G128 }, vec![2, 2, 2, 2], 2),
    ] {
        let mut rng = StdRng::seed_from_u64(11);
        let experts: Vec<[PackedIntWeight; 2]> =
            (0..rows_per_expert.len()).map(|_| [random_weight(case, &device, &mut rng), random_weight(case, &device, &mut rng)]).collect();
        let parts: Vec<Vec<&PackedIntWeight>> = experts.iter().map(|[a, b]| vec![a, b]).collect();
        let stack = ExpertStack::stack(&parts).expect("one layout");
        let total: usize = rows_per_expert.iter().sum();
        let x = activations(total, case.k, DType::F32, &device, &mut rng);
        let grouped = to_f32(kernels::grouped_int_weight_gemm(&stack, x.clone(), &rows_per_expert, tile_m));
        let mut start = 0;
        let mut expected = Vec::new();
        for (e, &rows) in rows_per_expert.iter().enumerate() {
            if rows > 0 {
                let xe = x.clone().narrow(0, start, rows);
                let both = Tensor::cat(vec![experts[e][0].forward_reference(xe.clone()), experts[e][1].forward_reference(xe)], 1);
                expected.extend(to_f32(both));
                // The expert's views of the stack are the weights it was built from.
                assert_eq!(to_f32(stack.part(e, 1).dequantize()), to_f32(experts[e][1].dequantize()));
            }
            start += rows;
        }
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = grouped.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert_eq!(grouped.len(), expected.len());
        assert!(diff / scale < 1e-5, "{case:?} {rows_per_expert:?}: relative error {}", diff / scale);
    }
}

#[test]
fn grouped_int_gemm_on_wgpu() {
    grouped_on(Device::wgpu(Default::default()));
}

#[test]
fn grouped_int_gemm_on_cubecl_cpu() {
    grouped_on(Device::cpu());
}
