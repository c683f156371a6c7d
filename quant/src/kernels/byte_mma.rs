//! Tensor-core GEMM on 8-bit operands: int8 × int8 with i32 accumulation (W8A8 int8) and
//! e4m3 × e4m3 with f32 accumulation (W8A8-FP8), through the warp-level `mma.m16n8k32`
//! instruction, `out[M, N] = Σ_chunks (a[M, K_c] · w[N, K_c]ᵀ) · a_scale · w_scale`.
//!
//! Both operands stay in the byte layout the rest of the crate uses: `[rows, K/4]` i32
//! words, four bytes along K. No repack is needed because a dot product does not care in
//! which order it visits K, only that A and B visit it in the same order. Per 64-byte K
//! block, lane `(g, t)` (`g = lane / 4`, `t = lane % 4`) loads bytes `16t .. 16t + 16` of
//! its rows with one 16-byte load per row, and feeds words `2s` and `2s + 1` of that load
//! to K step `s` (0 or 1) as the register pair the instruction documents for columns
//! `4t ..` and `16 + 4t ..`. A and B apply the same map, so each K step covers 32
//! distinct bytes and the block covers all 64.
//!
//! Scales apply per chunk of `chunk_blocks` K blocks (the whole row for per-tensor and
//! per-token × per-channel scales; 128 columns for DeepSeek-style 128×128 weight blocks
//! and 1×128 activation groups), through the strides of the portable FP8 kernel: each
//! accumulator is scaled by `a_scales[row · a_scale_row + chunk · a_scale_chunk]` and
//! `w_scales[(column / w_scale_col_div) · w_scale_row + chunk · w_scale_chunk]`, once at
//! the end when scales do not change along K, or at each chunk's end into f32 totals
//! (`chunked`), which hold as many registers again.
//!
//! A warp owns `16 · m_tiles` rows and `8 · n_subtiles` columns; a cube holds
//! `warps_m × warps_n` warps; the grid's second axis splits K. With one split the kernel
//! writes the output dtype directly; otherwise f32 partial products that the caller sums.
//! With `tensor_cores` off, [`emulated_products`] renders the instruction in shared memory so
//! the fragment indexing is tested on runtimes without tensor cores.
//!
//! Operands reach the lanes through a copy ring in shared memory, `stages` K blocks deep:
//! every unit copies a few 16-byte pieces of a block (`cp.async` on CUDA, so the copy of
//! block `kb + stages − 1` runs while block `kb` is multiplied; plain loads and stores
//! elsewhere), and the warps read their fragments from the stage. With
//! `staged_activations` off, only the weights go through it and each lane loads its rows
//! of A straight from global memory: the decode shapes, where every weight byte is used
//! by a handful of rows and what matters is how much of the weight stream is in flight.
//! With it on, the cube stages A and B, so each weight and activation byte is fetched
//! from global memory once per cube instead of once per warp. With `stages = 0` both load
//! directly. Lanes read the same 16 bytes per row as in the direct form, from rows 64
//! bytes apart: a warp's 32 reads cover 512 contiguous bytes, free of bank conflicts.

use cubecl::prelude::*;

use super::activation_quant::{grid, quantize_value};
use super::copy_pipeline::{commit_copies, stage_block, wait_for_copies};
use super::e4m3::decode_e4m3;
use super::w8a8_gemm::signed_byte;

/// Lanes per warp (the `mma` instruction's plane).
pub const LANES: u32 = 32;
/// K columns (bytes) per lane load: a 16-byte load for each of the four lanes of a group.
pub const K_BLOCK: u32 = 64;
/// Output columns per `mma` subtile.
pub const N_SUBTILE: u32 = 8;
/// Output rows per `mma`.
pub const M_TILE: u32 = 16;
/// 16-byte pieces per row of a K block.
const LOADS_PER_BLOCK: u32 = 4;
/// i32 words per piece (`copy_async` counts scalars, not vectors).
const WORDS_PER_PIECE: u32 = 4;
/// i32 words per row (of A) or column (of B) of one K step of 32 bytes.
const WORDS_PER_STEP_ROW: u32 = 8;

type Quad<E> = Vector<E, Const<4>>;
type Octet<E> = Vector<E, Const<8>>;

