//! The Flex device's element-wise and row-wise kernels between the products (SwiGLU's
//! activation, RMSNorm, rotary embeddings) against their definitions.

use burn::tensor::{DType, Device, Tensor, TensorData};
use ember_quant::kernels::{self, KernelPolicy};
use ember_quant::kernels::host::VectorIsa;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kernels::to_f32;

/// `silu(g) · u` over 2 × 37 × 1000 values (more than one task's chunk, a partial block)
/// read from views of a wider tensor, as the grouped experts' gate|up output is split:
/// f32 within eight units in the last place of the definition in f64; f16 and bf16 as
/// PyTorch computes `act_fn(gate) * up` in that dtype (silu rounded, then the product
/// rounded), exact but where the f32 silu sits at the edge of a rounding tie (then a unit
/// off, rarely). Large, infinite and NaN gates keep their limits.
#[test]
fn silu_and_mul_matches_its_definition() {
    crate::common::under_each_vector_isa(silu_and_mul_cases);
}

fn silu_and_mul_cases(isa: VectorIsa) {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(81);
    let shape = [2usize, 37, 1000];
    let count = shape.iter().product::<usize>();
    let specials = [0.0, -0.0, 1e30, -1e30, -100.0, 100.0, f32::INFINITY, f32::NAN, 3e-8, -3e-8];
    let mut both = Vec::with_capacity(2 * count);
    for row in 0..count / 1000 {
        let gate = (0..1000).map(|i| specials.get(row * 1000 + i).copied().unwrap_or_else(|| rng.random_range(-12f32..12.0)));
        both.extend(gate.collect::<Vec<_>>());
        both.extend((0..1000).map(|_| rng.random_range(-3f32..3.0)));
    }
    let both = Tensor::<3>::from_data(TensorData::new(both, [2, 37, 2000]), (&device, DType::F32));
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let both = both.clone().cast(dtype);
        let (gate, up) = (both.clone().narrow(2, 0, 1000), both.narrow(2, 1000, 1000));
        let (g, u) = (to_f32(gate.clone()), to_f32(up.clone()));
        let out = kernels::silu_and_mul(gate, up);
        assert_eq!((out.dims(), out.dtype()), (shape, dtype));
        let out = to_f32(out);
        let round = |v: f64| -> f64 {
            match dtype {
                DType::BF16 => half::bf16::from_f64(v).to_f64(),
                DType::F16 => half::f16::from_f64(v).to_f64(),
                _ => v,
            }
        };
        let ulp = |v: f64| -> f64 {
            let bits = match dtype {
                DType::BF16 => 8,
                DType::F16 => 11,
                _ => 24,
            };
            2f64.powi(v.abs().max(f64::MIN_POSITIVE).log2().floor() as i32 + 1 - bits)
        };
        let mut inexact = 0;
        for (i, ((&o, &g), &u)) in out.iter().zip(&g).zip(&u).enumerate() {
            let (g, u) = (g as f64, u as f64);
            let silu = g / (1.0 + (-g).exp());
            let expected = round(round(silu) * u);
            let o = o as f64;
            if expected.is_nan() {
                assert!(o.is_nan(), "{isa:?} {dtype:?} value {i}: g={g} u={u} gives {o}, not NaN");
                continue;
            }
            if expected.is_infinite() {
                assert_eq!(o, expected, "{isa:?} {dtype:?} value {i}: g={g} u={u}");
                continue;
            }
            // Below f32's normal range, the kernel's e^−g saturates and silu flushes to zero.
            // A silu a unit off moves the product by up to |u| of its units, then rounded.
            let allowed = match dtype {
                DType::F32 => 8.0 * ulp(expected),
                _ => ulp(expected) + u.abs() * ulp(silu),
            };
            let allowed = allowed.max(f32::MIN_POSITIVE as f64);
            assert!((o - expected).abs() <= allowed, "{isa:?} {dtype:?} value {i}: g={g} u={u} gives {o}, not {expected}");
            inexact += usize::from(o != expected);
        }
        if dtype != DType::F32 {
            assert!(inexact * 1000 < count, "{isa:?} {dtype:?}: {inexact} of {count} values a unit off");
        }
    }
}

