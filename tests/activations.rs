//! SwiGLU's fused activation on the Flex device against its definition, under each vector
//! set the CPU has.

use burn::tensor::{DType, Device, Tensor, TensorData};
use ember_quant::kernels;
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
