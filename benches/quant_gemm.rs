//! The portable quantized GEMM kernels (W4A16; FP8 and int8 W8A8 with their activation
//! quantization) against Burn's dense matmul of the already-dequantized weight (what a
//! float model would run) and against the Burn-ops reference path (dequantize, then
//! matmul, every call), in one run per device. `cargo bench --bench quant_gemm [-- filter]`
//! (filters: `int4`, `int8` (Flex), `int_mma`, `fp8`, `w8a8`, `byte_mma`); `EMBER_BENCH_DEVICES=wgpu,cpu,cuda`
//! picks the devices (default: wgpu and cpu). The tensor-core groups run on CUDA devices
//! only, and time calls queued back to back ([`queued`]) where the portable groups sync
//! after each call. `paged_attention` times a model step's attention on the Flex device:
//! the host kernel against the gathered Burn-ops path; `half_weights` times float weights
//! kept in f16 / bf16 on Flex against the f32 matmul; `between_products` the Flex host
//! kernels for SwiGLU's activation, RMSNorm and rotary embeddings against Burn's ops.

use std::hint::black_box;
use std::time::Instant;

use burn::tensor::{DType, Device, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Bencher, BenchmarkId, Criterion, Throughput};
use ember::quant::kernels::host::HostPath;
use ember::quant::kernels::{self, GemmKernel, IntGemmKernel, IntGemmTiling, MmaTiling, Staging};
use ember::quant::packing::int_tensor;
use ember::quant::repr::{e4m3_table, ActivationQuant, Fp8Weight, IntFragments, PackedIntWeight, W8A8Weight, ZeroPoints};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUP: usize = 128;

fn devices() -> Vec<(String, Device)> {
    let wanted = std::env::var("EMBER_BENCH_DEVICES").unwrap_or_else(|_| "wgpu,cpu".into());
    wanted
        .split(',')
        .filter_map(|name| match ember::device::parse_device(name.trim()) {
            Ok(device) => Some((name.trim().to_string(), device)),
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                None
            }
        })
        .collect()
}

/// A random `bits`-bit weight `[K, N]`, K-packed, symmetric, in groups of [`GROUP`].
fn weight(bits: u32, k: usize, n: usize, device: &Device, rng: &mut StdRng) -> PackedIntWeight {
    let word_rows = k * bits as usize / 32;
    let words: Vec<i32> = (0..word_rows * n).map(|_| rng.random()).collect();
    let scales: Vec<f32> = (0..k / GROUP * n).map(|_| rng.random_range(0.002..0.02)).collect();
    let scales = Tensor::<2>::from_data(TensorData::new(scales, [k / GROUP, n]), (device, DType::F32));
    PackedIntWeight::new(bits, int_tensor(words, [word_rows, n], device), scales, ZeroPoints::Midpoint, GROUP)
}

/// Waits for the whole result (it stays alive across the sync, so a lazy backend cannot
/// skip any of it) so each iteration measures the complete computation.
fn finish(t: Tensor<2>) {
    t.device().sync().expect("device sync");
    black_box(t);
}

/// Calls `op` back to back, as a model's forward pass queues its kernels, and syncs
/// once every [`QUEUE_DEPTH`] calls and at the end, so the time per call is what the
/// device and the launch path take rather than a host round trip per call
/// (`scripts/torch_baselines.py` times PyTorch's the same way). Results stay alive until
/// their sync, so a lazy backend cannot skip any of them.
fn queued(b: &mut Bencher, device: &Device, op: impl Fn() -> Tensor<2>) {
    b.iter_custom(|iters| {
        let mut alive = Vec::with_capacity(QUEUE_DEPTH);
        device.sync().expect("device sync");
        let start = Instant::now();
        for _ in 0..iters {
            alive.push(op());
            if alive.len() == QUEUE_DEPTH {
                device.sync().expect("device sync");
                alive.clear();
            }
        }
        device.sync().expect("device sync");
        let elapsed = start.elapsed();
        black_box(alive);
        elapsed
    })
}

/// Calls queued between syncs in [`queued`].
const QUEUE_DEPTH: usize = 32;

