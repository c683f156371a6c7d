//! The portable W4A16/W8A16 kernel against the Burn-ops reference on the CubeCL runtimes
//! CI has (wgpu on lavapipe, the CPU runtime): layouts, zero points, act-order, row counts
//! and dtypes, plus the selector's choices. The host kernels on Flex are in
//! `int_host_kernels`.

use burn::tensor::{DType, Device, Tensor, TensorData};
use ember_quant::kernels::{self, IntGemmKernel, IntGemmTiling, KernelPolicy, MmaTiling, Staging, WEIGHT_STAGES};
use ember_quant::packing::int_tensor;
use ember_quant::repr::{PackedIntWeight, ZeroPoints};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Zeros {
    Midpoint,
    Integer,
    Float,
}

// `ActOrder` is GPTQ's own name for the permuted order.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Order {
    Plain,
    /// GPTQ desc_act: a permutation of rows, every group full.
    ActOrder,
    /// An act-order map whose groups have uneven sizes (stays indexed after sorting).
    Uneven,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Case {
    pub(crate) bits: u32,
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// 0 = per-channel (one group spanning K).
    pub(crate) group_size: usize,
    pub(crate) zeros: Zeros,
    pub(crate) order: Order,
}

pub(crate) fn random_weight(case: Case, device: &Device, rng: &mut StdRng) -> PackedIntWeight {
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

pub(crate) fn activations(rows: usize, k: usize, dtype: DType, device: &Device, rng: &mut StdRng) -> Tensor<2> {
    let values: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::<2>::from_data(TensorData::new(values, [rows, k]), (device, DType::F32)).cast(dtype)
}

pub(crate) fn to_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().try_to_vec::<f32>().expect("f32 data")
}

/// Runs the selected kernel and the reference on the same inputs; returns the max
/// difference relative to the reference's largest magnitude.
fn relative_error(case: Case, rows: usize, dtype: DType, device: &Device, seed: u64) -> f32 {
    relative_error_of(None, case, rows, dtype, device, seed)
}

/// As [`relative_error`], with `tiling` instead of the selector's choice when given.
fn relative_error_of(tiling: Option<IntGemmTiling>, case: Case, rows: usize, dtype: DType, device: &Device, seed: u64) -> f32 {
    let mut rng = StdRng::seed_from_u64(seed);
    let weight = random_weight(case, device, &mut rng);
    let x = activations(rows, case.k, dtype, device, &mut rng);
    let selection = kernels::select::int_gemm(&weight, device, dtype, rows);
    let IntGemmKernel::Cube(selected) = selection.kernel else {
        panic!("{case:?}: expected a CubeCL kernel, got {selection:?}");
    };
    let kernel = to_f32(kernels::int_weight_gemm(&weight, x.clone(), tiling.unwrap_or(selected)));
    error_against(&kernel, &to_f32(weight.forward_reference(x)), case, rows)
}

/// The largest difference of `kernel` from `reference`, relative to the reference's largest
/// magnitude (`rows × case.n` values each).
pub(crate) fn error_against(kernel: &[f32], reference: &[f32], case: Case, rows: usize) -> f32 {
    assert_eq!(kernel.len(), rows * case.n);
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = kernel.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff.is_finite(), "{case:?} rows={rows}: non-finite output");
    diff / scale
}

pub(crate) fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        // The reference rounds the dequantized weight to the activation dtype first.
        _ => 2e-2,
    }
}

pub(crate) const PLAIN_G128: Case = Case { bits: 4, k: 256, n: 192, group_size: 128, zeros: Zeros::Midpoint, order: Order::Plain };

/// Every row count on both runtimes (tile_m 1, 2/4 and 8, the shared-memory kernel where
/// the runtime takes it, with ragged last tiles).
fn row_counts_on(device: Device) {
    for (i, rows) in [1usize, 3, 16, 64, 257].into_iter().enumerate() {
        let err = relative_error(PLAIN_G128, rows, DType::F32, &device, i as u64);
        assert!(err < tolerance(DType::F32), "rows={rows}: relative error {err}");
    }
}