/// RMSNorm over rows of 1000 values (70 rows, more than one task's chunk) read from a
/// view of a wider tensor: f32 within four units in the last place of the definition in
/// f64; f16 and bf16 as transformers computes it (the normalized row rounded to the dtype,
/// then times the weight, rounded), exact but where the f32 normalized value sits at the
/// edge of a rounding tie. A row of zeros stays zeros (eps keeps the scale finite).
#[test]
fn rms_norm_matches_its_definition() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(83);
    let (rows, hidden, eps) = (70usize, 1000usize, 1e-5);
    let mut wide: Vec<f32> = (0..rows * 2 * hidden).map(|_| rng.random_range(-3f32..3.0)).collect();
    // The first row of the view (the second half of the first wide row) is zeros.
    wide[hidden..2 * hidden].fill(0.0);
    let wide = Tensor::<3>::from_data(TensorData::new(wide, [2, rows / 2, 2 * hidden]), (&device, DType::F32));
    let weight: Vec<f32> = (0..hidden).map(|_| rng.random_range(-2f32..2.0)).collect();
    let weight = Tensor::<1>::from_data(TensorData::new(weight, [hidden]), (&device, DType::F32));
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let x = wide.clone().cast(dtype).narrow(2, hidden, hidden);
        let weight = weight.clone().cast(dtype);
        let out = kernels::rms_norm(x.clone(), &weight, eps);
        assert_eq!((out.dims(), out.dtype()), ([2, rows / 2, hidden], dtype));
        let (out, x, w) = (to_f32(out), to_f32(x), to_f32(weight));
        let (round, bits) = match dtype {
            DType::BF16 => ((|v: f64| half::bf16::from_f64(v).to_f64()) as fn(f64) -> f64, 8),
            DType::F16 => ((|v: f64| half::f16::from_f64(v).to_f64()) as fn(f64) -> f64, 11),
            _ => ((|v: f64| v) as fn(f64) -> f64, 24),
        };
        let ulp = |v: f64| 2f64.powi(v.abs().max(f64::MIN_POSITIVE).log2().floor() as i32 + 1 - bits);
        let mut inexact = 0;
        for (r, (out, x)) in out.chunks(hidden).zip(x.chunks(hidden)).enumerate() {
            let mean_square = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / hidden as f64;
            let inverse_rms = 1.0 / (mean_square + eps).sqrt();
            for (c, ((&o, &x), &w)) in out.iter().zip(x).zip(&w).enumerate() {
                let normalized = x as f64 * inverse_rms;
                let expected = round(round(normalized) * w as f64);
                let allowed = match dtype {
                    DType::F32 => 4.0 * ulp(expected),
                    _ => ulp(expected) + (w as f64).abs() * ulp(normalized),
                };
                assert!((o as f64 - expected).abs() <= allowed, "{dtype:?} row {r} column {c}: {o}, not {expected}");
                inexact += usize::from(o as f64 != expected);
            }
        }
        if dtype != DType::F32 {
            assert!(inexact * 1000 < rows * hidden, "{dtype:?}: {inexact} of {} values a unit off", rows * hidden);
        }
        assert!(out[..hidden].iter().all(|&v| v == 0.0), "{dtype:?}: a row of zeros");
    }
}

/// Rotary embeddings on `[tokens, heads, head_dim]` rows (300 tokens of 5 heads, more
/// than one task's chunk) against Burn's ops on the same values, `x · cos +
/// rotate_half(x) · sin` in the dtype: bit for bit in f32, bf16 and f16.
#[test]
fn rotary_embedding_matches_burn_ops_bit_for_bit() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(85);
    let (tokens, heads, dim) = (300usize, 5usize, 64usize);
    let x: Vec<f32> = (0..tokens * heads * dim).map(|_| rng.random_range(-4f32..4.0)).collect();
    let angles: Vec<f32> = (0..tokens).flat_map(|t| (0..dim).map(move |i| t as f32 * 10000f32.powf(-((i % (dim / 2)) as f32) / (dim / 2) as f32))).collect();
    let table = |f: fn(f32) -> f32| Tensor::<2>::from_data(TensorData::new(angles.iter().map(|&a| f(a)).collect::<Vec<_>>(), [tokens, dim]), (&device, DType::F32));
    let (cos, sin) = (table(f32::cos), table(f32::sin));
    let x = Tensor::<3>::from_data(TensorData::new(x, [tokens, heads, dim]), (&device, DType::F32));
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let (x, cos, sin) = (x.clone().cast(dtype), cos.clone().cast(dtype), sin.clone().cast(dtype));
        let kernel = kernels::host::rope::rotate_half(&x, &cos, &sin).expect("tensors on Flex");
        assert_eq!((kernel.dims(), kernel.dtype()), ([tokens, heads, dim], dtype));
        let rotated = Tensor::cat(vec![x.clone().narrow(2, dim / 2, dim / 2).neg(), x.clone().narrow(2, 0, dim / 2)], 2);
        let by_ops = x * cos.unsqueeze_dim::<3>(1) + rotated * sin.unsqueeze_dim::<3>(1);
        let (kernel, by_ops) = (to_f32(kernel), to_f32(by_ops));
        for (i, (k, o)) in kernel.iter().zip(&by_ops).enumerate() {
            assert_eq!(k.to_bits(), o.to_bits(), "{dtype:?} value {i}: {k} against {o}");
        }
    }
    let short = Tensor::<2>::zeros([tokens - 1, dim], &device);
    assert!(kernels::host::rope::rotate_half(&x, &short, &short).is_none(), "tables of another length");
    // `EMBER_KERNELS=reference` leaves the step to Burn's ops.
    assert!(kernels::rotate_half_rows(&x, &cos, &sin).is_some());
    assert!(kernels::with_policy(KernelPolicy::Reference, || kernels::rotate_half_rows(&x, &cos, &sin)).is_none());
}