fn int4_gemm(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    for (name, device) in devices() {
        // On Flex also 8-bit weights (W8A16, torchao Int8WeightOnly), which its host
        // kernels take apart from 4-bit ones, and Mixtral's expert shapes, whose long K
        // or N its tile kernel splits differently.
        let shapes = [(4, 1024usize, 1024usize), (4, 4096, 4096)].into_iter().chain(if name == "flex" { vec![(8, 4096, 4096), (4, 4096, 14336), (4, 14336, 4096)] } else { vec![] });
        for (bits, k, n) in shapes {
            let w = weight(bits, k, n, &device, &mut rng);
            let dense = w.dequantize();
            let mut group = c.benchmark_group(format!("int{bits}_g{GROUP}/{name}/{k}x{n}"));
            group.sample_size(10);
            // Flex also takes prefill-sized batches, where its host path changes.
            let rows: &[usize] = if name == "flex" { &[1, 4, 8, 16, 32, 64, 128, 256] } else { &[1, 16, 32, 64] };
            for &m in rows {
                let x = Tensor::<2>::from_data(TensorData::new((0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), [m, k]), (&device, DType::F32));
                let selected = kernels::select::int_gemm(&w, &device, DType::F32, m).kernel;
                group.throughput(Throughput::Bytes((k * n * bits as usize / 8) as u64));
                let tile_m = match selected {
                    IntGemmKernel::Host => {
                        for (id, path) in [("host_fused", HostPath::Fused), ("host_tiled", HostPath::Tiled)] {
                            group.bench_with_input(BenchmarkId::new(id, m), &x, |b, x| b.iter(|| finish(kernels::host::int_weight_gemm_by(&w, x.clone(), path).expect("a weight on Flex"))));
                        }
                        None
                    }
                    IntGemmKernel::Cube(IntGemmTiling::Registers { tile_m }) => Some(tile_m),
                    // f32 activations: the tensor-core kernel (f16 / bf16) is never selected here.
                    IntGemmKernel::Cube(IntGemmTiling::SharedMemory) | IntGemmKernel::TensorCores(_) => Some(kernels::select::MAX_TILE_M),
                    IntGemmKernel::Reference => panic!("{name}: no kernel is selected"),
                };
                if let Some(tile_m) = tile_m {
                    let registers = IntGemmTiling::Registers { tile_m };
                    group.bench_with_input(BenchmarkId::new("register_kernel", m), &x, |b, x| b.iter(|| finish(kernels::int_weight_gemm(&w, x.clone(), registers))));
                }
                // The CPU runtime never takes the shared-memory kernel (its barriers cost a thread per unit).
                if m >= 16 && matches!(selected, IntGemmKernel::Cube(_)) && name != "cpu" {
                    let tiles = IntGemmTiling::SharedMemory;
                    group.bench_with_input(BenchmarkId::new("shared_memory_kernel", m), &x, |b, x| b.iter(|| finish(kernels::int_weight_gemm(&w, x.clone(), tiles))));
                }
                group.bench_with_input(BenchmarkId::new("dense_f32_matmul", m), &x, |b, x| b.iter(|| finish(x.clone().matmul(dense.clone()))));
                group.bench_with_input(BenchmarkId::new("burn_ops_reference", m), &x, |b, x| b.iter(|| finish(w.forward_reference(x.clone()))));
            }
            group.finish();
        }
    }
}

fn activations(m: usize, k: usize, device: &Device, rng: &mut StdRng) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new((0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), [m, k]), (device, DType::F32))
}

/// Rows the 8-bit families are timed at: Flex also at the counts around its host
/// kernels' switch from the fused to the tiled path.
fn byte_rows(device: &str) -> &'static [usize] {
    if device == "flex" { &[1, 4, 8, 16, 32, 64, 128] } else { &[1, 16, 64] }
}

/// Random bytes `[n, k]` as `[n, k/4]` words; `finite` skips e4m3's NaN bytes.
fn byte_words(n: usize, k: usize, finite: bool, device: &Device, rng: &mut StdRng) -> Tensor<2, burn::tensor::Int> {
    let mut byte = || loop {
        let b: u8 = rng.random();
        if !finite || b & 0x7F != 0x7F {
            break b;
        }
    };
    let words: Vec<i32> = (0..n * k / 4).map(|_| i32::from_le_bytes([byte(), byte(), byte(), byte()])).collect();
    int_tensor(words, [n, k / 4], device)
}

