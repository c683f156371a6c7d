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
//! and 1×128 activation groups), through the strides of the portable FP8 kernel: the
//! instruction's accumulators are folded into f32 totals at each chunk's end, scaled by
//! `a_scales[row · a_scale_row + chunk · a_scale_chunk]` and
//! `w_scales[(column / w_scale_col_div) · w_scale_row + chunk · w_scale_chunk]`.
//!
//! A warp owns 16 output columns (two 8-column subtiles) and `16 · m_tiles` rows; a cube
//! holds `warps` warps side by side along N; the grid's second axis splits K. With one
//! split the kernel writes the output dtype directly; otherwise f32 partial products that
//! the caller sums. With `tensor_cores` off, [`emulated_mma`] renders the instruction in
//! shared memory so the fragment indexing is tested on runtimes without tensor cores.

use cubecl::prelude::*;

use super::e4m3::decode_e4m3;
use super::w8a8_gemm::signed_byte;

/// Lanes per warp (the `mma` instruction's plane).
pub const LANES: u32 = 32;
/// K columns (bytes) per lane load: a 16-byte load for each of the four lanes of a group.
pub const K_BLOCK: u32 = 64;
/// Output columns per warp (two `mma` N subtiles of 8).
pub const N_BLOCK: u32 = 16;
/// Output rows per `mma`.
pub const M_TILE: u32 = 16;
/// Words (of four bytes) per 16-byte load.
const WORDS_PER_LOAD: u32 = 4;
/// f32 scratch per warp for the emulated instruction: a 16×32 A tile and a 32×8 B tile.
const A_SCRATCH: u32 = 16 * 32;
const EMULATION_SCRATCH: u32 = A_SCRATCH + 32 * 8;

type Quad<E> = Vector<E, Const<4>>;

