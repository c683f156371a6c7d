//! SwiGLU's activation on the Flex device, `silu(gate) · up` in one pass: Burn's ops take
//! three (a sigmoid through the C library's `exp`, value by value, then two products),
//! which in a 2048-token prefill step of a 14336-wide feed-forward block cost a fifth as
//! much as one of its projections.
//!
//! Values are taken a block at a time as f32, `silu(g) = g / (1 + e^−g)` computed with a
//! polynomial `exp` the compiler vectorizes (within two units in the last place), and, for
//! 16-bit dtypes, rounded to the dtype before and after the product by `up`, as PyTorch
//! computes `act_fn(gate) * up` in that dtype.

use burn::tensor::{DType, Tensor, TensorData};
use half::{bf16, f16};
use rayon::prelude::*;

use super::floats::{zeroed, Element, CHUNK};
use super::{HostBuffer, VectorIsa};

/// Values per step of a task: the f32 copies of a block stay in the L1 cache.
const BLOCK: usize = 1024;

/// `silu(gate) · up` for tensors of one shape and dtype (f32, f16 or bf16) on the Flex
/// device; `None` for anything else.
pub fn silu_and_mul<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let (shape, dtype) = (gate.shape(), gate.dtype());
    if up.shape() != shape || up.dtype() != dtype {
        return None;
    }
    let (gate_buffer, up_buffer) = (HostBuffer::of(gate)?, HostBuffer::of(up)?);
    let data = match dtype {
        DType::F32 => TensorData::new(product::<f32>(gate_buffer.0.as_slice()?, up_buffer.0.as_slice()?), shape),
        DType::BF16 => TensorData::new(product::<bf16>(gate_buffer.0.as_slice()?, up_buffer.0.as_slice()?), shape),
        DType::F16 => TensorData::new(product::<f16>(gate_buffer.0.as_slice()?, up_buffer.0.as_slice()?), shape),
        _ => return None,
    };
    Some(Tensor::from_data(data, (&gate.device(), dtype)))
}

fn product<E: Element>(gate: &[E], up: &[E]) -> Vec<E> {
    let mut out = zeroed::<E>(gate.len());
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(out, (gate, up))| {
        let (mut g, mut u, mut scratch) = ([0f32; BLOCK], [0f32; BLOCK], [E::zeroed(); BLOCK]);
        for ((out, gate), up) in out.chunks_mut(BLOCK).zip(gate.chunks(BLOCK)).zip(up.chunks(BLOCK)) {
            let len = out.len();
            let (g, u, scratch) = (&mut g[..len], &mut u[..len], &mut scratch[..len]);
            E::widen(gate, g);
            E::widen(up, u);
            silu(g);
            E::round(g, scratch);
            g.iter_mut().zip(u.iter()).for_each(|(g, u)| *g *= u);
            E::narrow(g, out);
        }
    });
    out
}

/// `values` ← `silu(values)`, compiled for the widest vector set the CPU has.
fn silu(values: &mut [f32]) {
    match super::vector_isa() {
        // SAFETY (both calls): `vector_isa` reports only sets the CPU was checked to have.
        #[cfg(target_arch = "x86_64")]
        VectorIsa::Amx | VectorIsa::Avx512 => unsafe { silu_avx512(values) },
        #[cfg(target_arch = "x86_64")]
        VectorIsa::Avx2 => unsafe { silu_avx2(values) },
        _ => silu_lanes(values),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn silu_avx512(values: &mut [f32]) {
    silu_lanes(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_avx2(values: &mut [f32]) {
    silu_lanes(values)
}

#[inline(always)]
fn silu_lanes(values: &mut [f32]) {
    values.iter_mut().for_each(|x| *x /= 1.0 + exp(-*x));
}

/// `e^x` by `2^n · e^r` with `r = x − n·ln 2` in `[−ln 2 / 2, ln 2 / 2]` and `e^r`'s
/// Taylor polynomial to degree 7 (truncation below 10⁻⁸ relative); `x` clamped to
/// `[−87.3, 88.7]`, whose top end gives infinity (`silu(−∞)` is then NaN, as PyTorch's).
/// Branch-free, so a loop over it vectorizes.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first with trailing zero bits so that `n · LN2_HIGH` is exact.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5 · 2²³ rounds to the nearest integer.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2_E + ROUNDER) - ROUNDER;
    let r = (x - n * LN2_HIGH) - n * LN2_LOW;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}