/// How a launch is tiled (all comptime): per warp `m_tiles` row tiles of 16 and
/// `n_subtiles` column subtiles of 8; `warps_m × warps_n` warps per cube; `stages` K
/// blocks of weights in flight through shared memory (at least 2), or 0 for direct loads;
/// with `staged_activations`, the activations go through the same stages.
#[derive(CubeType, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WarpTiling {
    pub m_tiles: u32,
    pub n_subtiles: u32,
    pub warps_m: u32,
    pub warps_n: u32,
    pub stages: u32,
    pub staged_activations: bool,
}

impl WarpTiling {
    /// Output rows per cube.
    pub fn cube_rows(&self) -> u32 {
        M_TILE * self.m_tiles * self.warps_m
    }

    /// Output columns per cube.
    pub fn cube_columns(&self) -> u32 {
        N_SUBTILE * self.n_subtiles * self.warps_n
    }

    pub fn warps(&self) -> u32 {
        self.warps_m * self.warps_n
    }

    /// Rows of A a stage holds: the cube's when the activations are staged, else none.
    pub fn staged_rows(&self) -> u32 {
        if self.staged_activations { self.cube_rows() } else { 0 }
    }
}

/// See the module documentation. `a_codes` is `[M, K/16]` and `w_codes` `[N, K/16]`
/// groups of four words (K a multiple of 64); `Acc` is i32 for int8 and f32 for e4m3.
/// Cube `(x, y, z)` covers column blocks `x`, K blocks `y·blocks_per_split ..` and row
/// blocks `z` of the cube's size; units are `(lane, warp)`. With `direct`, `out` `[M, N]`
/// is written and `partials` is a placeholder; otherwise `partials` `[splits·M, N]`.
/// `chunked` says scales change along K (`chunk_blocks` < K/64), which keeps a second
/// set of f32 totals beside the instruction's accumulators. With `quantize` (activations
/// loaded directly only), A comes as float activations `x` `[M, K/8]` (eight per vector) and each
/// lane quantizes the 16 it loads with the one scale `a_scales[0]`, code for code as the
/// activation-quantization kernel would; `a_codes` is then a placeholder.
#[cube(launch_unchecked)]
// The chunk test stays inside the comptime switch so unchunked kernels never emit it.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn byte_mma_gemm<F: Float, Acc: Numeric>(
    a_codes: &[Quad<i32>],
    x: &[Octet<F>],
    a_scales: &[f32],
    w_codes: &[Quad<i32>],
    w_scales: &[f32],
    partials: &mut [f32],
    out: &mut [F],
    m: u32,
    k: u32,
    n: u32,
    chunk_blocks: u32,
    a_scale_row: u32,
    a_scale_chunk: u32,
    w_scale_col_div: u32,
    w_scale_row: u32,
    w_scale_chunk: u32,
    blocks_per_split: u32,
    #[comptime] fp8: bool,
    #[comptime] tiling: WarpTiling,
    #[comptime] chunked: bool,
    #[comptime] quantize: bool,
    #[comptime] tensor_cores: bool,
    #[comptime] direct: bool,
    #[define(F, Acc)] _types: [ElemType; 2],
) {
    let m_tiles = comptime!(tiling.m_tiles);
    let n_subtiles = comptime!(tiling.n_subtiles);
    let stages = comptime!(tiling.stages);
    let lane = UNIT_POS_X;
    let group_id = lane / 4;
    let thread_in_group = lane % 4;
    let warp_m = UNIT_POS_Y / comptime!(tiling.warps_n);
    let warp_n = UNIT_POS_Y % comptime!(tiling.warps_n);
    let cube_row0 = CUBE_POS_Z * comptime!(tiling.cube_rows());
    let cube_col0 = CUBE_POS_X * comptime!(tiling.cube_columns());
    // Within the cube (the stage's row and column numbering).
    let warp_row0 = warp_m * comptime!(M_TILE * m_tiles);
    let warp_col0 = warp_n * comptime!(N_SUBTILE * n_subtiles);
    let k_blocks = k / K_BLOCK;
    let kb_begin = CUBE_POS_Y * blocks_per_split;
    let kb_end = min(kb_begin + blocks_per_split, k_blocks);
    let loads_per_row = k / (K_BLOCK / LOADS_PER_BLOCK);
    // With `quantize`, a lane's 16 activations per block are two vectors of eight.
    let octets_per_row = k / 8;
    let static_scale = if comptime!(quantize) { a_scales[0] } else { f32::new(0.0) };

    // Where each lane's rows (two per row tile) and columns (one per subtile) start: in
    // global memory, or in the stage. Rows and columns past the edge read the last one
    // and are never stored.
    let mut a_at = Array::<u32>::new(comptime!((m_tiles * 2) as usize));
    #[unroll]
    for i in 0..m_tiles * 2 {
        let row = warp_row0 + i * 8 + group_id;
        a_at[i as usize] = if comptime!(quantize) {
            min(cube_row0 + row, m - 1) * octets_per_row + 2 * thread_in_group
        } else if comptime!(!tiling.staged_activations) {
            min(cube_row0 + row, m - 1) * loads_per_row + thread_in_group
        } else {
            row * LOADS_PER_BLOCK + thread_in_group
        };
    }
    let mut w_at = Array::<u32>::new(comptime!(n_subtiles as usize));
    #[unroll]
    for j in 0..n_subtiles {
        let col = warp_col0 + j * N_SUBTILE + group_id;
        w_at[j as usize] = if comptime!(stages == 0) {
            min(cube_col0 + col, n - 1) * loads_per_row + thread_in_group
        } else {
            comptime!(tiling.staged_rows() * LOADS_PER_BLOCK) + col * LOADS_PER_BLOCK + thread_in_group
        };
    }

    // Per (row tile, subtile): the instruction's four accumulators for the current chunk,
    // and (chunked scales) the scaled f32 totals.
    let fragments = comptime!((m_tiles * n_subtiles * 4) as usize);
    let mut acc = Array::<Acc>::new(fragments);
    let mut total = Array::<f32>::new(comptime!(if chunked { fragments } else { 1usize }));
    #[unroll]
    for i in 0..m_tiles * n_subtiles * 4 {
        acc[i as usize] = Acc::from_int(0);
        if comptime!(chunked) {
            total[i as usize] = 0.0f32;
        }
    }

    let warp_origin = (cube_row0 + warp_row0, cube_col0 + warp_col0);
    let mut row_scales = Array::<f32>::new(comptime!((m_tiles * 2) as usize));
    let mut col_scales = Array::<f32>::new(comptime!((n_subtiles * 2) as usize));
    let mut rows = Array::<Quad<i32>>::new(comptime!((m_tiles * 2) as usize));
    let mut cols = Array::<Quad<i32>>::new(comptime!(n_subtiles as usize));
    let mut scratch = Shared::<[i32]>::new_slice(comptime!(if tensor_cores { 1usize } else { (emulation_words(m_tiles, n_subtiles) * tiling.warps()) as usize }));
    let stage_len = comptime!((tiling.staged_rows() + tiling.cube_columns()) * LOADS_PER_BLOCK);
    let mut stage = Shared::<[Quad<i32>]>::new_slice(comptime!(if stages == 0 { 1usize } else { (stage_len * stages) as usize }));

    if comptime!(stages > 0) {
        #[unroll]
        for s in 0..stages - 1 {
            if kb_begin + s < kb_end {
                fill_stage(a_codes, w_codes, &mut stage, kb_begin + s, s * stage_len, cube_row0, cube_col0, m, n, loads_per_row, tiling, tensor_cores);
            }
            commit_copies(tensor_cores);
        }
    }

    for kb in kb_begin..kb_end {
        if comptime!(stages > 0) {
            // Block kb has landed and every unit is done with block kb − 1, whose slot
            // the copy of block kb + stages − 1 now takes.
            wait_for_copies(tensor_cores, stages);
            sync_cube();
            let ahead = kb + stages - 1;
            if ahead < kb_end {
                fill_stage(a_codes, w_codes, &mut stage, ahead, ((ahead - kb_begin) % stages) * stage_len, cube_row0, cube_col0, m, n, loads_per_row, tiling, tensor_cores);
            }
            commit_copies(tensor_cores);
        }
        let slot = if comptime!(stages > 0) { ((kb - kb_begin) % comptime!(stages.max(1))) * stage_len } else { u32::new(0) };
        let load = kb * LOADS_PER_BLOCK;
        #[unroll]
        for j in 0..n_subtiles {
            cols[j as usize] = if comptime!(stages > 0) { stage[(slot + w_at[j as usize]) as usize] } else { w_codes[(w_at[j as usize] + load) as usize] };
        }
        #[unroll]
        for i in 0..m_tiles * 2 {
            rows[i as usize] = if comptime!(quantize) {
                quantize_piece::<F>(x, a_at[i as usize] + kb * (K_BLOCK / 8), static_scale, fp8)
            } else if comptime!(tiling.staged_activations) {
                stage[(slot + a_at[i as usize]) as usize]
            } else {
                a_codes[(a_at[i as usize] + load) as usize]
            };
        }
        k_step::<Acc>(&rows, &cols, &mut acc, &mut scratch, 0usize, m_tiles, n_subtiles, fp8, tensor_cores);
        k_step::<Acc>(&rows, &cols, &mut acc, &mut scratch, 1usize, m_tiles, n_subtiles, fp8, tensor_cores);

        if comptime!(chunked) {
            if (kb + 1) % chunk_blocks == 0 || kb + 1 == kb_end {
                load_scales(a_scales, w_scales, &mut row_scales, &mut col_scales, kb / chunk_blocks, warp_origin, m, n, a_scale_row, a_scale_chunk, w_scale_col_div, w_scale_row, w_scale_chunk, m_tiles, n_subtiles);
                #[unroll]
                for at in 0..m_tiles * n_subtiles * 4 {
                    total[at as usize] += scaled(&acc, &row_scales, &col_scales, at, n_subtiles);
                    acc[at as usize] = Acc::from_int(0);
                }
            }
        }
    }

    if comptime!(!chunked) {
        load_scales(a_scales, w_scales, &mut row_scales, &mut col_scales, 0, warp_origin, m, n, a_scale_row, a_scale_chunk, w_scale_col_div, w_scale_row, w_scale_chunk, m_tiles, n_subtiles);
    }
    let out_row0 = CUBE_POS_Y * m;
    #[unroll]
    for at in 0..m_tiles * n_subtiles * 4 {
        let (row, col) = fragment_position(at, warp_origin, n_subtiles);
        if row < m && col < n {
            let value = if comptime!(chunked) { total[at as usize] } else { scaled(&acc, &row_scales, &col_scales, at, n_subtiles) };
            if comptime!(direct) {
                out[(row * n + col) as usize] = F::cast_from(value);
            } else {
                partials[((out_row0 + row) * n + col) as usize] = value;
            }
        }
    }
}

