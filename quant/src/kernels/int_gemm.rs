//! Portable W4A16 / W8A16 GEMM: `y = x · dequant(W)` straight from the K-packed `Int4` /
//! `Int8` repr (`[K·b/32, N]` i32 words, f32 group scales `[G, N]`), on every CubeCL
//! runtime (wgpu, the CPU runtime, CUDA without the tensor-core path).
//!
//! Each unit owns a `tile_m × TILE_N` block of the output and walks K one packed word row
//! at a time: the `TILE_N` words of that row are unpacked and dequantized once in
//! registers and reused by all `tile_m` rows, and each activation is reused by all
//! `TILE_N` columns. There is no shared memory and no barrier, so the kernel also runs
//! well on the CPU runtime, whose cube barriers need one OS thread per unit. Products
//! accumulate in f32.
//!
//! The grouped variant serves mixture-of-experts layers: the rows of `x` are sorted by
//! expert, the experts' weights are stacked (`[E·K·b/32, N]`, scales `[E·G, N]`), and a
//! host-built tile map gives each row tile its expert and row range, so one launch covers
//! every selected expert and each expert's weights are read once per row tile.

use cubecl::prelude::*;

/// Output columns per unit.
pub const TILE_N: u32 = 4;
/// Units per cube, laid out along N.
pub const CUBE_UNITS: u32 = 64;

/// How each group is centred (a comptime switch, so each variant compiles without
/// branches).
pub mod zero_mode {
    /// Symmetric: the midpoint 2^(b-1).
    pub const MIDPOINT: u32 = 0;
    /// Unsigned integer zero points `[G, N]`.
    pub const INTEGER: u32 = 1;
    /// Float offsets `[G, N]` added after scaling.
    pub const FLOAT: u32 = 2;
}

/// Entries per row tile in the grouped tile map: expert, first row, end row.
pub const TILE_MAP_STRIDE: u32 = 3;

/// `out[M, N] = x[M, K] · W[K, N]`. `group_size == 0` means each row's group is read from
/// `group_index` (act-order checkpoints whose groups are not contiguous); otherwise row
/// `k` is in group `k / group_size`, and `group_size` is a multiple of the values per
/// word. With `grouped`, row tile `y` multiplies rows `tiles[3y+1]..tiles[3y+2]` by expert
/// `tiles[3y]`'s weight, `groups` being the groups per expert. Unused `zeros` / `offsets`
/// / `group_index` / `tiles` are one-element placeholders.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn int_weight_gemm<F: Float>(
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
    #[comptime] tile_m: u32,
    #[comptime] grouped: bool,
    #[define(F)] _dtype: ElemType,
) {
    let per_word = comptime!(32 / bits);
    let mask = comptime!((1u32 << bits) - 1) as i32;

    let col0 = (CUBE_POS_X * CUBE_UNITS + UNIT_POS_X) * TILE_N;
    if col0 >= n {
        terminate!();
    }
    let tile = row_tile(tiles, CUBE_POS_Y, tile_m, m, grouped);
    let row0 = tile.first;
    let row_end = tile.end;
    // Offsets of this tile's expert in the stacked buffers.
    let word_base = tile.expert * (k / per_word) * n;
    let group_base = tile.expert * groups * n;

    let mut acc = Array::<f32>::new(comptime!((tile_m * TILE_N) as usize));
    #[unroll]
    for i in 0..tile_m * TILE_N {
        acc[i as usize] = 0.0f32;
    }
    // Rows past M read row M-1 (always valid) and are never written.
    let mut x_row = Array::<u32>::new(comptime!(tile_m as usize));
    #[unroll]
    for r in 0..tile_m {
        x_row[r as usize] = min(row0 + r, row_end - 1) * k;
    }

    let mut words = Array::<i32>::new(comptime!(TILE_N as usize));
    let mut scale = Array::<f32>::new(comptime!(TILE_N as usize));
    let mut zero = Array::<f32>::new(comptime!(TILE_N as usize));
    let mut offset = Array::<f32>::new(comptime!(TILE_N as usize));
    let mut xs = Array::<f32>::new(comptime!(tile_m as usize));

    let word_rows = k / per_word;
    for w in 0..word_rows {
        let k0 = w * per_word;
        #[unroll]
        for j in 0..TILE_N {
            let col = min(col0 + j, n - 1);
            words[j as usize] = packed[(word_base + w * n + col) as usize];
        }
        if comptime!(group_size > 0) {
            // Every value of this word row shares one group.
            let group = k0 / group_size;
            load_groups(scales, zeros, offsets, group_base + group * n, col0, n, &mut scale, &mut zero, &mut offset, bits, zeros_mode);
        }
        #[unroll]
        for i in 0..per_word {
            let kk = k0 + i;
            if comptime!(group_size == 0) {
                let group = group_index[kk as usize] as u32;
                load_groups(scales, zeros, offsets, group_base + group * n, col0, n, &mut scale, &mut zero, &mut offset, bits, zeros_mode);
            }
            #[unroll]
            for r in 0..tile_m {
                xs[r as usize] = f32::cast_from(x[(x_row[r as usize] + kk) as usize]);
            }
            #[unroll]
            for j in 0..TILE_N {
                let q = f32::cast_from((words[j as usize] >> (i * bits) as i32) & mask);
                let weight = (q - zero[j as usize]) * scale[j as usize] + offset[j as usize];
                #[unroll]
                for r in 0..tile_m {
                    let at = (r * TILE_N + j) as usize;
                    acc[at] += xs[r as usize] * weight;
                }
            }
        }
    }

    #[unroll]
    for r in 0..tile_m {
        let row = row0 + r;
        #[unroll]
        for j in 0..TILE_N {
            let col = col0 + j;
            if row < row_end && col < n {
                out[(row * n + col) as usize] = F::cast_from(acc[(r * TILE_N + j) as usize]);
            }
        }
    }
}

