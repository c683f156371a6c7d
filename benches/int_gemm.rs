//! The portable W4A16 kernel against Burn's dense matmul of the already-dequantized weight
//! (what a float model would run) and against the Burn-ops reference path (dequantize, then
//! matmul, every call), in one run per device. `cargo bench --bench int_gemm [-- filter]`;
//! `EMBER_BENCH_DEVICES=wgpu,cpu,cuda` picks the devices (default: wgpu and cpu).

use std::hint::black_box;

use burn::tensor::{DType, Device, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ember::quant::kernels::{self, GemmKernel};
use ember::quant::packing::int_tensor;
use ember::quant::repr::{PackedIntWeight, ZeroPoints};
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

fn weight(k: usize, n: usize, device: &Device, rng: &mut StdRng) -> PackedIntWeight {
    let words: Vec<i32> = (0..k / 8 * n).map(|_| rng.random()).collect();
    let scales: Vec<f32> = (0..k / GROUP * n).map(|_| rng.random_range(0.002..0.02)).collect();
    let scales = Tensor::<2>::from_data(TensorData::new(scales, [k / GROUP, n]), (device, DType::F32));
    PackedIntWeight::new(4, int_tensor(words, [k / 8, n], device), scales, ZeroPoints::Midpoint, GROUP)
}

/// Waits for the whole result (it stays alive across the sync, so a lazy backend cannot
/// skip any of it) so each iteration measures the complete computation.
fn finish(t: Tensor<2>) {
    t.device().sync().expect("device sync");
    black_box(t);
}

fn int4_gemm(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    for (name, device) in devices() {
        for (k, n) in [(1024usize, 1024usize), (4096, 4096)] {
            let w = weight(k, n, &device, &mut rng);
            let dense = w.dequantize();
            let mut group = c.benchmark_group(format!("int4_g{GROUP}/{name}/{k}x{n}"));
            group.sample_size(10);
            for m in [1usize, 16, 64] {
                let x = Tensor::<2>::from_data(TensorData::new((0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), [m, k]), (&device, DType::F32));
                let GemmKernel::Portable { tile_m } = kernels::select::int_gemm(&w, &device, DType::F32, m).kernel else {
                    panic!("{name}: the portable kernel is not selected");
                };
                group.throughput(Throughput::Bytes((k * n / 2) as u64));
                group.bench_with_input(BenchmarkId::new("portable_kernel", m), &x, |b, x| b.iter(|| finish(kernels::int_weight_gemm(&w, x.clone(), tile_m))));
                group.bench_with_input(BenchmarkId::new("dense_f32_matmul", m), &x, |b, x| b.iter(|| finish(x.clone().matmul(dense.clone()))));
                group.bench_with_input(BenchmarkId::new("burn_ops_reference", m), &x, |b, x| b.iter(|| finish(w.forward_reference(x.clone()))));
            }
            group.finish();
        }
    }
}

criterion_group!(benches, int4_gemm);
criterion_main!(benches);