/// The scales of chunk `chunk` for this lane's rows (two per row tile) and columns (two
/// per subtile) of the warp tile at `origin`; rows and columns past the edge take the
/// last one's.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_scales(
    a_scales: &[f32],
    w_scales: &[f32],
    row_scales: &mut Array<f32>,
    col_scales: &mut Array<f32>,
    chunk: u32,
    origin: (u32, u32),
    m: u32,
    n: u32,
    a_scale_row: u32,
    a_scale_chunk: u32,
    w_scale_col_div: u32,
    w_scale_row: u32,
    w_scale_chunk: u32,
    #[comptime] m_tiles: u32,
    #[comptime] n_subtiles: u32,
) {
    let (row0, col0) = origin;
    #[unroll]
    for i in 0..m_tiles * 2 {
        let row = min(lane_row(row0, i), m - 1);
        row_scales[i as usize] = a_scales[(row * a_scale_row + chunk * a_scale_chunk) as usize];
    }
    #[unroll]
    for i in 0..n_subtiles * 2 {
        let col = min(lane_col(col0, i), n - 1);
        col_scales[i as usize] = w_scales[((col / w_scale_col_div) * w_scale_row + chunk * w_scale_chunk) as usize];
    }
}

/// Accumulator `at` in f32 times its row's and column's scales.
#[cube]
fn scaled<Acc: Numeric>(acc: &Array<Acc>, row_scales: &Array<f32>, col_scales: &Array<f32>, at: u32, #[comptime] n_subtiles: u32) -> f32 {
    let (row, col) = lane_slot(at, n_subtiles);
    f32::cast_from(acc[at as usize]) * row_scales[row as usize] * col_scales[col as usize]
}