/// Per-channel FP8 weights with dynamic per-token e4m3 activations (compressed-tensors
/// FP8_DYNAMIC) or float ones (weight-only), and DeepSeek-style 128×128 blocks with
/// 1×128 activation groups.
fn fp8_gemm(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    for (name, device) in devices() {
        for (k, n) in [(1024usize, 1024usize), (4096, 4096)] {
            for (scheme, shape, block, acts) in [
                ("channel_per_token", [n, 1], None, ActivationQuant::DynamicPerToken),
                ("channel_weight_only", [n, 1], None, ActivationQuant::None),
                ("block128", [n / 128, k / 128], Some([128, 128]), ActivationQuant::DynamicPerGroup(128)),
            ] {
                let w = fp8_weight(k, n, shape, block, acts, &device, &mut rng);
                let dense = w.dequantize().transpose();
                let mut group = c.benchmark_group(format!("fp8_{scheme}/{name}/{k}x{n}"));
                group.sample_size(10);
                for &m in byte_rows(&name) {
                    let x = activations(m, k, &device, &mut rng);
                    group.throughput(Throughput::Bytes((k * n) as u64));
                    match kernels::select::fp8_gemm(&w, &device, DType::F32, m).kernel {
                        GemmKernel::Portable { tile_m } => {
                            group.bench_with_input(BenchmarkId::new("portable_kernel", m), &x, |b, x| b.iter(|| finish(kernels::fp8_gemm(&w, x.clone(), tile_m))));
                        }
                        GemmKernel::Host => {
                            for (id, path) in [("host_fused", HostPath::Fused), ("host_tiled", HostPath::Tiled)] {
                                group.bench_with_input(BenchmarkId::new(id, m), &x, |b, x| b.iter(|| finish(kernels::host::fp8_gemm_by(&w, x.clone(), path).expect("a weight on Flex"))));
                            }
                        }
                        other => panic!("{name}: {other:?} is selected, not a portable or host kernel"),
                    };
                    group.bench_with_input(BenchmarkId::new("dense_f32_matmul", m), &x, |b, x| b.iter(|| finish(x.clone().matmul(dense.clone()))));
                    group.bench_with_input(BenchmarkId::new("burn_ops_reference", m), &x, |b, x| b.iter(|| finish(w.forward_reference(x.clone()))));
                }
                group.finish();
            }
        }
    }
}

/// A random e4m3 weight `[n, k]` with scales of `scale_shape` (blocks of `block`).
fn fp8_weight(k: usize, n: usize, scale_shape: [usize; 2], block: Option<[usize; 2]>, activations: ActivationQuant, device: &Device, rng: &mut StdRng) -> Fp8Weight {
    let scales: Vec<f32> = (0..scale_shape[0] * scale_shape[1]).map(|_| rng.random_range(1e-4..1e-3)).collect();
    Fp8Weight {
        in_features: k,
        out_features: n,
        codes: byte_words(n, k, true, device, rng),
        scales: Tensor::from_data(TensorData::new(scales, scale_shape), (device, DType::F32)),
        block,
        activations,
        table: e4m3_table(device),
    }
}

/// int8 weights with per-channel scales and dynamic per-token int8 activations
/// (compressed-tensors W8A8).
fn w8a8_gemm(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    for (name, device) in devices() {
        for (k, n) in [(1024usize, 1024usize), (4096, 4096)] {
            let scales: Vec<f32> = (0..n).map(|_| rng.random_range(1e-3..1e-2)).collect();
            let w = W8A8Weight {
                in_features: k,
                out_features: n,
                codes: byte_words(n, k, false, &device, &mut rng),
                scales: Tensor::from_data(TensorData::new(scales, [1, n]), (&device, DType::F32)),
                activations: ActivationQuant::DynamicPerToken,
            };
            let dense = w.dequantize().transpose();
            // The same weight with float activations (int8 weight-only).
            let weight_only = W8A8Weight { activations: ActivationQuant::None, ..w.clone() };
            let mut group = c.benchmark_group(format!("w8a8/{name}/{k}x{n}"));
            group.sample_size(10);
            for &m in byte_rows(&name) {
                let x = activations(m, k, &device, &mut rng);
                group.throughput(Throughput::Bytes((k * n) as u64));
                match kernels::select::w8a8_gemm(&w, &device, DType::F32, m).kernel {
                    GemmKernel::Portable { tile_m } => {
                        group.bench_with_input(BenchmarkId::new("portable_kernel", m), &x, |b, x| b.iter(|| finish(kernels::w8a8_gemm(&w, x.clone(), tile_m))));
                    }
                    GemmKernel::Host => {
                        for (id, path) in [("host_fused", HostPath::Fused), ("host_tiled", HostPath::Tiled)] {
                            group.bench_with_input(BenchmarkId::new(id, m), &x, |b, x| b.iter(|| finish(kernels::host::w8a8_gemm_by(&w, x.clone(), path).expect("a weight on Flex"))));
                        }
                        for (id, path) in [("host_fused_weight_only", HostPath::Fused), ("host_tiled_weight_only", HostPath::Tiled)] {
                            let run = |x: &Tensor<2>| finish(kernels::host::w8a8_gemm_by(&weight_only, x.clone(), path).expect("a weight on Flex"));
                            group.bench_with_input(BenchmarkId::new(id, m), &x, |b, x| b.iter(|| run(x)));
                        }
                    }
                    other => panic!("{name}: {other:?} is selected, not a portable or host kernel"),
                };
                group.bench_with_input(BenchmarkId::new("dense_f32_matmul", m), &x, |b, x| b.iter(|| finish(x.clone().matmul(dense.clone()))));
                group.bench_with_input(BenchmarkId::new("burn_ops_reference", m), &x, |b, x| b.iter(|| finish(w.forward_reference(x.clone()))));
            }
            group.finish();
        }
    }
}