/// See the module documentation. `a_codes` is `[M, K/16]` and `w_codes` `[N, K/16]`
/// groups of four words (K a multiple of 64); `Acc` is i32 for int8 and f32 for e4m3.
/// Cube `(x, y, z)` covers column blocks `x·warps ..`, K blocks `y·blocks_per_split ..`
/// and rows `z·16·m_tiles ..`; units are `(lane, warp)`. With `direct`, `out` `[M, N]` is
/// written and `partials` is a placeholder; otherwise `partials` `[splits·M, N]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn byte_mma_gemm<F: Float, Acc: Numeric>(
    a_codes: &[Quad<i32>],
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
    #[comptime] m_tiles: u32,
    #[comptime] warps: u32,
    #[comptime] tensor_cores: bool,
    #[comptime] direct: bool,
    #[define(F, Acc)] _types: [ElemType; 2],
) {
    let lane = UNIT_POS_X;
    let group_id = lane / 4;
    let thread_in_group = lane % 4;
    let n_blocks = n.div_ceil(N_BLOCK);
    // Warps past the last column block compute on it and store nothing: the emulated
    // instruction needs every unit of the cube at its barriers.
    let block_n = CUBE_POS_X * warps + UNIT_POS_Y;
    let nb = min(block_n, n_blocks - 1);
    let k_blocks = k / K_BLOCK;
    let kb_begin = CUBE_POS_Y * blocks_per_split;
    let kb_end = min(kb_begin + blocks_per_split, k_blocks);
    let row0 = CUBE_POS_Z * comptime!(M_TILE * m_tiles);
    let row_end = min(row0 + comptime!(M_TILE * m_tiles), m);
    let loads_per_row = k / (K_BLOCK / WORDS_PER_LOAD);

    // Each lane's rows (two per row tile) and columns (two subtiles); rows and columns
    // past the edge read the last one and are never stored.
    let mut a_at = Array::<u32>::new(comptime!((m_tiles * 2) as usize));
    #[unroll]
    for i in 0..m_tiles * 2 {
        a_at[i as usize] = min(row0 + i * 8 + group_id, row_end - 1) * loads_per_row + thread_in_group;
    }
    let mut w_at = Array::<u32>::new(2usize);
    #[unroll]
    for j in 0..2u32 {
        w_at[j as usize] = min(nb * N_BLOCK + j * 8 + group_id, n - 1) * loads_per_row + thread_in_group;
    }

    // Per (row tile, subtile): the instruction's four accumulators for the current chunk,
    // and the scaled f32 totals.
    let fragments = comptime!((m_tiles * 2 * 4) as usize);
    let mut acc = Array::<Acc>::new(fragments);
    let mut total = Array::<f32>::new(fragments);
    #[unroll]
    for i in 0..m_tiles * 8 {
        acc[i as usize] = Acc::from_int(0);
        total[i as usize] = 0.0f32;
    }

    let mut rows = Array::<Quad<i32>>::new(comptime!((m_tiles * 2) as usize));
    let mut cols = Array::<Quad<i32>>::new(2usize);
    let mut scratch = Shared::<[f32]>::new_slice(comptime!(if tensor_cores { 1usize } else { (EMULATION_SCRATCH * warps) as usize }));

    for kb in kb_begin..kb_end {
        let load = kb * WORDS_PER_LOAD;
        #[unroll]
        for j in 0..2u32 {
            cols[j as usize] = w_codes[(w_at[j as usize] + load) as usize];
        }
        #[unroll]
        for i in 0..m_tiles * 2 {
            rows[i as usize] = a_codes[(a_at[i as usize] + load) as usize];
        }
        k_step::<Acc>(&rows, &cols, &mut acc, &mut scratch, 0usize, m_tiles, fp8, tensor_cores);
        k_step::<Acc>(&rows, &cols, &mut acc, &mut scratch, 1usize, m_tiles, fp8, tensor_cores);

        if (kb + 1) % chunk_blocks == 0 || kb + 1 == kb_end {
            let chunk = kb / chunk_blocks;
            #[unroll]
            for mt in 0..m_tiles {
                #[unroll]
                for half in 0..2u32 {
                    let row = min(row0 + mt * M_TILE + half * 8 + group_id, row_end - 1);
                    let a_scale = a_scales[(row * a_scale_row + chunk * a_scale_chunk) as usize];
                    #[unroll]
                    for j in 0..2u32 {
                        #[unroll]
                        for c in 0..2u32 {
                            let col = min(nb * N_BLOCK + j * 8 + thread_in_group * 2 + c, n - 1);
                            let w_scale = w_scales[((col / w_scale_col_div) * w_scale_row + chunk * w_scale_chunk) as usize];
                            let at = ((mt * 2 + j) * 4 + half * 2 + c) as usize;
                            total[at] += f32::cast_from(acc[at]) * a_scale * w_scale;
                            acc[at] = Acc::from_int(0);
                        }
                    }
                }
            }
        }
    }

    if block_n < n_blocks {
        let out_row0 = CUBE_POS_Y * m;
        #[unroll]
        for mt in 0..m_tiles {
            #[unroll]
            for half in 0..2u32 {
                let row = row0 + mt * M_TILE + half * 8 + group_id;
                #[unroll]
                for j in 0..2u32 {
                    #[unroll]
                    for c in 0..2u32 {
                        let col = nb * N_BLOCK + j * 8 + thread_in_group * 2 + c;
                        let value = total[((mt * 2 + j) * 4 + half * 2 + c) as usize];
                        if row < row_end && col < n {
                            if comptime!(direct) {
                                out[(row * n + col) as usize] = F::cast_from(value);
                            } else {
                                partials[((out_row0 + row) * n + col) as usize] = value;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// K step `step` (0 or 1) of a 64-byte block: every (row tile, subtile) product, from
/// words `2·step` and `2·step + 1` of each lane's loads.
#[cube]
#[allow(clippy::too_many_arguments)]
fn k_step<Acc: Numeric>(
    rows: &Array<Quad<i32>>,
    cols: &Array<Quad<i32>>,
    acc: &mut Array<Acc>,
    scratch: &mut Shared<[f32]>,
    #[comptime] step: usize,
    #[comptime] m_tiles: u32,
    #[comptime] fp8: bool,
    #[comptime] tensor_cores: bool,
) {
    let mut fragment = Array::<i32>::new(6usize);
    #[unroll]
    for j in 0..2u32 {
        let col = cols[j as usize];
        fragment[4usize] = col.extract(comptime!(2 * step));
        fragment[5usize] = col.extract(comptime!(2 * step + 1));
        #[unroll]
        for mt in 0..m_tiles {
            let top = rows[(mt * 2) as usize];
            let bottom = rows[(mt * 2 + 1) as usize];
            fragment[0usize] = top.extract(comptime!(2 * step));
            fragment[1usize] = bottom.extract(comptime!(2 * step));
            fragment[2usize] = top.extract(comptime!(2 * step + 1));
            fragment[3usize] = bottom.extract(comptime!(2 * step + 1));
            let at = (mt * 2 + j) * 4;
            if comptime!(tensor_cores) {
                tensor_core_mma::<Acc>(&fragment, acc, at, fp8);
            } else {
                emulated_mma::<Acc>(&fragment, acc, at, scratch, fp8);
            }
        }
    }
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

/// `mma.m16n8k32` on 8-bit operands (as [`tensor_core_mma`]) rendered in shared memory, following the PTX fragment
/// layout (lane `l`, group `g = l / 4`, `t = l % 4`, bytes little end first): A register
/// `i` holds row `g + 8·(i % 2)`, columns `4t + 16·(i / 2)` to three on; B register `i`
/// holds rows `4t + 16i` to three on of column `g`; accumulator `i` holds row
/// `g + 8·(i / 2)`, column `2t + i % 2`. Every unit of the cube must call it the same
/// number of times.
#[cube]
fn emulated_mma<Acc: Numeric>(fragment: &Array<i32>, acc: &mut Array<Acc>, at: u32, scratch: &mut Shared<[f32]>, #[comptime] fp8: bool) {
    let lane = UNIT_POS_X;
    let g = lane / 4;
    let t = lane % 4;
    let a_base = UNIT_POS_Y * EMULATION_SCRATCH;
    let b_base = a_base + A_SCRATCH;
    #[unroll]
    for i in 0..4u32 {
        let word = fragment[i as usize];
        let row_at = a_base + (g + 8 * (i % 2)) * 32 + 4 * t + 16 * (i / 2);
        #[unroll]
        for byte in 0..4u32 {
            scratch[(row_at + byte) as usize] = byte_value(word, byte, fp8);
        }
    }
    #[unroll]
    for i in 0..2u32 {
        let word = fragment[(4 + i) as usize];
        #[unroll]
        for byte in 0..4u32 {
            scratch[(b_base + (4 * t + 16 * i + byte) * 8 + g) as usize] = byte_value(word, byte, fp8);
        }
    }
    sync_cube();
    let mut sums = Array::<Acc>::new(4usize);
    #[unroll]
    for i in 0..4u32 {
        let row = g + 8 * (i / 2);
        let col = 2 * t + i % 2;
        sums[i as usize] = acc[(at + i) as usize];
        for kk in 0..32u32 {
            let lhs = Acc::cast_from(scratch[(a_base + row * 32 + kk) as usize]);
            sums[i as usize] += lhs * Acc::cast_from(scratch[(b_base + kk * 8 + col) as usize]);
        }
    }
    sync_cube();
    #[unroll]
    for i in 0..4u32 {
        acc[(at + i) as usize] = sums[i as usize];
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