/// The output row and column of accumulator `at` of this lane, for a warp whose tile
/// starts at `origin`.
#[cube]
fn fragment_position(at: u32, origin: (u32, u32), #[comptime] n_subtiles: u32) -> (u32, u32) {
    let (row0, col0) = origin;
    let (row, col) = lane_slot(at, n_subtiles);
    (lane_row(row0, row), lane_col(col0, col))
}

/// Which of this lane's rows (two per row tile) and columns (two per subtile) accumulator
/// `at` (`((row tile · n_subtiles + subtile) · 4 + register`) is in: register `i` holds row
/// `g + 8·(i / 2)`, column `2t + i % 2` of its 16×8 product.
#[cube]
fn lane_slot(at: u32, #[comptime] n_subtiles: u32) -> (u32, u32) {
    let tile = at / 4;
    let register = at % 4;
    ((tile / n_subtiles) * 2 + register / 2, (tile % n_subtiles) * 2 + register % 2)
}

/// The output row of this lane's row `i` (two per row tile) in a warp tile from `row0`.
#[cube]
fn lane_row(row0: u32, i: u32) -> u32 {
    row0 + i * 8 + UNIT_POS_X / 4
}

/// The output column of this lane's column `i` (two per subtile) in a warp tile from `col0`.
#[cube]
fn lane_col(col0: u32, i: u32) -> u32 {
    col0 + (i / 2) * N_SUBTILE + (UNIT_POS_X % 4) * 2 + i % 2
}