/// The tensor-core W4A16 kernel on CUDA devices at Mixtral-8x7B's shapes, f16 and bf16,
/// against the portable register kernel and a dense matmul of the dequantized weight in
/// the same dtype, in one run (filter: `int_mma`). Skipped on other devices.
/// Float weights kept in f16 / bf16 on Flex (the host kernel converts them in
/// registers) against the f32 matmul of the same weight converted once.
fn half_weights(c: &mut Criterion) {
    let Ok(device) = ember::device::parse_device("flex") else { return };
    let mut rng = StdRng::seed_from_u64(5);
    for (k, n) in [(1024usize, 1024usize), (4096, 4096)] {
        let values: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.05f32..0.05)).collect();
        let dense_t = Tensor::<2>::from_data(TensorData::new(values, [n, k]), (&device, DType::F32));
        for dtype in [DType::F16, DType::BF16] {
            let weight = dense_t.clone().cast(dtype);
            let dense = weight.clone().cast(DType::F32).transpose();
            let mut group = c.benchmark_group(format!("half_weights_{dtype:?}/flex/{k}x{n}").to_lowercase());
            group.sample_size(10);
            group.throughput(Throughput::Bytes((k * n * 2) as u64));
            for m in [1usize, 4, 8, 16, 32, 64, 128] {
                let x = activations(m, k, &device, &mut rng);
                for (id, path) in [("host_fused", HostPath::Fused), ("host_tiled", HostPath::Tiled)] {
                    group.bench_with_input(BenchmarkId::new(id, m), &x, |b, x| b.iter(|| finish(kernels::host::half_weight_gemm_by(&weight, x.clone(), path).expect("a weight on Flex"))));
                }
                group.bench_with_input(BenchmarkId::new("dense_f32_matmul", m), &x, |b, x| b.iter(|| finish(x.clone().matmul(dense.clone()))));
            }
            group.finish();
        }
    }
}

