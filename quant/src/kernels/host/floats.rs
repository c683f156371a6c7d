//! The float dtypes the host kernels read and write (f32, bf16, f16), through f32: whole
//! buffers converted in parallel, and blocks converted in place by the element-wise
//! kernels.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// Values per task of a conversion or an element-wise kernel.
pub(super) const CHUNK: usize = 1 << 16;

/// A float dtype the host kernels read and write, through f32.
pub(super) trait Element: bytemuck::Pod + Send + Sync {
    fn widen(values: &[Self], out: &mut [f32]);
    /// Rounding to nearest, ties to even.
    fn narrow(values: &[f32], out: &mut [Self]);
    /// `values` rounded to this dtype in place (nothing to do for f32).
    fn round(values: &mut [f32], scratch: &mut [Self]) {
        Self::narrow(values, scratch);
        Self::widen(scratch, values);
    }
}

impl Element for f32 {
    fn widen(values: &[f32], out: &mut [f32]) {
        out.copy_from_slice(values);
    }

    fn narrow(values: &[f32], out: &mut [f32]) {
        out.copy_from_slice(values);
    }

    fn round(_: &mut [f32], _: &mut [f32]) {}
}

impl Element for bf16 {
    fn widen(values: &[bf16], out: &mut [f32]) {
        values.convert_to_f32_slice(out);
    }

    /// In integer steps the compiler vectorizes (NaN stays NaN): `half`'s own conversion
    /// goes value by value, and took as long as a prefill's products' assembly.
    fn narrow(values: &[f32], out: &mut [bf16]) {
        for (half, value) in out.iter_mut().zip(values) {
            let bits = value.to_bits();
            let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
            let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
            *half = bf16::from_bits(if nan { (bits >> 16) as u16 | 0x40 } else { rounded });
        }
    }
}

/// Through `half`'s slice conversions, which use the CPU's f16 instructions where it has them.
impl Element for f16 {
    fn widen(values: &[f16], out: &mut [f32]) {
        values.convert_to_f32_slice(out);
    }

    fn narrow(values: &[f32], out: &mut [f16]) {
        out.convert_from_f32_slice(values);
    }
}

/// A buffer of `len` zeros from fresh pages, which the threads writing it fault in.
pub(super) fn zeroed<E: Element>(len: usize) -> Vec<E> {
    bytemuck::allocation::zeroed_vec(len)
}

/// `values` as f32, in parallel.
pub(super) fn widened<E: Element>(values: &[E]) -> Vec<f32> {
    let mut out = zeroed::<f32>(values.len());
    out.par_chunks_mut(CHUNK).zip(values.par_chunks(CHUNK)).for_each(|(out, values)| E::widen(values, out));
    out
}

/// f32 `values` rounded to `E`, in parallel.
pub(super) fn narrowed<E: Element>(values: &[f32]) -> Vec<E> {
    let mut out = zeroed::<E>(values.len());
    out.par_chunks_mut(CHUNK).zip(values.par_chunks(CHUNK)).for_each(|(out, values)| E::narrow(values, out));
    out
}