/// Copies K block `kb` of the cube's rows of A (when the activations are staged) and
/// columns of B (each clamped to the last) into the stage at `slot`, rows first, then
/// columns, four 16-byte pieces each ([`stage_block`]).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fill_stage(
    a_codes: &[Quad<i32>],
    w_codes: &[Quad<i32>],
    stage: &mut Shared<[Quad<i32>]>,
    kb: u32,
    slot: u32,
    cube_row0: u32,
    cube_col0: u32,
    m: u32,
    n: u32,
    loads_per_row: u32,
    #[comptime] tiling: WarpTiling,
    #[comptime] tensor_cores: bool,
) {
    let rows = comptime!(tiling.cube_rows());
    let units = comptime!(LANES * tiling.warps());
    if comptime!(tiling.staged_activations) {
        stage_block(a_codes, stage, kb, slot, cube_row0, m - 1, loads_per_row, rows, LOADS_PER_BLOCK, LOADS_PER_BLOCK, WORDS_PER_PIECE, units, tensor_cores);
    }
    let columns_at = slot + comptime!(tiling.staged_rows() * LOADS_PER_BLOCK);
    stage_block(w_codes, stage, kb, columns_at, cube_col0, n - 1, loads_per_row, tiling.cube_columns(), LOADS_PER_BLOCK, LOADS_PER_BLOCK, WORDS_PER_PIECE, units, tensor_cores);
}

/// The 16 activations `x[at]`, `x[at + 1]` (eight each) quantized with `scale` to int8 or
/// e4m3 bytes, four to a word, first value in the low byte: what the activation
/// quantization kernel would have written for them.
#[cube]
fn quantize_piece<F: Float>(x: &[Octet<F>], at: u32, scale: f32, #[comptime] fp8: bool) -> Quad<i32> {
    let target = comptime!(if fp8 { grid::E4M3 } else { grid::INT8 });
    let mut piece = Quad::<i32>::empty();
    #[unroll]
    for half in 0..2usize {
        let values = x[at as usize + half];
        #[unroll]
        for word in 0..2usize {
            let mut packed = 0u32;
            #[unroll]
            for byte in 0..4usize {
                packed |= quantize_value(f32::cast_from(values.extract(comptime!(word * 4 + byte))), scale, target) << comptime!((byte * 8) as u32);
            }
            piece.insert(comptime!(half * 2 + word), i32::reinterpret(packed));
        }
    }
    piece
}

/// K step `step` (0 or 1) of a 64-byte block: every (row tile, subtile) product, from
/// words `2·step` and `2·step + 1` of each lane's loads.
#[cube]
#[allow(clippy::too_many_arguments)]
fn k_step<Acc: Numeric>(
    rows: &Array<Quad<i32>>,
    cols: &Array<Quad<i32>>,
    acc: &mut Array<Acc>,
    scratch: &mut Shared<[i32]>,
    #[comptime] step: usize,
    #[comptime] m_tiles: u32,
    #[comptime] n_subtiles: u32,
    #[comptime] fp8: bool,
    #[comptime] tensor_cores: bool,
) {
    let mut fragment = Array::<i32>::new(6usize);
    if comptime!(tensor_cores) {
        #[unroll]
        for j in 0..n_subtiles {
            b_registers(cols, &mut fragment, j, step);
            #[unroll]
            for mt in 0..m_tiles {
                a_registers(rows, &mut fragment, mt, step);
                tensor_core_mma::<Acc>(&fragment, acc, (mt * n_subtiles + j) * 4, fp8);
            }
        }
    } else {
        // The same registers, through the instruction's layout in shared memory: every
        // product of the step is written before one barrier and summed before another.
        #[unroll]
        for j in 0..n_subtiles {
            b_registers(cols, &mut fragment, j, step);
            scatter_b(&fragment, scratch, j, m_tiles, n_subtiles);
        }
        #[unroll]
        for mt in 0..m_tiles {
            a_registers(rows, &mut fragment, mt, step);
            scatter_a(&fragment, scratch, mt, m_tiles, n_subtiles);
        }
        sync_cube();
        #[unroll]
        for mt in 0..m_tiles {
            #[unroll]
            for j in 0..n_subtiles {
                emulated_products::<Acc>(acc, scratch, mt, j, m_tiles, n_subtiles, fp8);
            }
        }
        sync_cube();
    }
}