/// The steps between a feed-forward block's and an attention block's products on Flex, at
/// a 2048-token prefill step of Mistral-7B's shapes: the host kernels against Burn's ops
/// (`EMBER_KERNELS=reference`'s path), f32 and bf16.
fn between_products(c: &mut Criterion) {
    let Ok(device) = ember::device::parse_device("flex") else { return };
    let (tokens, hidden, intermediate, heads, head_dim) = (2048usize, 4096usize, 14336usize, 32usize, 128usize);
    let random = |shape: [usize; 2]| Tensor::<2>::random(shape, burn::tensor::Distribution::Uniform(-3.0, 3.0), &device);
    let (gate, up, x) = (random([tokens, intermediate]), random([tokens, intermediate]), random([tokens, hidden]));
    let weight = random([1, hidden]).reshape([hidden]);
    let (cos, sin) = (random([tokens, head_dim]), random([tokens, head_dim]));
    let reference = |op: &dyn Fn() -> Tensor<2>| kernels::with_policy(kernels::KernelPolicy::Reference, op);
    for dtype in [DType::F32, DType::BF16] {
        let [gate, up, x, cos, sin] = [&gate, &up, &x, &cos, &sin].map(|t| t.clone().cast(dtype));
        let weight = weight.clone().cast(dtype);
        let mut group = c.benchmark_group(format!("between_products_{dtype:?}/flex").to_lowercase());
        group.sample_size(10);
        let silu_and_mul = || kernels::silu_and_mul(gate.clone(), up.clone());
        group.bench_function(format!("silu_and_mul/{tokens}x{intermediate}/host"), |b| b.iter(|| finish(silu_and_mul())));
        group.bench_function(format!("silu_and_mul/{tokens}x{intermediate}/burn_ops"), |b| b.iter(|| finish(reference(&silu_and_mul))));
        let rms_norm = || kernels::rms_norm(x.clone(), &weight, 1e-5);
        group.bench_function(format!("rms_norm/{tokens}x{hidden}/host"), |b| b.iter(|| finish(rms_norm())));
        group.bench_function(format!("rms_norm/{tokens}x{hidden}/burn_ops"), |b| b.iter(|| finish(reference(&rms_norm))));
        // The rows a projection gives, and what the model's fallback does with them.
        let q = x.clone().reshape([tokens, heads, head_dim]);
        let host_rope = || kernels::rotate_half_rows(&q, &cos, &sin).expect("tensors on Flex").reshape([tokens, hidden]);
        let burn_rope = || {
            let t = q.clone().reshape([1, tokens, heads, head_dim]).swap_dims(1, 2);
            let rotated = Tensor::cat(vec![t.clone().narrow(3, head_dim / 2, head_dim / 2).neg(), t.clone().narrow(3, 0, head_dim / 2)], 3);
            let table = |t: &Tensor<2>| t.clone().reshape([1, 1, tokens, head_dim]);
            (t * table(&cos) + rotated * table(&sin)).swap_dims(1, 2).reshape([tokens, hidden])
        };
        group.bench_function(format!("rope/{tokens}x{heads}x{head_dim}/host"), |b| b.iter(|| finish(host_rope())));
        group.bench_function(format!("rope/{tokens}x{heads}x{head_dim}/burn_ops"), |b| b.iter(|| finish(burn_rope())));
        group.finish();
    }
}

fn int_mma_gemm(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    for (name, device) in devices().into_iter().filter(|(name, _)| name.starts_with("cuda")) {
        for (k, n) in [(4096usize, 14336usize), (14336, 4096), (4096, 4096)] {
            let w = weight(4, k, n, &device, &mut rng);
            let fragments = IntFragments::repack(&w).expect("Mixtral shapes tile");
            for dtype in [DType::BF16, DType::F16] {
                let dense = w.dequantize().cast(dtype);
                let mut group = c.benchmark_group(format!("int_mma_g{GROUP}/{name}/{dtype:?}/{k}x{n}"));
                group.sample_size(20);
                group.throughput(Throughput::Bytes((k * n / 2) as u64));
                for m in [1usize, 2, 4, 8, 16, 32, 64, 128, 256] {
                    let x = activations(m, k, &device, &mut rng).cast(dtype);
                    let tiling = kernels::int_mma_tiling(&device, m, k, n);
                    let weights_staged = kernels::mma_tiling(&device, m, k, n);
                    let unstaged = MmaTiling { staging: Staging::Direct, ..weights_staged };
                    let registers = IntGemmTiling::Registers { tile_m: m.min(kernels::select::MAX_TILE_M as usize) as u32 };
                    group.bench_with_input(BenchmarkId::new("tensor_core_kernel", m), &x, |b, x| {
                        queued(b, &device, || kernels::int_mma_gemm(&fragments, x.clone(), tiling))
                    });
                    // Baselines, four column blocks per cube: nothing staged, and the weights
                    // staged, which shows what slicing K gains below INT_MMA_STAGED_ROWS
                    // and what staging the activations gains from there.
                    group.bench_with_input(BenchmarkId::new("tensor_core_unstaged", m), &x, |b, x| {
                        queued(b, &device, || kernels::int_mma_gemm(&fragments, x.clone(), unstaged))
                    });
                    if tiling != weights_staged {
                        group.bench_with_input(BenchmarkId::new("tensor_core_weights_staged", m), &x, |b, x| {
                            queued(b, &device, || kernels::int_mma_gemm(&fragments, x.clone(), weights_staged))
                        });
                    }
                    if matches!(m, 1 | 16 | 128) {
                        // The portable kernel on CUDA, at a few row counts (the GPU session's time is short).
                        group.bench_with_input(BenchmarkId::new("register_kernel", m), &x, |b, x| queued(b, &device, || kernels::int_weight_gemm(&w, x.clone(), registers)));
                    }
                    group.bench_with_input(BenchmarkId::new("dense_matmul", m), &x, |b, x| queued(b, &device, || x.clone().matmul(dense.clone())));
                }
                group.finish();
            }
        }
    }
}

