//! Shared-memory tiled W4A16 / W8A16 GEMM for many rows: the same contract as
//! [`super::int_gemm::int_weight_gemm`] (K-packed `Int4` / `Int8` words, f32 group scales,
//! the three zero-point modes, act-order group indices, the grouped mixture-of-experts tile
//! map), organised so each weight is dequantized once per `TILE_M` rows instead of once
//! per unit.
//!
//! A cube of `CUBE_SIDE × CUBE_SIDE` units owns a `TILE_M × TILE_N` output block and walks
//! K in steps of `TILE_K`: the units stage the activation tile and the dequantized weight
//! tile in shared memory (f32, one packed word per unit for int4), synchronise, and each
//! accumulates a `PER_UNIT × PER_UNIT` register block from shared memory. A unit's rows and
//! columns are strided by `CUBE_SIDE`, so neighbouring units read neighbouring addresses
//! and write coalesced output. The barriers make this the kernel for GPU-like runtimes;
//! the CPU runtime keeps the barrier-free register kernel.

use cubecl::prelude::*;

use super::int_gemm::{row_tile, zero_mode};

/// Units per cube side; the cube is `CUBE_SIDE × CUBE_SIDE`.
pub const CUBE_SIDE: u32 = 16;
/// Output rows and columns per unit.
pub const PER_UNIT: u32 = 4;
/// Output rows per cube (and rows per tile in the grouped tile map).
pub const TILE_M: u32 = CUBE_SIDE * PER_UNIT;
/// Output columns per cube.
pub const TILE_N: u32 = CUBE_SIDE * PER_UNIT;
/// Input columns staged per step; K must be a multiple of it.
pub const TILE_K: u32 = 32;

/// `out[M, N] = x[M, K] · W[K, N]`, with the arguments and comptime switches of
/// [`super::int_gemm::int_weight_gemm`] (rows per unit fixed at [`TILE_M`] per cube).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn int_weight_gemm_tiled<F: Float>(
    x: &[F],
    packed: &[i32],
    scales: &[f32],
    zeros: &[i32],
    offsets: &[f32],
    group_index: &[i32],
    tiles: &[u32],
    out: &mut [F],
    m: u32,
    k: u32,
    n: u32,
    groups: u32,
    #[comptime] bits: u32,
    #[comptime] group_size: u32,
    #[comptime] zeros_mode: u32,
    #[comptime] grouped: bool,
    #[define(F)] _dtype: ElemType,
) {
    let per_word = comptime!(32 / bits);
    let units = comptime!(CUBE_SIDE * CUBE_SIDE);
    let unit = UNIT_POS_Y * CUBE_SIDE + UNIT_POS_X;
    let col_base = CUBE_POS_X * TILE_N;

    let tile = row_tile(tiles, CUBE_POS_Y, TILE_M, m, grouped);
    let row0 = tile.first;
    let row_end = tile.end;
    let word_base = tile.expert * (k / per_word) * n;
    let group_base = tile.expert * groups * n;

    let mut x_tile = Shared::<[f32]>::new_slice(comptime!((TILE_M * TILE_K) as usize));
    let mut w_tile = Shared::<[f32]>::new_slice(comptime!((TILE_K * TILE_N) as usize));

    let mut acc = Array::<f32>::new(comptime!((PER_UNIT * PER_UNIT) as usize));
    #[unroll]
    for i in 0..PER_UNIT * PER_UNIT {
        acc[i as usize] = 0.0f32;
    }
    let mut xs = Array::<f32>::new(comptime!(PER_UNIT as usize));
    let mut ws = Array::<f32>::new(comptime!(PER_UNIT as usize));

    let steps = k / TILE_K;
    for step in 0..steps {
        let k0 = step * TILE_K;
        // Stage the activations; rows past the tile read its last row and are never written.
        #[unroll]
        for s in 0..comptime!(TILE_M * TILE_K / units) {
            let at = s * units + unit;
            let r = at / TILE_K;
            let c = at % TILE_K;
            let row = min(row0 + r, row_end - 1);
            x_tile[at as usize] = f32::cast_from(x[(row * k + k0 + c) as usize]);
        }
        // Unpack and dequantize the weights, one packed word at a time.
        #[unroll]
        for s in 0..comptime!(TILE_K / per_word * TILE_N / units) {
            let at = s * units + unit;
            let word_row = at / TILE_N;
            let c = at % TILE_N;
            let col = min(col_base + c, n - 1);
            let first_k = k0 + word_row * per_word;
            let word = packed[(word_base + (first_k / per_word) * n + col) as usize];
            // A word never spans two contiguous groups (unused with a group index).
            let word_group_row = group_base + (first_k / comptime!(group_size.max(1))) * n + col;
            #[unroll]
            for i in 0..per_word {
                let group_row = if comptime!(group_size == 0) {
                    group_base + (group_index[(first_k + i) as usize] as u32) * n + col
                } else {
                    word_group_row
                };
                let q = f32::cast_from((word >> (i * bits) as i32) & comptime!((1u32 << bits) - 1) as i32);
                let weight = dequantize(q, scales, zeros, offsets, group_row, bits, zeros_mode);
                w_tile[((word_row * per_word + i) * TILE_N + c) as usize] = weight;
            }
        }
        sync_cube();

        for kk in 0..TILE_K {
            #[unroll]
            for i in 0..PER_UNIT {
                xs[i as usize] = x_tile[((UNIT_POS_Y + i * CUBE_SIDE) * TILE_K + kk) as usize];
                ws[i as usize] = w_tile[(kk * TILE_N + UNIT_POS_X + i * CUBE_SIDE) as usize];
            }
            #[unroll]
            for i in 0..PER_UNIT {
                #[unroll]
                for j in 0..PER_UNIT {
                    acc[(i * PER_UNIT + j) as usize] += xs[i as usize] * ws[j as usize];
                }
            }
        }
        sync_cube();
    }

    #[unroll]
    for i in 0..PER_UNIT {
        let row = row0 + UNIT_POS_Y + i * CUBE_SIDE;
        #[unroll]
        for j in 0..PER_UNIT {
            let col = col_base + UNIT_POS_X + j * CUBE_SIDE;
            if row < row_end && col < n {
                out[(row * n + col) as usize] = F::cast_from(acc[(i * PER_UNIT + j) as usize]);
            }
        }
    }
}

/// `(q - zero) · scale + offset` for the group entry at `at` of the `[G, N]` buffers.
#[cube]
fn dequantize(q: f32, scales: &[f32], zeros: &[i32], offsets: &[f32], at: u32, #[comptime] bits: u32, #[comptime] zeros_mode: u32) -> f32 {
    let zero = if comptime!(zeros_mode == zero_mode::INTEGER) {
        f32::cast_from(zeros[at as usize])
    } else {
        f32::new(comptime!((1u32 << (bits - 1)) as f32))
    };
    let scaled = (q - zero) * scales[at as usize];
    if comptime!(zeros_mode == zero_mode::FLOAT) {
        scaled + offsets[at as usize]
    } else {
        scaled
    }
}
