//! Portable int8 W8A8 GEMM: int8 activations (per-token or per-tensor scales) times int8
//! weights (per-output-channel scales), both `[rows, K/4]` words of four bytes along K.
//! Products accumulate in i32, so the integer dot product is exact (|acc| < 2^31 for
//! K < 131072), and the scales apply once in the epilogue in the reference's order:
//! `(acc · a_scale) · w_scale`.
//!
//! The tiling is the weight-only kernel's: each unit owns `tile_m × TILE_N` outputs,
//! sign-extends the `TILE_N` weight words of a K step once and reuses them for all its
//! rows; no shared memory, no barriers.

use cubecl::prelude::*;

use super::int_gemm::{CUBE_UNITS, TILE_N};

/// `out[m, n] = (Σ_k a[m, k] · w[n, k]) · a_scales[m · a_scale_stride] · w_scales[n]`,
/// `a_scale_stride` being 1 for per-token scales and 0 for one scale.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn w8a8_gemm<F: Float>(
    a_codes: &[i32],
    a_scales: &[f32],
    w_codes: &[i32],
    w_scales: &[f32],
    out: &mut [F],
    m: u32,
    k_words: u32,
    n: u32,
    a_scale_stride: u32,
    #[comptime] tile_m: u32,
    #[define(F)] _dtype: ElemType,
) {
    let col0 = (CUBE_POS_X * CUBE_UNITS + UNIT_POS_X) * TILE_N;
    if col0 >= n {
        terminate!();
    }
    let row0 = CUBE_POS_Y * tile_m;

    let mut acc = Array::<i32>::new(comptime!((tile_m * TILE_N) as usize));
    #[unroll]
    for i in 0..tile_m * TILE_N {
        acc[i as usize] = 0i32;
    }
    // Rows and columns past the edge read the last one (always valid) and are never written.
    let mut a_base = Array::<u32>::new(comptime!(tile_m as usize));
    #[unroll]
    for r in 0..tile_m {
        a_base[r as usize] = min(row0 + r, m - 1) * k_words;
    }
    let mut w_base = Array::<u32>::new(comptime!(TILE_N as usize));
    #[unroll]
    for j in 0..TILE_N {
        w_base[j as usize] = min(col0 + j, n - 1) * k_words;
    }

    let mut weights = Array::<i32>::new(comptime!((4 * TILE_N) as usize));
    for word in 0..k_words {
        #[unroll]
        for j in 0..TILE_N {
            let packed = w_codes[(w_base[j as usize] + word) as usize];
            #[unroll]
            for byte in 0..4u32 {
                weights[(j * 4 + byte) as usize] = signed_byte(packed, byte);
            }
        }
        #[unroll]
        for r in 0..tile_m {
            let packed = a_codes[(a_base[r as usize] + word) as usize];
            #[unroll]
            for byte in 0..4u32 {
                let a = signed_byte(packed, byte);
                #[unroll]
                for j in 0..TILE_N {
                    let at = (r * TILE_N + j) as usize;
                    acc[at] += a * weights[(j * 4 + byte) as usize];
                }
            }
        }
    }

    #[unroll]
    for r in 0..tile_m {
        let row = row0 + r;
        if row < m {
            let a_scale = a_scales[(row * a_scale_stride) as usize];
            #[unroll]
            for j in 0..TILE_N {
                let col = col0 + j;
                if col < n {
                    let value = f32::cast_from(acc[(r * TILE_N + j) as usize]) * a_scale * w_scales[col as usize];
                    out[(row * n + col) as usize] = F::cast_from(value);
                }
            }
        }
    }
}

/// Byte `byte` of `word` as a signed int8, sign-extended by shifting it to the top and
/// arithmetic-shifting it back.
#[cube]
pub fn signed_byte(word: i32, byte: u32) -> i32 {
    (word << i32::cast_from(24 - 8 * byte)) >> 24i32
}