/// The tensor-core 8-bit kernels on CUDA devices at Llama-3-8B / Mixtral shapes with bf16
/// activations: FP8 (per-token × per-channel, static input scale × per-channel and
/// 128-blocks, activations quantized to e4m3 in the same call), FP8 weight-only (`int_mma`) and int8 W8A8, against a dense
/// bf16 matmul in the same run
/// (filter: `byte_mma`). Skipped on other devices.
fn byte_mma_gemm(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(4);
    for (name, device) in devices().into_iter().filter(|(name, _)| name.starts_with("cuda")) {
        for (k, n) in [(4096usize, 4096usize), (4096, 14336), (14336, 4096)] {
            let channel = fp8_weight(k, n, [n, 1], None, ActivationQuant::DynamicPerToken, &device, &mut rng);
            let block = fp8_weight(k, n, [n / 128, k / 128], Some([128, 128]), ActivationQuant::DynamicPerGroup(128), &device, &mut rng);
            let input_scale = ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.01f32], [1]), (&device, DType::F32)));
            let static_channel = fp8_weight(k, n, [n, 1], None, input_scale, &device, &mut rng);
            let scales: Vec<f32> = (0..n).map(|_| rng.random_range(1e-3..1e-2)).collect();
            let int8 = W8A8Weight {
                in_features: k,
                out_features: n,
                codes: byte_words(n, k, false, &device, &mut rng),
                scales: Tensor::from_data(TensorData::new(scales, [1, n]), (&device, DType::F32)),
                activations: ActivationQuant::DynamicPerToken,
            };
            let weight_only = fp8_weight(k, n, [n, 1], None, ActivationQuant::None, &device, &mut rng);
            let weight_only_fragments = IntFragments::repack_fp8(&weight_only).expect("Llama shapes tile");
            let dense = channel.dequantize().transpose().cast(DType::BF16);
            let mut group = c.benchmark_group(format!("byte_mma/{name}/{k}x{n}"));
            group.sample_size(20);
            group.throughput(Throughput::Bytes((k * n) as u64));
            for m in [1usize, 16, 128, 1024, 4096] {
                let x = activations(m, k, &device, &mut rng).cast(DType::BF16);
                let tiling = kernels::byte_mma_tiling(&device, m, k, n, false);
                let block_tiling = kernels::byte_mma_tiling(&device, m, k, n, true);
                let weights_staged = kernels::mma_tiling(&device, m, k, n);
                let unstaged = MmaTiling { staging: Staging::Direct, ..weights_staged };
                let weight_only_tiling = kernels::int_mma_tiling(&device, m, k, n);
                group.bench_with_input(BenchmarkId::new("fp8_channel_tensor_cores", m), &x, |b, x| queued(b, &device, || kernels::fp8_mma_gemm(&channel, x.clone(), tiling)));
                // What staging through shared memory gains: the weights (the selector's
                // choice below STAGED_ROWS), then both operands.
                group.bench_with_input(BenchmarkId::new("fp8_channel_unstaged", m), &x, |b, x| queued(b, &device, || kernels::fp8_mma_gemm(&channel, x.clone(), unstaged)));
                if tiling != weights_staged {
                    group.bench_with_input(BenchmarkId::new("fp8_channel_weights_staged", m), &x, |b, x| {
                        queued(b, &device, || kernels::fp8_mma_gemm(&channel, x.clone(), weights_staged))
                    });
                }
                // A static input scale: below the staging threshold the GEMM quantizes the
                // activations itself, where per-token scales take a launch of their own.
                group.bench_with_input(BenchmarkId::new("fp8_channel_static_scale_tensor_cores", m), &x, |b, x| {
                    queued(b, &device, || kernels::fp8_mma_gemm(&static_channel, x.clone(), tiling))
                });
                group.bench_with_input(BenchmarkId::new("fp8_block128_tensor_cores", m), &x, |b, x| queued(b, &device, || kernels::fp8_mma_gemm(&block, x.clone(), block_tiling)));
                group.bench_with_input(BenchmarkId::new("int8_tensor_cores", m), &x, |b, x| queued(b, &device, || kernels::w8a8_mma_gemm(&int8, x.clone(), tiling)));
                group.bench_with_input(BenchmarkId::new("fp8_weight_only_tensor_cores", m), &x, |b, x| {
                    queued(b, &device, || kernels::int_mma_gemm(&weight_only_fragments, x.clone(), weight_only_tiling))
                });
                group.bench_with_input(BenchmarkId::new("int8_portable", m), &x, |b, x| queued(b, &device, || kernels::w8a8_gemm(&int8, x.clone(), 8)));
                group.bench_with_input(BenchmarkId::new("dense_bf16_matmul", m), &x, |b, x| queued(b, &device, || x.clone().matmul(dense.clone())));
            }
            group.finish();
        }
    }
}