/// A registers `fragment[0..4]` of row tile `mt` for K step `step`: per the instruction,
/// the tile's top and bottom rows alternate, and the first two registers are the step's
/// first 16 columns.
#[cube]
fn a_registers(rows: &Array<Quad<i32>>, fragment: &mut Array<i32>, mt: u32, #[comptime] step: usize) {
    let top = rows[(mt * 2) as usize];
    let bottom = rows[(mt * 2 + 1) as usize];
    fragment[0usize] = top.extract(comptime!(2 * step));
    fragment[1usize] = bottom.extract(comptime!(2 * step));
    fragment[2usize] = top.extract(comptime!(2 * step + 1));
    fragment[3usize] = bottom.extract(comptime!(2 * step + 1));
}

/// B registers `fragment[4..6]` of subtile `j` for K step `step`.
#[cube]
fn b_registers(cols: &Array<Quad<i32>>, fragment: &mut Array<i32>, j: u32, #[comptime] step: usize) {
    let col = cols[j as usize];
    fragment[4usize] = col.extract(comptime!(2 * step));
    fragment[5usize] = col.extract(comptime!(2 * step + 1));
}

/// `acc[at..at + 4] += a · b` for one 16×8×32 product, with A registers `fragment[0..4]`
/// and B registers `fragment[4..6]`: `mma.sync` with e4m3 operands and f32
/// accumulators, or s8 operands and s32 accumulators (sm_89+ for e4m3, sm_80+ for s8).
/// Written as PTX because CubeCL's matrix API adds the `.kind::f8f6f4` qualifier to 8-bit
/// float types, which only sm_120 accepts. The registers are passed one by one, as values
/// (a vector built in place would be passed by address).
#[cube]
fn tensor_core_mma<Acc: Numeric>(fragment: &Array<i32>, acc: &mut Array<Acc>, at: u32, #[comptime] fp8: bool) {
    let operand = comptime!(if fp8 { "e4m3" } else { "s8" });
    let accumulator = comptime!(if fp8 { "f32" } else { "s32" });
    let (a0, a1, a2, a3, b0, b1) = (fragment[0usize], fragment[1usize], fragment[2usize], fragment[3usize], fragment[4usize], fragment[5usize]);
    let (c0, c1, c2, c3) = (acc[at as usize], acc[(at + 1) as usize], acc[(at + 2) as usize], acc[(at + 3) as usize]);
    let d: Quad<Acc>;
    gpu_asm!(
        "mma.sync.aligned.m16n8k32.row.col.{accumulator}.{operand}.{operand}.{accumulator} {d}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};",
        a0 = in(_) a0, a1 = in(_) a1, a2 = in(_) a2, a3 = in(_) a3,
        b0 = in(_) b0, b1 = in(_) b1,
        c0 = in(_) c0, c1 = in(_) c1, c2 = in(_) c2, c3 = in(_) c3,
        d = out(_) d,
        options(nomem),
    );
    acc[at as usize] = d.extract(0usize);
    acc[(at + 1) as usize] = d.extract(1usize);
    acc[(at + 2) as usize] = d.extract(2usize);
    acc[(at + 3) as usize] = d.extract(3usize);
}