/// The shared-memory tile kernel at every row count (partial tiles above and below 64)
/// and on every layout, chosen or not.
fn shared_memory_tiles_on(device: Device) {
    for (i, rows) in [1usize, 3, 16, 64, 257].into_iter().enumerate() {
        let err = relative_error_of(Some(IntGemmTiling::SharedMemory), PLAIN_G128, rows, DType::F32, &device, i as u64);
        assert!(err < tolerance(DType::F32), "rows={rows}: relative error {err}");
    }
    for (i, case) in LAYOUT_CASES.into_iter().enumerate() {
        let err = relative_error_of(Some(IntGemmTiling::SharedMemory), case, 70, DType::F32, &device, 200 + i as u64);
        assert!(err < tolerance(DType::F32), "{case:?}: relative error {err}");
    }
    for dtype in [DType::F16, DType::BF16].into_iter().filter(|&d| device.supports_dtype(d)) {
        let case = Case { zeros: Zeros::Integer, group_size: 32, ..PLAIN_G128 };
        let err = relative_error_of(Some(IntGemmTiling::SharedMemory), case, 40, dtype, &device, 9);
        assert!(err < tolerance(dtype), "{dtype:?}: relative error {err}");
    }
}

/// Layout variants: bits, group sizes, zero points, act-order.
pub(crate) const LAYOUT_CASES: [Case; 11] = [
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

/// Every layout variant at a few rows each.
fn layouts_on(device: Device) {
    for (i, case) in LAYOUT_CASES.into_iter().enumerate() {
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
fn int_gemm_shared_memory_tiles_on_wgpu() {
    shared_memory_tiles_on(Device::wgpu(Default::default()));
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
    assert_eq!(on_flex.kernel, IntGemmKernel::Host);
    assert!(on_flex.reason.contains("Flex") && on_flex.reason.contains("fused kernel"), "{}", on_flex.reason);
    // Uneven act-order groups never run on AMX's tile unit; even ones do where it exists.
    let uneven = random_weight(Case { order: Order::Uneven, group_size: 64, ..PLAIN_G128 }, &flex, &mut rng);
    let tiled = kernels::select::int_gemm(&uneven, &flex, DType::F32, kernels::host::INT_TILED_ROWS);
    assert!(tiled.reason.contains("tiled kernel"), "{}", tiled.reason);
    let many_rows = kernels::select::int_gemm(&weight, &flex, DType::F32, kernels::host::INT_TILED_ROWS);
    match kernels::host::amx_rows(kernels::host::TileProducts::PackedInt) {
        Some(rows) => assert!(many_rows.reason.contains(&format!("on AMX's tile unit from {rows} rows")), "{}", many_rows.reason),
        None => assert!(many_rows.reason.contains("tiled kernel"), "{}", many_rows.reason),
    }
    let reference = kernels::with_policy(KernelPolicy::Reference, || kernels::select::int_gemm(&weight, &flex, DType::F32, 1));
    assert_eq!(reference.kernel, IntGemmKernel::Reference);
    let ints = kernels::select::int_gemm(&weight, &flex, DType::I32, 1);
    assert_eq!(ints.kernel, IntGemmKernel::Reference);
    assert!(ints.reason.contains("host kernel takes f32"), "{}", ints.reason);

    let wgpu = Device::wgpu(Default::default());
    let weight = random_weight(PLAIN_G128, &wgpu, &mut rng);
    assert_eq!(kernels::select::int_gemm(&weight, &wgpu, DType::F32, 16).kernel, IntGemmKernel::Cube(IntGemmTiling::Registers { tile_m: 8 }));
    // wgpu here is Mesa's lavapipe and cpu the CubeCL CPU runtime: neither is a GPU card,
    // so many rows keep the register kernel and the log says why.
    let cpu = Device::cpu();
    for (device, weight) in [(&wgpu, weight.clone()), (&cpu, random_weight(PLAIN_G128, &cpu, &mut rng))] {
        let many_rows = kernels::select::int_gemm(&weight, device, DType::F32, 64);
        assert_eq!(many_rows.kernel, IntGemmKernel::Cube(IntGemmTiling::Registers { tile_m: 8 }));
        assert!(many_rows.reason.contains("not a GPU card"), "{}", many_rows.reason);
    }
    let ragged_k = random_weight(Case { k: 72, group_size: 0, ..PLAIN_G128 }, &wgpu, &mut rng);
    let ragged = kernels::select::int_gemm(&ragged_k, &wgpu, DType::F32, 64);
    assert_eq!(ragged.kernel, IntGemmKernel::Cube(IntGemmTiling::Registers { tile_m: 8 }));
    assert!(ragged.reason.contains("K = 72 is not a multiple of 32"), "{}", ragged.reason);
    let forced = kernels::with_policy(KernelPolicy::Reference, || kernels::select::int_gemm(&weight, &wgpu, DType::F32, 64));
    assert_eq!(forced.kernel, IntGemmKernel::Reference);
    assert!(forced.reason.contains("EMBER_KERNELS"), "{}", forced.reason);
    // Asking for tensor cores where there are none keeps the portable kernel.
    let half = kernels::with_policy(KernelPolicy::TensorCores, || kernels::select::int_gemm(&weight, &wgpu, DType::F16, 4));
    assert_eq!(half.kernel, IntGemmKernel::Cube(IntGemmTiling::Registers { tile_m: 4 }));
    assert!(half.reason.contains("no tensor cores"), "{}", half.reason);

    // The tensor-core tiling: at decode one column block per cube, its K sliced by warps,
    // the weights staged; from INT_MMA_STAGED_ROWS, four column blocks sharing staged
    // activations.
    let decode = kernels::int_mma_tiling(&wgpu, 16, 4096, 14336);
    assert_eq!((decode.m_tiles, decode.warps, decode.k_slices, decode.staging), (1, 1, kernels::INT_MMA_K_SLICES, Staging::Weights { stages: WEIGHT_STAGES }));
    let rows = kernels::select::INT_MMA_STAGED_ROWS;
    let prefill = kernels::int_mma_tiling(&wgpu, rows, 4096, 14336);
    assert_eq!((prefill.m_tiles, prefill.warps, prefill.k_slices, prefill.staging), (4, 4, 1, Staging::Operands { stages: 3 }));
    assert_eq!(kernels::int_mma_tiling(&wgpu, rows - 1, 4096, 14336).staging, decode.staging);
}

/// Every kernel variant compiles to CUDA C++ through CubeCL's compiler, with no GPU.
#[test]
fn every_kernel_variant_generates_cuda_cpp() {
    let mut variants = ember_quant::kernels::codegen::int_weight_gemm_variants();
    assert_eq!(variants.len(), 2 * 2 * 3 * 5 * 3 * 2);
    let attention = ember_quant::kernels::codegen::paged_decode_attention_variants();
    assert_eq!(attention.len(), 3 * 3);
    variants.extend(attention);
    let quantize = ember_quant::kernels::codegen::quantize_activations_variants();
    assert_eq!(quantize.len(), 2 * 2 * 3);
    variants.extend(quantize);
    let w8a8 = ember_quant::kernels::codegen::w8a8_gemm_variants();
    assert_eq!(w8a8.len(), 4 * 3);
    variants.extend(w8a8);
    let fp8 = ember_quant::kernels::codegen::fp8_gemm_variants();
    assert_eq!(fp8.len(), 2 * 4 * 3);
    variants.extend(fp8);
    let int_mma = ember_quant::kernels::codegen::int_mma_gemm_variants();
    // (Three 4-bit and two 8-bit layouts with three zero modes, two e4m3 layouts) × (six
    // tilings (one unstaged, three with the weights staged and K sliced, one with the
    // weights staged, one with both operands) × dense or experts, with partial products,
    // and two of them dense writing the output directly) × 2 dtypes.
    assert_eq!(int_mma.len(), ((3 + 2) * 3 + 2) * (6 * 2 + 2) * 2);
    variants.extend(int_mma);
    let byte_mma = ember_quant::kernels::codegen::byte_mma_gemm_variants();
    // Ten ways to load (one unstaged and three weights-staged tilings, from codes or
    // quantizing; two with both operands staged) × (int8; e4m3 with and without chunked
    // scales) × 3 dtypes × 2 outputs.
    assert_eq!(byte_mma.len(), 10 * 3 * 3 * 2);
    variants.extend(byte_mma);
    let failures: Vec<_> = variants.iter().filter_map(|v| v.as_ref().err()).collect();
    assert!(failures.is_empty(), "variants that did not compile: {failures:#?}");
    // `scripts/nvrtc_check.sh` compiles the dumped sources with NVRTC.
    if let Some(dir) = std::env::var_os("EMBER_CUDA_DUMP_DIR") {
        std::fs::create_dir_all(&dir).expect("dump directory");
        for kernel in variants.iter().flatten() {
            std::fs::write(std::path::Path::new(&dir).join(format!("{}.cu", kernel.name)), &kernel.source).expect("write source");
        }
    }
    for kernel in variants.iter().flatten().filter(|kernel| kernel.name.starts_with("int_mma")) {
        assert!(kernel.source.contains("mma.sync.aligned.m16n8k16"), "{}: no tensor-core instruction", kernel.name);
        let staged = kernel.name.contains("_all_staged");
        assert_eq!(kernel.source.contains("ldmatrix.sync.aligned.m8n8.x4"), staged, "{}: A registers from the stage only when the activations are staged", kernel.name);
    }
    for kernel in variants.iter().flatten().filter(|kernel| kernel.name.starts_with("byte_mma")) {
        let operands = if kernel.name.contains("e4m3") { "f32.e4m3.e4m3.f32" } else { "s32.s8.s8.s32" };
        assert!(kernel.source.contains(&format!("mma.sync.aligned.m16n8k32.row.col.{operands}")), "{}: no {operands} tensor-core instruction", kernel.name);
    }
    for kernel in variants.iter().flatten().filter(|kernel| kernel.name.contains("_mma_")) {
        let staged = !kernel.name.contains("_unstaged");
        assert_eq!(kernel.source.contains("cp.async.cg.shared"), staged, "{}: asynchronous copies only in the staged tilings", kernel.name);
        assert_eq!(kernel.source.contains("cp.async.wait_group"), staged, "{}: copies waited for only in the staged tilings", kernel.name);
    }
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
/// experts that get no rows, one row, and several row tiles. `shared_memory` adds the
/// shared-memory kernel (not on the CPU runtime, where a cube's barriers take minutes).
/// `experts` experts of two random `case` weights each, and their stack.
pub(crate) fn random_stack(case: Case, experts: usize, device: &Device, rng: &mut StdRng) -> (Vec<[PackedIntWeight; 2]>, ember_quant::repr::ExpertStack) {
    let weights: Vec<[PackedIntWeight; 2]> = (0..experts).map(|_| [random_weight(case, device, rng), random_weight(case, device, rng)]).collect();
    let parts: Vec<Vec<&PackedIntWeight>> = weights.iter().map(|[a, b]| vec![a, b]).collect();
    let stack = ember_quant::repr::ExpertStack::stack(&parts).expect("one layout");
    (weights, stack)
}

fn grouped_on(device: Device, shared_memory: bool) {
    let registers = |tile_m| IntGemmTiling::Registers { tile_m };
    for (case, rows_per_expert, tiling) in [
        (Case { k: 128, n: 64, group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 }, vec![1usize, 0, 2, 1], registers(1)),
        (Case { k: 128, n: 64, group_size: 64, ..PLAIN_G128 }, vec![9, 3, 0, 20], registers(8)),
        (Case { bits: 8, k: 128, n: 96, group_size: 0, zeros: Zeros::Float, ..PLAIN_G128 }, vec![2, 2, 2, 2], registers(2)),
        (Case { k: 128, n: 96, group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 }, vec![70, 0, 5, 130], IntGemmTiling::SharedMemory),
    ] {
        if tiling == IntGemmTiling::SharedMemory && !shared_memory {
            continue;
        }
        let mut rng = StdRng::seed_from_u64(11);
        let (experts, stack) = random_stack(case, rows_per_expert.len(), &device, &mut rng);
        let total: usize = rows_per_expert.iter().sum();
        let x = activations(total, case.k, DType::F32, &device, &mut rng);
        let grouped = to_f32(kernels::grouped_int_weight_gemm(&stack, x.clone(), &rows_per_expert, tiling));
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
    grouped_on(Device::wgpu(Default::default()), true);
}

#[test]
fn grouped_int_gemm_on_cubecl_cpu() {
    grouped_on(Device::cpu(), false);
}

/// The fragment repack loses nothing: unpacking it gives back the K-packed values.
#[test]
fn int_fragment_repack_round_trips() {
    use ember_quant::packing::unpack;
    use ember_quant::repr::IntFragments;
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(21);
    let cases = [
        PLAIN_G128,
        Case { k: 64, n: 16, group_size: 32, ..PLAIN_G128 },
        Case { order: Order::ActOrder, ..PLAIN_G128 },
        Case { bits: 8, ..PLAIN_G128 },
        Case { bits: 8, k: 64, n: 32, group_size: 0, ..PLAIN_G128 },
    ];
    for case in cases {
        let weight = random_weight(case, &device, &mut rng);
        let fragments = IntFragments::repack(&weight).expect("tiled shape");
        let expected = unpack(weight.packed.clone(), case.bits, 0).into_data().try_to_vec::<i32>().expect("i32");
        let got = fragments.values().into_data().try_to_vec::<i32>().expect("i32");
        assert_eq!(got, expected, "{case:?}");
    }
    let ragged = random_weight(Case { k: 128, n: 72, group_size: 0, ..PLAIN_G128 }, &device, &mut rng);
    assert!(IntFragments::repack(&ragged).unwrap_err().contains("does not tile"));
    let uneven = random_weight(Case { order: Order::Uneven, group_size: 64, ..PLAIN_G128 }, &device, &mut rng);
    assert!(IntFragments::repack(&uneven).unwrap_err().contains("uneven"));
}

/// Zero-point modes, group sizes, act-order, row tiles and splits, 4- and 8-bit.
const INT_MMA_CASES: [(Case, usize, u32, u32); 11] = [
    (Case { bits: 8, ..PLAIN_G128 }, 5, 1, 2),
    (Case { bits: 8, group_size: 0, zeros: Zeros::Integer, ..PLAIN_G128 }, 17, 2, 1),
    (Case { bits: 8, order: Order::ActOrder, zeros: Zeros::Float, ..PLAIN_G128 }, 2, 1, 3),
    (PLAIN_G128, 1usize, 1u32, 1u32),
    (PLAIN_G128, 17, 2, 3),
    (Case { group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 }, 3, 1, 2),
    (Case { group_size: 64, zeros: Zeros::Float, ..PLAIN_G128 }, 16, 1, 1),
    (Case { group_size: 0, ..PLAIN_G128 }, 5, 1, 4),
    (Case { order: Order::ActOrder, zeros: Zeros::Integer, ..PLAIN_G128 }, 2, 1, 2),
    (Case { k: 64, n: 48, group_size: 16, zeros: Zeros::Integer, ..PLAIN_G128 }, 33, 2, 1),
    (Case { k: 128, n: 64, group_size: 64, ..PLAIN_G128 }, 4, 1, 2),
];

/// The tensor-core kernel's fragments, bit-level dequantization and split-K, through its
/// shared-memory emulation of `mma.m16n8k16` (neither runtime has tensor cores), against
/// the reference, for `(case, rows, row tiles per warp, K splits)` with `warps` column
/// blocks per cube, `k_slices` warps slicing each one's K, and `staging`.
fn int_mma_emulated_on(device: Device, cases: &[(Case, usize, u32, u32)], (warps, k_slices): (u32, u32), staging: Staging) {
    use ember_quant::repr::IntFragments;
    let dtypes: Vec<DType> = [DType::F16, DType::BF16].into_iter().filter(|&d| device.supports_dtype(d)).collect();
    assert!(!dtypes.is_empty(), "{device:?} supports neither f16 nor bf16");
    for dtype in dtypes {
        for (i, &(case, rows, m_tiles, splits)) in cases.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(300 + i as u64);
            let weight = random_weight(case, &device, &mut rng);
            let x = activations(rows, case.k, dtype, &device, &mut rng);
            let fragments = IntFragments::repack(&weight).expect("tiled shape");
            let kernel = kernels::int_mma_gemm(&fragments, weight.ordered_input(x.clone()), MmaTiling { m_tiles, warps, k_slices, splits, staging, tensor_cores: false });
            assert_eq!(kernel.dtype(), dtype);
            let err = max_relative_error(&to_f32(kernel), &to_f32(weight.forward_reference(x)));
            assert!(err < tolerance(dtype), "{dtype:?} {case:?} rows={rows} m_tiles={m_tiles} k_slices={k_slices} splits={splits} {staging:?}: relative error {err}");
        }
    }
}

/// Every case with the weights staged as at decode and two warps slicing each column
/// block's K (K = 256 is four blocks, so with splits there are fewer blocks than slots,
/// and slices with nothing left to do); the decode tiling itself (one column block, four
/// slices) on 4- and 8-bit cases and on six K blocks, whose second step leaves two slices
/// idle; two stages, so slots are reused, and two column blocks per cube; and 4- and
/// 8-bit cases unstaged.
#[test]
fn int_mma_emulated_on_wgpu() {
    let device = Device::wgpu(Default::default());
    let decode = Staging::Weights { stages: WEIGHT_STAGES };
    int_mma_emulated_on(device.clone(), &INT_MMA_CASES, (1, 2), decode);
    let mut sliced: Vec<_> = [0, 3, 4, 5, 6].map(|i| INT_MMA_CASES[i]).into();
    sliced.push((Case { k: 384, n: 64, ..PLAIN_G128 }, 3, 1, 1));
    int_mma_emulated_on(device.clone(), &sliced, (1, kernels::INT_MMA_K_SLICES), decode);
    int_mma_emulated_on(device.clone(), &INT_MMA_CASES[..2], (2, 1), Staging::Weights { stages: 2 });
    int_mma_emulated_on(device, &INT_MMA_CASES[2..5], (2, 1), Staging::Direct);
}

/// Both operands staged through shared memory, two and three K blocks deep, with A
/// registers read where `ldmatrix` would be pointed: one and two row tiles, rows past one
/// cube, act-order, 4- and 8-bit (staging changes only how operands arrive, so not every
/// case).
#[test]
fn int_mma_staged_emulated_on_wgpu() {
    let device = Device::wgpu(Default::default());
    let cases: Vec<_> = [0, 1, 4, 8, 9].map(|i| INT_MMA_CASES[i]).into();
    int_mma_emulated_on(device.clone(), &cases, (2, 1), Staging::Operands { stages: 3 });
    int_mma_emulated_on(device.clone(), &INT_MMA_CASES[3..5], (2, 1), Staging::Operands { stages: 2 });
    grouped_int_mma_on(device, false, (2, 1), Staging::Operands { stages: 3 });
}

/// One small case per bit width and dtype: on the CPU runtime every unit of a cube is an
/// OS thread and the emulation's barriers dominate. This is where the bit-level f16 / bf16
/// dequantization runs (wgpu converts instead), and 8-bit values convert in bf16.
#[test]
fn int_mma_emulated_on_cubecl_cpu() {
    let case = Case { k: 64, n: 16, group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 };
    int_mma_emulated_on(Device::cpu(), &[(case, 3, 1, 1), (Case { bits: 8, zeros: Zeros::Midpoint, ..case }, 2, 1, 1)], (1, 1), Staging::Weights { stages: 2 });
    int_mma_emulated_on(Device::cpu(), &[(Case { k: 128, ..case }, 17, 2, 1)], (1, 1), Staging::Operands { stages: 2 });
}

/// The tensor-core kernel itself (the `mma` instruction, four warps per cube) against the
/// reference on a CUDA GPU: every emulated case, then Mixtral-8x7B shapes at decode and
/// prefill row counts with the launch shape the device gets.
#[test]
#[ignore = "needs a CUDA GPU: cargo test --release -- --ignored int_mma_tensor_cores_on_cuda"]
fn int_mma_tensor_cores_on_cuda() {
    use ember_quant::repr::IntFragments;
    let device = Device::cuda(0);
    for dtype in [DType::F16, DType::BF16] {
        for (i, &(case, rows, m_tiles, splits)) in INT_MMA_CASES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(400 + i as u64);
            let weight = random_weight(case, &device, &mut rng);
            let x = activations(rows, case.k, dtype, &device, &mut rng);
            let fragments = IntFragments::repack(&weight).expect("tiled shape");
            for (warps, k_slices, staging) in CUDA_TILINGS {
                let tiling = MmaTiling { m_tiles, warps, k_slices, splits, staging, tensor_cores: true };
                let kernel = to_f32(kernels::int_mma_gemm(&fragments, weight.ordered_input(x.clone()), tiling));
                let err = max_relative_error(&kernel, &to_f32(weight.forward_reference(x.clone())));
                assert!(err < tolerance(dtype), "{dtype:?} {case:?} rows={rows} {tiling:?}: relative error {err}");
            }
        }
        let mixtral = Case { k: 4096, n: 14336, group_size: 128, zeros: Zeros::Midpoint, order: Order::Plain, bits: 4 };
        for (case, rows) in [(mixtral, 1usize), (mixtral, 16), (mixtral, 128), (Case { k: 14336, n: 4096, zeros: Zeros::Integer, ..mixtral }, 8)] {
            let mut rng = StdRng::seed_from_u64(rows as u64);
            let weight = random_weight(case, &device, &mut rng);
            let x = activations(rows, case.k, dtype, &device, &mut rng);
            let fragments = IntFragments::repack(&weight).expect("tiled shape");
            let kernel = to_f32(kernels::int_mma_gemm(&fragments, x.clone(), kernels::int_mma_tiling(&device, rows, case.k, case.n)));
            let err = max_relative_error(&kernel, &to_f32(weight.forward_reference(x)));
            assert!(err < tolerance(dtype), "{dtype:?} [{}x{}] rows={rows}: relative error {err}", case.k, case.n);
        }
    }
    for (warps, k_slices, staging) in CUDA_TILINGS {
        grouped_int_mma_on(device.clone(), true, (warps, k_slices), staging);
    }
}

/// Every way the tensor-core kernel can load its operands, at two depths each, and K
/// sliced by two and four warps: `(column blocks per cube, K slices, staging)`.
const CUDA_TILINGS: [(u32, u32, Staging); 7] = [
    (4, 1, Staging::Direct),
    (4, 1, Staging::Weights { stages: 2 }),
    (4, 1, Staging::Weights { stages: WEIGHT_STAGES }),
    (1, 4, Staging::Weights { stages: WEIGHT_STAGES }),
    (2, 2, Staging::Weights { stages: 2 }),
    (4, 1, Staging::Operands { stages: 2 }),
    (4, 1, Staging::Operands { stages: 3 }),
];

/// Largest difference relative to the reference's largest magnitude.
fn max_relative_error(kernel: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(kernel.len(), reference.len());
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = kernel.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff.is_finite(), "non-finite output");
    diff / scale
}

/// The grouped (mixture-of-experts) form of the tensor-core kernel, emulated, against each
/// expert's reference: experts with no rows, one row, and several row tiles; 4- and 8-bit.
fn grouped_int_mma_on(device: Device, tensor_cores: bool, (warps, k_slices): (u32, u32), staging: Staging) {
    use ember_quant::repr::IntFragments;
    let dtype = DType::F16;
    for (case, rows_per_expert, m_tiles, splits) in [
        (Case { k: 128, n: 64, group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 }, vec![1usize, 0, 2, 1], 1u32, 1u32),
        (Case { k: 128, n: 48, group_size: 0, zeros: Zeros::Float, ..PLAIN_G128 }, vec![17, 3, 0, 40], 2, 2),
        (Case { bits: 8, k: 128, n: 32, group_size: 64, zeros: Zeros::Integer, ..PLAIN_G128 }, vec![0, 5, 18, 1], 1, 2),
    ] {
        let mut rng = StdRng::seed_from_u64(12);
        let (experts, stack) = random_stack(case, rows_per_expert.len(), &device, &mut rng);
        let fragments = IntFragments::repack_stack(&stack).expect("4-bit, tiled shape");
        let total: usize = rows_per_expert.iter().sum();
        let x = activations(total, case.k, dtype, &device, &mut rng);
        let tiling = MmaTiling { m_tiles, warps, k_slices, splits, staging, tensor_cores };
        let grouped = to_f32(kernels::grouped_int_mma_gemm(&fragments, x.clone(), &rows_per_expert, tiling));
        // The MoE layer's entry point repacks into its cache on first use, and its
        // reference arm is the experts' Burn-ops matmuls.
        let cache = kernels::FragmentCache::new();
        let through_cache = to_f32(kernels::grouped_int_forward(&stack, &cache, x.clone(), &rows_per_expert, IntGemmKernel::TensorCores(tiling)));
        assert_eq!(through_cache, grouped, "{case:?}: the layer's path differs from the direct launch");
        assert!(cache.get().is_some_and(Option::is_some), "{case:?}: no fragment copy cached");
        let reference = to_f32(kernels::grouped_int_forward(&stack, &cache, x.clone(), &rows_per_expert, IntGemmKernel::Reference));
        let mut start = 0;
        let mut expected = Vec::new();
        for (e, &rows) in rows_per_expert.iter().enumerate() {
            if rows > 0 {
                let xe = x.clone().narrow(0, start, rows);
                expected.extend(to_f32(Tensor::cat(vec![experts[e][0].forward_reference(xe.clone()), experts[e][1].forward_reference(xe)], 1)));
            }
            start += rows;
        }
        let err = max_relative_error(&grouped, &expected);
        assert!(err < tolerance(dtype), "{case:?} {rows_per_expert:?}: relative error {err}");
        let err = max_relative_error(&reference, &expected);
        assert!(err < tolerance(dtype), "{case:?} {rows_per_expert:?}: stacked reference relative error {err}");
    }
}

#[test]
fn grouped_int_mma_emulated_on_wgpu() {
    grouped_int_mma_on(Device::wgpu(Default::default()), false, (1, kernels::INT_MMA_K_SLICES), Staging::Weights { stages: WEIGHT_STAGES });
}