/// One model step on the Flex device, its attention by the host kernel (`host`) and by
/// the gathered Burn-ops path (`gathered`), in one run. The model has one layer with
/// Llama-3-8B's attention (32 heads, 8 KV heads, head_dim 128) and everything else small
/// (hidden 256, vocab 2048), so attention is most of the step; weights are dummies.
/// Decode steps bring one token to each of `batch` sequences of `context` positions;
/// prefill steps bring `batch` whole prompts of `context` tokens.
fn paged_attention(c: &mut Criterion) {
    use ember::models::SequenceChunk;
    use ember::quant::kernels::{with_policy, KernelPolicy};
    use ember::quant::ComputeDtype;
    use ember::{load_model, LoadFormat, LoadOptions};

    let dir = std::env::temp_dir().join("ember-bench-attention");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 256,
        "num_hidden_layers": 1, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 2048, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false
    });
    std::fs::create_dir_all(&dir).expect("bench directory");
    std::fs::write(dir.join("config.json"), config.to_string()).expect("bench config");
    let options = LoadOptions { load_format: LoadFormat::Dummy, ..LoadOptions::new(Device::flex(), ComputeDtype::F32) };
    let loaded = load_model(&dir, &options).expect("dummy model");
    let model = &loaded.model;
    const BLOCK: usize = 16;

    let mut group = c.benchmark_group("paged_attention/flex");
    group.sample_size(10);
    for (step, batch, context) in [("decode", 1usize, 512usize), ("decode", 1, 4096), ("decode", 16, 512), ("decode", 16, 2048), ("prefill", 1, 512), ("prefill", 4, 1024)] {
        let blocks_each = (context + 1).div_ceil(BLOCK);
        let tables: Vec<Vec<u32>> = (0..batch).map(|i| ((i * blocks_each) as u32..((i + 1) * blocks_each) as u32).collect()).collect();
        let tokens: Vec<u32> = (0..context as u32).map(|t| t * 7 % 2048).collect();
        let mut cache = model.new_paged_cache(batch * blocks_each, BLOCK);
        let chunks: Vec<SequenceChunk> = match step {
            "decode" => {
                let prompts: Vec<SequenceChunk> = tables.iter().map(|table| SequenceChunk { tokens: &tokens, start: 0, block_table: table }).collect();
                model.forward_paged(&prompts, &mut cache).expect("prefill the contexts");
                tables.iter().map(|table| SequenceChunk { tokens: &tokens[..1], start: context, block_table: table }).collect()
            }
            _ => tables.iter().map(|table| SequenceChunk { tokens: &tokens, start: 0, block_table: table }).collect(),
        };
        group.throughput(Throughput::Elements((batch * if step == "decode" { 1 } else { context }) as u64));
        for (path, policy) in [("host", KernelPolicy::Auto), ("gathered", KernelPolicy::Reference)] {
            let id = BenchmarkId::new(format!("{step}_{path}"), format!("batch{batch}_ctx{context}"));
            // Every call writes the same slots with the same values, so the steps are alike.
            group.bench_function(id, |b| {
                b.iter(|| with_policy(policy, || black_box(model.forward_paged(&chunks, &mut cache).expect("step").into_data())))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, int4_gemm, half_weights, between_products, int_mma_gemm, fp8_gemm, w8a8_gemm, byte_mma_gemm, paged_attention);
criterion_main!(benches);
