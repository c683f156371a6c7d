//! Portable FP8 GEMM: e4m3 weights `[N, K/4]` (four bytes per word along K) times either
//! e4m3 activations `[M, K/4]` quantized at run time (W8A8-FP8) or the float activations
//! themselves (FP8 weight-only). Bytes decode by bit arithmetic; a product of two e4m3
//! values is exact in f32, and sums accumulate in f32.
//!
//! Scales apply per K chunk, so one kernel covers every scheme: a chunk is the whole row
//! for per-tensor and per-channel weight scales with per-token or per-tensor activation
//! scales, and 128 (the block / group width) for DeepSeek-style 128×128 weight blocks and
//! 1×128 activation groups. Each chunk's partial sums are multiplied by the activation
//! scale of (row, chunk) and the weight scale of (column, chunk), found through strides
//! (`[row · row_stride + chunk · chunk_stride]`, the weight's row being `column / col_div`).
//!
//! Tiling as in the integer kernels: `tile_m × TILE_N` outputs per unit, each decoded
//! weight reused by all the unit's rows; no shared memory, no barriers.

use cubecl::prelude::*;

use super::e4m3::decode_e4m3;
use super::int_gemm::{CUBE_UNITS, TILE_N};

/// Scale strides are in elements of the scale buffers (see the module docs).
/// `out = Σ_chunks (Σ_{k in chunk} a[m, k] · w[n, k]) · a_scale(m, chunk) · w_scale(n, chunk)`
/// where `a` is `a_codes` decoded (`quantized_input`) or `x` (weight-only, no activation
/// scale). The unused input is a one-element placeholder.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn fp8_gemm<F: Float>(
    x: &[F],
    a_codes: &[i32],
    a_scales: &[f32],
    w_codes: &[i32],
    w_scales: &[f32],
    out: &mut [F],
    m: u32,
    k_words: u32,
    n: u32,
    chunk_words: u32,
    a_scale_row: u32,
    a_scale_chunk: u32,
    w_scale_col_div: u32,
    w_scale_row: u32,
    w_scale_chunk: u32,
    #[comptime] quantized_input: bool,
    #[comptime] tile_m: u32,
    #[define(F)] _dtype: ElemType,
) {
    let col0 = (CUBE_POS_X * CUBE_UNITS + UNIT_POS_X) * TILE_N;
    if col0 >= n {
        terminate!();
    }
    let row0 = CUBE_POS_Y * tile_m;

    let mut acc = Array::<f32>::new(comptime!((tile_m * TILE_N) as usize));
    let mut partial = Array::<f32>::new(comptime!((tile_m * TILE_N) as usize));
    #[unroll]
    for i in 0..tile_m * TILE_N {
        acc[i as usize] = 0.0f32;
    }
    // Rows and columns past the edge read the last one (always valid) and are never written.
    let mut a_row = Array::<u32>::new(comptime!(tile_m as usize));
    #[unroll]
    for r in 0..tile_m {
        a_row[r as usize] = min(row0 + r, m - 1);
    }
    let mut w_col = Array::<u32>::new(comptime!(TILE_N as usize));
    #[unroll]
    for j in 0..TILE_N {
        w_col[j as usize] = min(col0 + j, n - 1);
    }

    let mut weights = Array::<f32>::new(comptime!((4 * TILE_N) as usize));
    let chunks = k_words.div_ceil(chunk_words);
    for chunk in 0..chunks {
        #[unroll]
        for i in 0..tile_m * TILE_N {
            partial[i as usize] = 0.0f32;
        }
        let first = chunk * chunk_words;
        let last = min(first + chunk_words, k_words);
        for word in first..last {
            #[unroll]
            for j in 0..TILE_N {
                let packed = u32::reinterpret(w_codes[(w_col[j as usize] * k_words + word) as usize]);
                #[unroll]
                for byte in 0..4u32 {
                    weights[(j * 4 + byte) as usize] = decode_e4m3(packed >> (byte * 8));
                }
            }
            #[unroll]
            for r in 0..tile_m {
                let mut packed = 0u32;
                if comptime!(quantized_input) {
                    packed = u32::reinterpret(a_codes[(a_row[r as usize] * k_words + word) as usize]);
                }
                #[unroll]
                for byte in 0..4u32 {
                    let a = if comptime!(quantized_input) {
                        decode_e4m3(packed >> (byte * 8))
                    } else {
                        f32::cast_from(x[((a_row[r as usize] * k_words + word) * 4 + byte) as usize])
                    };
                    #[unroll]
                    for j in 0..TILE_N {
                        let at = (r * TILE_N + j) as usize;
                        partial[at] += a * weights[(j * 4 + byte) as usize];
                    }
                }
            }
        }
        #[unroll]
        for r in 0..tile_m {
            let mut a_scale = 1.0f32;
            if comptime!(quantized_input) {
                a_scale = a_scales[(a_row[r as usize] * a_scale_row + chunk * a_scale_chunk) as usize];
            }
            #[unroll]
            for j in 0..TILE_N {
                let w_scale = w_scales[((w_col[j as usize] / w_scale_col_div) * w_scale_row + chunk * w_scale_chunk) as usize];
                let at = (r * TILE_N + j) as usize;
                acc[at] += partial[at] * a_scale * w_scale;
            }
        }
    }

    #[unroll]
    for r in 0..tile_m {
        let row = row0 + r;
        #[unroll]
        for j in 0..TILE_N {
            let col = col0 + j;
            if row < m && col < n {
                out[(row * n + col) as usize] = F::cast_from(acc[(r * TILE_N + j) as usize]);
            }
        }
    }
}