// The emulated instruction. Each warp's scratch holds one K step of its operands as
// i32 words in natural order, as the instruction sees them: per row tile a 16×32-byte A
// tile (8 words a row), then per subtile a 32×8-byte B tile (8 words a column). The
// PTX fragment layout (lane `l`, group `g = l / 4`, `t = l % 4`, bytes little end
// first) says where each register goes: A register `i` holds row `g + 8·(i % 2)`,
// columns `4t + 16·(i / 2)` to three on; B register `i` holds rows `4t + 16i` to three on
// of column `g`; accumulator `i` holds row `g + 8·(i / 2)`, column `2t + i % 2`.

/// Words of scratch per warp for one K step.
fn emulation_words(m_tiles: u32, n_subtiles: u32) -> u32 {
    (m_tiles * M_TILE + n_subtiles * N_SUBTILE) * WORDS_PER_STEP_ROW
}

/// Where this warp's scratch starts, and its B tiles within it.
#[cube]
fn emulation_base(#[comptime] m_tiles: u32, #[comptime] n_subtiles: u32) -> (u32, u32) {
    let a_base = UNIT_POS_Y * comptime!(emulation_words(m_tiles, n_subtiles));
    (a_base, a_base + comptime!(m_tiles * M_TILE * WORDS_PER_STEP_ROW))
}

/// Writes A registers `fragment[0..4]` of row tile `mt` where the layout puts them.
#[cube]
fn scatter_a(fragment: &Array<i32>, scratch: &mut Shared<[i32]>, mt: u32, #[comptime] m_tiles: u32, #[comptime] n_subtiles: u32) {
    let (a_base, _) = emulation_base(m_tiles, n_subtiles);
    let g = UNIT_POS_X / 4;
    let t = UNIT_POS_X % 4;
    #[unroll]
    for i in 0..4u32 {
        let row = mt * M_TILE + g + 8 * (i % 2);
        scratch[(a_base + row * WORDS_PER_STEP_ROW + t + 4 * (i / 2)) as usize] = fragment[i as usize];
    }
}

/// Writes B registers `fragment[4..6]` of subtile `j` where the layout puts them.
#[cube]
fn scatter_b(fragment: &Array<i32>, scratch: &mut Shared<[i32]>, j: u32, #[comptime] m_tiles: u32, #[comptime] n_subtiles: u32) {
    let (_, b_base) = emulation_base(m_tiles, n_subtiles);
    let g = UNIT_POS_X / 4;
    let t = UNIT_POS_X % 4;
    #[unroll]
    for i in 0..2u32 {
        let col = j * N_SUBTILE + g;
        scratch[(b_base + col * WORDS_PER_STEP_ROW + t + 4 * i) as usize] = fragment[(4 + i) as usize];
    }
}

/// `acc[at..at + 4] += a · b` for row tile `mt` and subtile `j`, from the scattered
/// operands: the four accumulators this lane holds, 32 bytes of K each.
#[cube]
fn emulated_products<Acc: Numeric>(
    acc: &mut Array<Acc>,
    scratch: &mut Shared<[i32]>,
    mt: u32,
    j: u32,
    #[comptime] m_tiles: u32,
    #[comptime] n_subtiles: u32,
    #[comptime] fp8: bool,
) {
    let (a_base, b_base) = emulation_base(m_tiles, n_subtiles);
    let g = UNIT_POS_X / 4;
    let t = UNIT_POS_X % 4;
    let at = (mt * n_subtiles + j) * 4;
    #[unroll]
    for i in 0..4u32 {
        let row = a_base + (mt * M_TILE + g + 8 * (i / 2)) * WORDS_PER_STEP_ROW;
        let col = b_base + (j * N_SUBTILE + 2 * t + i % 2) * WORDS_PER_STEP_ROW;
        let mut sum = acc[(at + i) as usize];
        for word in 0..WORDS_PER_STEP_ROW {
            let lhs = scratch[(row + word) as usize];
            let rhs = scratch[(col + word) as usize];
            #[unroll]
            for byte in 0..4u32 {
                sum += Acc::cast_from(byte_value(lhs, byte, fp8)) * Acc::cast_from(byte_value(rhs, byte, fp8));
            }
        }
        acc[(at + i) as usize] = sum;
    }
}

/// Byte `byte` of `word` as a value: e4m3 or signed int8 (exact in f32 either way).
#[cube]
fn byte_value(word: i32, byte: u32, #[comptime] fp8: bool) -> f32 {
    if comptime!(fp8) {
        decode_e4m3(u32::reinterpret(word) >> (byte * 8))
    } else {
        f32::cast_from(signed_byte(word, byte))
    }
}