/// A row tile of a launch: the expert whose weights it multiplies, its first row and its
/// end row.
#[derive(CubeType)]
pub struct RowTile {
    pub expert: u32,
    pub first: u32,
    pub end: u32,
}

/// Row tile `tile`: read from the grouped tile map, or else the tile's `rows_per_tile`
/// rows of the one weight (expert 0), ending at `m`.
#[cube]
pub fn row_tile(tiles: &[u32], tile: u32, rows_per_tile: u32, m: u32, #[comptime] grouped: bool) -> RowTile {
    let mut expert = 0u32;
    let mut first = tile * rows_per_tile;
    let mut end = m;
    if comptime!(grouped) {
        let entry = tile * TILE_MAP_STRIDE;
        expert = tiles[entry as usize];
        first = tiles[(entry + 1) as usize];
        end = tiles[(entry + 2) as usize];
    }
    RowTile { expert, first, end }
}

/// Loads the scale, zero point and float offset of each of the unit's `TILE_N` columns
/// for the group whose row starts at `row_start` (columns past `n` repeat the last one).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_groups(
    scales: &[f32],
    zeros: &[i32],
    offsets: &[f32],
    row_start: u32,
    col0: u32,
    n: u32,
    scale: &mut Array<f32>,
    zero: &mut Array<f32>,
    offset: &mut Array<f32>,
    #[comptime] bits: u32,
    #[comptime] zeros_mode: u32,
) {
    let midpoint = comptime!((1u32 << (bits - 1)) as f32);
    #[unroll]
    for j in 0..TILE_N {
        let at = (row_start + min(col0 + j, n - 1)) as usize;
        scale[j as usize] = scales[at];
        if comptime!(zeros_mode == zero_mode::INTEGER) {
            zero[j as usize] = f32::cast_from(zeros[at]);
        } else {
            zero[j as usize] = midpoint;
        }
        if comptime!(zeros_mode == zero_mode::FLOAT) {
            offset[j as usize] = offsets[at];
        } else {
            offset[j as usize] = 0.0f32;
        }
    }
}
