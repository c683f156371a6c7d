//! Rotary position embeddings ("rotate half", Llama's form) on the Flex device, a token
//! at a time in one pass, on the `[tokens, heads, head_dim]` rows the projections give:
//! Burn's ops take views swapped to `[heads, tokens, head_dim]`, a concatenation of the
//! negated and plain halves, and three products and sums over the whole tensor.
//!
//! Each product is rounded to the dtype before the sum (and the sum after), as the ops
//! compute `x · cos + rotate_half(x) · sin` in that dtype: the result is theirs, bit for bit.

use burn::tensor::{DType, Tensor, TensorData};
use half::{bf16, f16};
use rayon::prelude::*;

use super::floats::{zeroed, Element, CHUNK};
use super::HostBuffer;

/// `x` (`[tokens, heads, head_dim]`) rotated by `cos` and `sin` (`[tokens, head_dim]`,
/// each frequency twice, for the two halves of a head), all of one dtype (f32, f16 or
/// bf16) on the Flex device; `None` for anything else.
pub fn rotate_half(x: &Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Option<Tensor<3>> {
    let [tokens, heads, dim] = x.dims();
    let dtype = x.dtype();
    let tables_fit = [cos, sin].iter().all(|t| t.dims() == [tokens, dim] && t.dtype() == dtype);
    if !tables_fit || dim == 0 || !dim.is_multiple_of(2) || heads == 0 {
        return None;
    }
    let (values, cos, sin) = (HostBuffer::of(x)?, HostBuffer::of(cos)?, HostBuffer::of(sin)?);
    let shape = [tokens, heads, dim];
    let data = match dtype {
        DType::F32 => TensorData::new(rotated::<f32>(values.0.as_slice()?, cos.0.as_slice()?, sin.0.as_slice()?, shape), shape),
        DType::BF16 => TensorData::new(rotated::<bf16>(values.0.as_slice()?, cos.0.as_slice()?, sin.0.as_slice()?, shape), shape),
        DType::F16 => TensorData::new(rotated::<f16>(values.0.as_slice()?, cos.0.as_slice()?, sin.0.as_slice()?, shape), shape),
        _ => return None,
    };
    Some(Tensor::from_data(data, (&x.device(), dtype)))
}

fn rotated<E: Element>(x: &[E], cos: &[E], sin: &[E], [_, heads, dim]: [usize; 3]) -> Vec<E> {
    let token = heads * dim;
    let task = (CHUNK / token).max(1);
    let mut out = zeroed::<E>(x.len());
    let tables = cos.par_chunks(task * dim).zip(sin.par_chunks(task * dim));
    out.par_chunks_mut(task * token).zip(x.par_chunks(task * token)).zip(tables).for_each(|((out, x), (cos, sin))| {
        let (mut values, mut c, mut s) = (vec![0f32; token], vec![0f32; dim], vec![0f32; dim]);
        let (mut direct, mut rotated, mut scratch) = (vec![0f32; token], vec![0f32; token], vec![E::zeroed(); token]);
        for (((out, x), cos), sin) in out.chunks_mut(token).zip(x.chunks(token)).zip(cos.chunks(dim)).zip(sin.chunks(dim)) {
            E::widen(x, &mut values);
            E::widen(cos, &mut c);
            E::widen(sin, &mut s);
            let half = dim / 2;
            for ((head, direct), rotated) in values.chunks(dim).zip(direct.chunks_mut(dim)).zip(rotated.chunks_mut(dim)) {
                let (first, second) = head.split_at(half);
                for i in 0..half {
                    direct[i] = first[i] * c[i];
                    direct[half + i] = second[i] * c[half + i];
                    rotated[i] = -second[i] * s[i];
                    rotated[half + i] = first[i] * s[half + i];
                }
            }
            E::round(&mut direct, &mut scratch);
            E::round(&mut rotated, &mut scratch);
            direct.iter_mut().zip(&rotated).for_each(|(direct, rotated)| *direct += rotated);
            E::narrow(&direct, out);
        }
    });
    out
}
