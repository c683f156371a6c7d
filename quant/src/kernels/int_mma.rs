//! Tensor-core W4A16 / W8A16 GEMM over fragment-ordered weights (the Marlin idea, our
//! layout): `partials[s, M, N] = x[M, K_s] · dequant(W)[K_s, N]` for K split `s`, with f32
//! accumulation in the warp-level `mma.m16n8k16` instruction.
//!
//! The weights are repacked once ([`crate::repr::IntFragments`]) so each lane of a warp
//! reads exactly the B-fragment values it feeds to `mma`, for four K steps and two
//! 8-column subtiles, as consecutive words: one 16-byte load per lane for 4-bit values
//! (512 contiguous bytes per warp), two for 8-bit. Within a word, the values are ordered
//! so that `(word >> s) & 0x000F000F` (or `0x00FF00FF`), OR-ed with the exponent bits of
//! 1024 (f16) or 128 (bf16), is already a pair of half-precision values `magic + q` for
//! the two K rows one B register holds; subtracting `magic + zero` and multiplying by the
//! scale in the activation dtype finishes the dequantization in registers, with no
//! int-to-float conversion. (bf16's 7-bit mantissa cannot hold `128 + q` for 8-bit `q`;
//! those values convert instead.)
//!
//! A warp owns 16 output columns and `16 · m_tiles` rows, so each dequantized fragment is
//! reused by every row tile; a cube holds `warps` warps side by side along N. The grid's
//! second axis splits K (so decode shapes with few column blocks still fill every SM), and
//! the caller sums the f32 partials; with one split the kernel writes the activations'
//! dtype directly. Within a cube, `k_slices` warps can share a column block, each taking
//! every `k_slices`-th K block of the split and adding its accumulators into the first's
//! through shared memory at the end: the same parallelism as more splits, without the
//! partial products or the launch that sums them.
//!
//! Operands reach the lanes through a copy ring in shared memory, `stages` K blocks deep
//! (`cp.async` 16-byte copies on CUDA, so block `kb + stages − 1` is on its way while
//! block `kb` is multiplied), or with `stages = 0` straight from global memory.
//! - The weights: each lane copies its own pieces of each block into its own place in the
//!   ring and reads them back from there, so a warp keeps `stages − 1` blocks of its
//!   columns in flight instead of one. At decode the weight stream is the whole cost, and
//!   this is what keeps enough of it on the way to cover the memory latency.
//! - The activations, with `staged_activations`: the cube copies each K block of its rows
//!   into the ring and the warps take their A registers from it with `ldmatrix`, so the
//!   rows every warp of the cube shares are fetched from global memory once. Staged rows
//!   are 144 bytes apart (64 values and 16 bytes of padding), which puts the eight 16-byte
//!   rows one `ldmatrix` phase reads in distinct banks. Otherwise each lane reads its A
//!   registers straight from global memory, as decode shapes want.
//!
//! With `tensor_cores` off, the same fragments go through [`emulated_products`], a shared-memory
//! rendering of the instruction's documented register layout, and staged A registers come
//! from the rows `ldmatrix` would be pointed at. It is slow and exists so the repack, the
//! bit-level dequantization, the staging and the fragment indexing are tested on runtimes
//! without tensor cores (wgpu, the CPU runtime); only the `mma`, `ldmatrix` and `cp.async`
//! instructions themselves differ.

use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::*;

use super::copy_pipeline::{commit_copies, copy_piece, stage_block, wait_for_copies};
use super::e4m3::decode_e4m3;
use super::int_gemm::{row_tile, zero_mode};

/// Lanes per warp (the `mma` instruction's plane).
pub const LANES: u32 = 32;
/// K rows one lane's four words cover (four `mma` K steps of 16).
pub const K_BLOCK: u32 = 64;
/// Output columns per warp (two `mma` N subtiles of 8).
pub const N_BLOCK: u32 = 16;
/// Output rows per `mma`.
pub const M_TILE: u32 = 16;

/// Activation values per 16-byte piece (f16 / bf16).
const PIECE_VALUES: u32 = 8;
/// 16-byte pieces per staged row: a K block's 64 values, and one of padding so that
/// eight consecutive rows start in different banks.
const STAGE_ROW_PIECES: u32 = K_BLOCK / PIECE_VALUES + 1;

type Pair<E> = Vector<E, Const<2>>;
type Octet<E> = Vector<E, Const<8>>;

/// See the module documentation. `x` is `[M, K/2]` pairs when loading directly and
/// `x_pieces` the same activations as `[M, K/8]` pieces when staging them (the other is a
/// placeholder), `words` `[K/64, N/16, 32, bits/4]` groups of four i32, scales and the
/// zero buffers `[G, N]`; `group_size` is a multiple of 16, or 0 for one group spanning K.
/// Cube `(x, y, z)` covers column blocks `x·warps ..`, K blocks `y·blocks_per_split ..` and
/// rows `z·16·m_tiles ..`; units are `(lane, warp)`, warp `w` working on column block
/// `w % warps` and K slice `w / warps`. With `grouped` (mixture of experts),
/// the rows of `x` are sorted by expert, the experts' fragments and group buffers are
/// stacked (`groups` scale rows each), and row tile `z` multiplies rows
/// `tiles[3z+1]..tiles[3z+2]` by expert `tiles[3z]`, as in the portable kernels. With
/// `direct`, `out` `[M, N]` is written and `partials` is a placeholder; otherwise
/// `partials` `[splits·M, N]`.
#[cube(launch_unchecked)]
// `collapsible_if`: an outer `if comptime!(..)` is resolved when the kernel expands, so
// folding the runtime test into it would change what is generated.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn int_mma_gemm<F: Float>(
    x: &[Pair<F>],
    x_pieces: &[Octet<F>],
    words: &[Vector<i32, Const<4>>],
    scales: &[f32],
    zeros: &[i32],
    offsets: &[f32],
    tiles: &[u32],
    partials: &mut [f32],
    out: &mut [F],
    m: u32,
    k: u32,
    n: u32,
    groups: u32,
    blocks_per_split: u32,
    #[comptime] bits: u32,
    #[comptime] e4m3: bool,
    #[comptime] group_size: u32,
    #[comptime] zeros_mode: u32,
    #[comptime] bf16: bool,
    #[comptime] m_tiles: u32,
    #[comptime] warps: u32,
    #[comptime] k_slices: u32,
    #[comptime] stages: u32,
    #[comptime] staged_activations: bool,
    #[comptime] tensor_cores: bool,
    #[comptime] bit_dequant: bool,
    #[comptime] grouped: bool,
    #[comptime] direct: bool,
    #[define(F)] _dtype: ElemType,
) {
    let lane = UNIT_POS_X;
    let warp = UNIT_POS_Y;
    let warp_n = warp % warps;
    let warp_k = warp / warps;
    let group_id = lane / 4;
    let thread_in_group = lane % 4;
    let n_blocks = n / N_BLOCK;
    // Warps past the last column block compute on it and store nothing: the stage and the
    // emulated instruction need every unit of the cube at their barriers.
    let block_n = CUBE_POS_X * warps + warp_n;
    let nb = min(block_n, n_blocks - 1);
    // The split's K blocks (none for a split past K's end); warp slice `warp_k` takes
    // every `k_slices`-th of them, from the `warp_k`-th.
    let kb_begin = CUBE_POS_Y * blocks_per_split;
    let kb_end = max(min(kb_begin + blocks_per_split, k / K_BLOCK), kb_begin);
    let steps = (kb_end - kb_begin + comptime!(k_slices - 1)) / k_slices;
    let tile = row_tile(tiles, CUBE_POS_Z, comptime!(M_TILE * m_tiles), m, grouped);
    let row0 = tile.first;
    let row_end = tile.end;
    // Each lane's words per block come in 16-byte loads: one for 4 bits, two for 8.
    let loads = comptime!(bits / 4);
    // Offsets of this row tile's expert in the stacked buffers, in 16-byte loads and in
    // scale rows.
    let word_base = tile.expert * (k / K_BLOCK) * n_blocks * LANES * loads;
    let group_base = tile.expert * groups * n;
    // The lane's first load of K block 0, a block's loads, and the lane's first load in a
    // slot of the weight ring, where a warp's loads lie load by load (each lane's second
    // 32 pieces after its first), so the 32 lanes reading one load read consecutive pieces.
    let lane_words_at = word_base + (nb * LANES + lane) * loads;
    let block_loads = n_blocks * LANES * loads;
    let lane_ring_at = warp * LANES * loads + lane;

    // The f16 / bf16 bit pattern of 1024 / 128, whose last mantissa bit is worth 1, so
    // OR-ing a value into the mantissa adds it. bf16 has room for 4-bit values only: its
    // 8-bit values convert from integers, exactly, with no offset.
    let magic_bits = comptime!(if bf16 { 0x4300u32 } else { 0x6400u32 });
    let magic_pair = comptime!(magic_bits | (magic_bits << 16));
    let magic = comptime!(if bf16 && bits == 8 { 0.0f32 } else if bf16 { 128.0f32 } else { 1024.0f32 });
    let midpoint = comptime!((1u32 << (bits - 1)) as f32);
    // e4m3 bytes become f16 by moving their exponent and mantissa into place, which leaves
    // them 2^8 too small (exponent bias 15 against 7): the scales make up for it.
    let scale_factor = comptime!(if e4m3 && bit_dequant { 256.0f32 } else { 1.0f32 });

    let mut acc = Array::<Pair<f32>>::new(comptime!((m_tiles * 4) as usize));
    #[unroll]
    for i in 0..m_tiles * 4 {
        acc[i as usize] = Pair::<f32>::new(0.0f32);
    }
    // Pair offsets of each lane's two A-fragment rows per row tile; rows past the tile's
    // end read its last row and are never stored.
    let mut a_rows = Array::<u32>::new(comptime!((m_tiles * 2) as usize));
    #[unroll]
    for i in 0..m_tiles * 2 {
        a_rows[i as usize] = min(row0 + i * 8 + group_id, row_end - 1) * (k / 2);
    }

    // Per 8-column subtile: `magic + zero`, the scale, and the float offset, as pairs.
    let mut centre = Array::<Pair<F>>::new(2usize);
    let mut scale = Array::<Pair<F>>::new(2usize);
    let mut offset = Array::<Pair<F>>::new(2usize);
    // The lane's first column in its expert's first group row of the scale buffers.
    let lane_scale_at = group_base + nb * N_BLOCK + group_id;
    if comptime!(group_size == 0) {
        load_group::<F>(scales, zeros, offsets, lane_scale_at, &mut centre, &mut scale, &mut offset, magic, midpoint, scale_factor, zeros_mode);
    }

    let mut lane_words = Array::<u32>::new(comptime!(bits as usize));
    let mut a = Array::<Pair<F>>::new(4usize);
    let mut b_low = Array::<Pair<F>>::new(2usize);
    let mut b_high = Array::<Pair<F>>::new(2usize);
    let mut scratch = Shared::<[f32]>::new_slice(comptime!(if tensor_cores { 1usize } else { (emulation_scratch(m_tiles) * warps * k_slices) as usize }));
    // Slots of the ring: the cube's rows of one K block, padded, and every lane's loads.
    let slot_len = comptime!(M_TILE * m_tiles * STAGE_ROW_PIECES);
    let ring_len = comptime!(LANES * warps * k_slices * loads);
    let mut stage = Shared::<[Octet<F>]>::new_slice(comptime!(if staged_activations { (slot_len * stages) as usize } else { 1usize }));
    let mut ring = Shared::<[Vector<i32, Const<4>>]>::new_slice(comptime!(if stages == 0 { 1usize } else { (ring_len * stages) as usize }));

    if comptime!(stages > 0) {
        #[unroll]
        for s in 0..stages - 1 {
            let first = kb_begin + s * k_slices + warp_k;
            if first < kb_end {
                fill_weights(words, &mut ring, lane_words_at + first * block_loads, s * ring_len + lane_ring_at, loads, tensor_cores);
                if comptime!(staged_activations) {
                    fill_stage::<F>(x_pieces, &mut stage, first, s * slot_len, row0, row_end, k, m_tiles, warps, tensor_cores);
                }
            }
            commit_copies(tensor_cores);
        }
    }

    // Every warp takes the same number of steps, since the barriers need the whole cube; a
    // slice whose last step falls past the split's end multiplies its last block by zeros.
    for step in 0..steps {
        let wanted = kb_begin + step * k_slices + warp_k;
        let active = wanted < kb_end;
        let kb = min(wanted, kb_end - 1);
        if comptime!(stages > 0) {
            // Step `step` has landed and every unit is done with step `step − 1`, whose
            // slot the copy of step `step + stages − 1` now takes.
            wait_for_copies(tensor_cores, stages);
            sync_cube();
            let ahead = wanted + comptime!((stages.max(1) - 1) * k_slices);
            if ahead < kb_end {
                let ahead_slot = (step + stages - 1) % stages;
                fill_weights(words, &mut ring, lane_words_at + ahead * block_loads, ahead_slot * ring_len + lane_ring_at, loads, tensor_cores);
                if comptime!(staged_activations) {
                    fill_stage::<F>(x_pieces, &mut stage, ahead, ahead_slot * slot_len, row0, row_end, k, m_tiles, warps, tensor_cores);
                }
            }
            commit_copies(tensor_cores);
        }
        let ring_slot = if comptime!(stages > 0) { step % comptime!(stages.max(1)) } else { u32::new(0) };
        let slot = ring_slot * slot_len;
        // One or two 16-byte loads: the lane's B registers for the block's four K steps.
        #[unroll]
        for l in 0..loads {
            let loaded = if comptime!(stages > 0) { ring[(ring_slot * ring_len + lane_ring_at + l * LANES) as usize] } else { words[(lane_words_at + kb * block_loads + l) as usize] };
            lane_words[(l * 4) as usize] = u32::cast_from(loaded.extract(0usize));
            lane_words[(l * 4 + 1) as usize] = u32::cast_from(loaded.extract(1usize));
            lane_words[(l * 4 + 2) as usize] = u32::cast_from(loaded.extract(2usize));
            lane_words[(l * 4 + 3) as usize] = u32::cast_from(loaded.extract(3usize));
        }
        if comptime!(group_size >= K_BLOCK) {
            let at = (kb * K_BLOCK / group_size) * n + lane_scale_at;
            load_group::<F>(scales, zeros, offsets, at, &mut centre, &mut scale, &mut offset, magic, midpoint, scale_factor, zeros_mode);
        }
        #[unroll]
        for w in 0..4u32 {
            let k0 = kb * K_BLOCK + w * 16;
            if comptime!(group_size > 0 && group_size < K_BLOCK) {
                let at = (k0 / group_size) * n + lane_scale_at;
                load_group::<F>(scales, zeros, offsets, at, &mut centre, &mut scale, &mut offset, magic, midpoint, scale_factor, zeros_mode);
            }
            if comptime!(bits == 4) {
                // Nibble slot p (and p + 4 in the high half) holds subtile p / 2, K half p % 2.
                let word = lane_words[w as usize];
                b_low[0] = dequantize_pair::<F>(word, 0u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 0u32, zeros_mode);
                b_low[1] = dequantize_pair::<F>(word, 4u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 0u32, zeros_mode);
                b_high[0] = dequantize_pair::<F>(word, 8u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 1u32, zeros_mode);
                b_high[1] = dequantize_pair::<F>(word, 12u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 1u32, zeros_mode);
            } else {
                // Word 2w + j holds subtile j; byte slot p (and p + 2) K half p.
                let low = lane_words[(2 * w) as usize];
                let high = lane_words[(2 * w + 1) as usize];
                b_low[0] = dequantize_pair::<F>(low, 0u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 0u32, zeros_mode);
                b_low[1] = dequantize_pair::<F>(low, 8u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 0u32, zeros_mode);
                b_high[0] = dequantize_pair::<F>(high, 0u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 1u32, zeros_mode);
                b_high[1] = dequantize_pair::<F>(high, 8u32, bits, magic_pair, magic, bit_dequant, e4m3, &centre, &scale, &offset, 1u32, zeros_mode);
            }
            if comptime!(k_slices > 1) {
                if !active {
                    let zero = Pair::<F>::new(F::from_int(0));
                    b_low[0] = zero;
                    b_low[1] = zero;
                    b_high[0] = zero;
                    b_high[1] = zero;
                }
            }

            let col = k0 / 2 + thread_in_group;
            #[unroll]
            for mt in 0..m_tiles {
                if comptime!(!staged_activations) {
                    let top = a_rows[(mt * 2) as usize];
                    let bottom = a_rows[(mt * 2 + 1) as usize];
                    a[0] = x[(top + col) as usize];
                    a[1] = x[(bottom + col) as usize];
                    a[2] = x[(top + col + 4) as usize];
                    a[3] = x[(bottom + col + 4) as usize];
                } else {
                    staged_a_registers::<F>(&stage, &mut a, slot + mt * comptime!(M_TILE * STAGE_ROW_PIECES) + w * 2, tensor_cores);
                }
                if comptime!(tensor_cores) {
                    tensor_core_mma::<F>(&a, &b_low, &mut acc, mt * 4);
                    tensor_core_mma::<F>(&a, &b_high, &mut acc, mt * 4 + 2);
                } else {
                    scatter_a::<F>(&a, &mut scratch, mt, m_tiles);
                }
            }
            if comptime!(!tensor_cores) {
                // The same registers through the instruction's layout in shared memory:
                // every product of the K step is written before one barrier and summed
                // before another.
                scatter_b::<F>(&b_low, &b_high, &mut scratch, m_tiles);
                sync_cube();
                #[unroll]
                for mt in 0..m_tiles {
                    emulated_products(&mut acc, &scratch, mt, m_tiles);
                }
                sync_cube();
            }
        }
    }

    if comptime!(k_slices > 1) {
        sum_slices(&mut acc, warp_n, warp_k, m_tiles, warps, k_slices);
    }
    if block_n < n_blocks && warp_k == 0 {
        let out_base = CUBE_POS_Y * m;
        #[unroll]
        for mt in 0..m_tiles {
            #[unroll]
            for j in 0..2u32 {
                #[unroll]
                for half in 0..2u32 {
                    let row = row0 + mt * M_TILE + half * 8 + group_id;
                    let pair = acc[(mt * 4 + j * 2 + half) as usize];
                    if row < row_end {
                        let at = (out_base + row) * n + nb * N_BLOCK + j * 8 + thread_in_group * 2;
                        if comptime!(direct) {
                            out[at as usize] = F::cast_from(pair.extract(0usize));
                            out[(at + 1) as usize] = F::cast_from(pair.extract(1usize));
                        } else {
                            partials[at as usize] = pair.extract(0usize);
                            partials[(at + 1) as usize] = pair.extract(1usize);
                        }
                    }
                }
            }
        }
    }
}

/// Adds the accumulators of K slices 1.. of column block `warp_n` into slice 0's, through
/// shared memory laid out accumulator by accumulator (a warp's 32 lanes write and read 32
/// consecutive values).
#[cube]
fn sum_slices(acc: &mut Array<Pair<f32>>, warp_n: u32, warp_k: u32, #[comptime] m_tiles: u32, #[comptime] warps: u32, #[comptime] k_slices: u32) {
    let per_warp = comptime!(m_tiles * 8 * LANES);
    let mut sums = Shared::<[f32]>::new_slice(comptime!((per_warp * warps * (k_slices - 1)) as usize));
    if warp_k > 0 {
        let at = ((warp_k - 1) * warps + warp_n) * per_warp + UNIT_POS_X;
        #[unroll]
        for i in 0..m_tiles * 4 {
            let pair = acc[i as usize];
            sums[(at + 2 * i * LANES) as usize] = pair.extract(0usize);
            sums[(at + (2 * i + 1) * LANES) as usize] = pair.extract(1usize);
        }
    }
    sync_cube();
    if warp_k == 0 {
        #[unroll]
        for slice in 0..k_slices - 1 {
            let at = (slice * warps + warp_n) * per_warp + UNIT_POS_X;
            #[unroll]
            for i in 0..m_tiles * 4 {
                let mut pair = acc[i as usize];
                pair.insert(0usize, pair.extract(0usize) + sums[(at + 2 * i * LANES) as usize]);
                pair.insert(1usize, pair.extract(1usize) + sums[(at + (2 * i + 1) * LANES) as usize]);
                acc[i as usize] = pair;
            }
        }
    }
}

/// Copies this lane's `loads` weight pieces of a K block, from `first` in `words`, to its
/// places in the ring, from `at` one warp's width (32 pieces) apart.
#[cube]
fn fill_weights(words: &[Vector<i32, Const<4>>], ring: &mut Shared<[Vector<i32, Const<4>>]>, first: u32, at: u32, #[comptime] loads: u32, #[comptime] tensor_cores: bool) {
    #[unroll]
    for l in 0..loads {
        copy_piece(words, (first + l) as usize, ring, (at + l * LANES) as usize, 4u32, tensor_cores);
    }
}

/// Copies K block `kb` of the cube's rows (`row0 ..`, clamped to `row_end − 1`) into the
/// stage at `slot` ([`stage_block`]).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fill_stage<F: Float>(
    x_pieces: &[Octet<F>],
    stage: &mut Shared<[Octet<F>]>,
    kb: u32,
    slot: u32,
    row0: u32,
    row_end: u32,
    k: u32,
    #[comptime] m_tiles: u32,
    #[comptime] warps: u32,
    #[comptime] tensor_cores: bool,
) {
    let block_pieces = comptime!(K_BLOCK / PIECE_VALUES);
    stage_block(x_pieces, stage, kb, slot, row0, row_end - 1, k / PIECE_VALUES, comptime!(M_TILE * m_tiles), block_pieces, STAGE_ROW_PIECES, PIECE_VALUES, comptime!(LANES * warps), tensor_cores);
}

/// The A registers of one row tile and K step from the stage, `at` being the tile's
/// first row and the step's first piece: with `tensor_cores`, one `ldmatrix.x4`, whose
/// matrix `q` (rows `8·(q % 2)` on, columns `8·(q / 2)` on) lands in register `q` as the
/// `mma` layout wants; otherwise each lane reads what `ldmatrix` would hand it: from the
/// row lane `8q + g` points at, values `2t` and `2t + 1`.
#[cube]
fn staged_a_registers<F: Float>(stage: &Shared<[Octet<F>]>, a: &mut Array<Pair<F>>, at: u32, #[comptime] tensor_cores: bool) {
    if comptime!(tensor_cores) {
        let definition = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
        let row = (at + ldmatrix_row(UNIT_POS_X)) as usize;
        let registers = definition.load_matrix::<Octet<F>, Const<2>>(&stage[row..row + 1], MatrixIdent::A, 4usize, false);
        #[unroll]
        for q in 0..4usize {
            a[q] = registers[q];
        }
    } else {
        let g = UNIT_POS_X / 4;
        let t = UNIT_POS_X % 4;
        #[unroll]
        for q in 0..4u32 {
            let piece = stage[(at + ldmatrix_row(q * 8 + g)) as usize];
            let mut pair = Pair::<F>::empty();
            pair.insert(0usize, piece.extract_dynamic((2 * t) as usize));
            pair.insert(1usize, piece.extract_dynamic((2 * t + 1) as usize));
            a[q as usize] = pair;
        }
    }
}

/// The staged piece, from a row tile's first row and a K step's first piece, that lane
/// `lane` points `ldmatrix.x4` at: lanes `8q ..` give the rows of matrix `q`.
#[cube]
fn ldmatrix_row(lane: u32) -> u32 {
    let matrix = lane / 8;
    (lane % 8 + 8 * (matrix % 2)) * STAGE_ROW_PIECES + matrix / 2
}

/// Loads both subtiles' group parameters for the lane's column (`at` indexes subtile 0;
/// subtile 1 is 8 columns on).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_group<F: Float>(
    scales: &[f32],
    zeros: &[i32],
    offsets: &[f32],
    at: u32,
    centre: &mut Array<Pair<F>>,
    scale: &mut Array<Pair<F>>,
    offset: &mut Array<Pair<F>>,
    #[comptime] magic: f32,
    #[comptime] midpoint: f32,
    #[comptime] scale_factor: f32,
    #[comptime] zeros_mode: u32,
) {
    #[unroll]
    for j in 0..2u32 {
        let col = at + j * 8;
        let zero = if comptime!(zeros_mode == zero_mode::INTEGER) {
            f32::cast_from(zeros[col as usize])
        } else {
            f32::new(midpoint)
        };
        centre[j as usize] = Pair::<F>::new(F::cast_from(zero + magic));
        scale[j as usize] = Pair::<F>::new(F::cast_from(scales[col as usize] * scale_factor));
        if comptime!(zeros_mode == zero_mode::FLOAT) {
            offset[j as usize] = Pair::<F>::new(F::cast_from(offsets[col as usize]));
        }
    }
}

/// The two `bits`-bit values at bit `shift` and `shift + 16` of `word` (one B register:
/// two consecutive K rows of one column), dequantized for subtile `j`. With
/// `bit_dequant`, `magic + q` (or an e4m3 value / 2^8) comes from bit operations alone;
/// otherwise by conversion.
#[cube]
#[allow(clippy::too_many_arguments)]
fn dequantize_pair<F: Float>(
    word: u32,
    #[comptime] shift: u32,
    #[comptime] bits: u32,
    #[comptime] magic_pair: u32,
    #[comptime] magic: f32,
    #[comptime] bit_dequant: bool,
    #[comptime] e4m3: bool,
    centre: &Array<Pair<F>>,
    scale: &Array<Pair<F>>,
    offset: &Array<Pair<F>>,
    #[comptime] j: u32,
    #[comptime] zeros_mode: u32,
) -> Pair<F> {
    if comptime!(e4m3) {
        e4m3_pair::<F>(word, shift, bit_dequant) * scale[j as usize]
    } else {
        let mask = comptime!((1u32 << bits) - 1);
        let biased = if comptime!(bit_dequant) {
            Pair::<F>::reinterpret(((word >> shift) & comptime!(mask | (mask << 16))) | magic_pair)
        } else {
            // The same values by conversion, for WGSL compilers that mistype a bitcast to a
            // pair of f16, and for 8-bit values in bf16.
            let mut pair = Pair::<F>::empty();
            pair.insert(0usize, F::cast_from(f32::cast_from((word >> shift) & mask) + magic));
            pair.insert(1usize, F::cast_from(f32::cast_from((word >> comptime!(shift + 16)) & mask) + magic));
            pair
        };
        let value = (biased - centre[j as usize]) * scale[j as usize];
        if comptime!(zeros_mode == zero_mode::FLOAT) {
            value + offset[j as usize]
        } else {
            value
        }
    }
}

/// The e4m3 bytes at bit `shift` and `shift + 16` of `word` as a pair: with `bit_dequant`
/// (f16 only), sign to bit 15 and exponent and mantissa to bits 13..7, which is the value
/// / 2^8 (f16's exponent bias is 15, e4m3's 7; subnormals land on f16 subnormals exactly);
/// otherwise decoded to f32 and converted.
#[cube]
fn e4m3_pair<F: Float>(word: u32, #[comptime] shift: u32, #[comptime] bit_dequant: bool) -> Pair<F> {
    if comptime!(bit_dequant) {
        let bytes = (word >> shift) & 0x00FF_00FFu32;
        Pair::<F>::reinterpret(((bytes & 0x007F_007Fu32) << 7) | ((bytes & 0x0080_0080u32) << 8))
    } else {
        let mut pair = Pair::<F>::empty();
        pair.insert(0usize, F::cast_from(decode_e4m3(word >> shift)));
        pair.insert(1usize, F::cast_from(decode_e4m3(word >> comptime!(shift + 16))));
        pair
    }
}

/// `acc[at .. at + 2] += A · B` for one 16×8×16 product on tensor cores.
#[cube]
fn tensor_core_mma<F: Float>(a: &Array<Pair<F>>, b: &Array<Pair<F>>, acc: &mut Array<Pair<f32>>, at: u32) {
    let definition = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let mut c = Array::<Pair<f32>>::new(2usize);
    c[0] = acc[at as usize];
    c[1] = acc[(at + 1) as usize];
    let d = definition.execute(a, b, &c);
    acc[at as usize] = d[0];
    acc[(at + 1) as usize] = d[1];
}

// The emulated instruction. Each warp's scratch holds one K step of its operands in f32,
// in natural order: per row tile a 16×16 A tile, then the 16×16 B tile of both 8-column
// subtiles. The PTX fragment layout (lane `l`, group `g = l / 4`, `t = l % 4`) says where
// each register goes: A register `i` holds row `g + 8·(i % 2)`, columns `2t + 8·(i / 2)`
// and one on; B register `i` holds rows `2t + 8i` and one on of column `g`; accumulator
// register `i` holds row `g + 8i`, columns `2t` and one on.

/// f32 scratch per warp for one K step.
fn emulation_scratch(m_tiles: u32) -> u32 {
    m_tiles * M_TILE * K_STEP + K_STEP * N_BLOCK
}

/// Rows of K per `mma`.
const K_STEP: u32 = 16;

/// Where this warp's scratch starts, and its B tile within it.
#[cube]
fn emulation_base(#[comptime] m_tiles: u32) -> (u32, u32) {
    let a_base = UNIT_POS_Y * comptime!(emulation_scratch(m_tiles));
    (a_base, a_base + comptime!(m_tiles * M_TILE * K_STEP))
}

/// Writes the A registers of row tile `mt` where the layout puts them.
#[cube]
fn scatter_a<F: Float>(a: &Array<Pair<F>>, scratch: &mut Shared<[f32]>, mt: u32, #[comptime] m_tiles: u32) {
    let (a_base, _) = emulation_base(m_tiles);
    let g = UNIT_POS_X / 4;
    let t = UNIT_POS_X % 4;
    #[unroll]
    for i in 0..4u32 {
        let at = a_base + (mt * M_TILE + g + 8 * (i % 2)) * K_STEP + 2 * t + 8 * (i / 2);
        let pair = a[i as usize];
        scratch[at as usize] = f32::cast_from(pair.extract(0usize));
        scratch[(at + 1) as usize] = f32::cast_from(pair.extract(1usize));
    }
}

/// Writes the B registers of both subtiles (`low`: columns 0..8, `high`: 8..16) where
/// the layout puts them.
#[cube]
fn scatter_b<F: Float>(low: &Array<Pair<F>>, high: &Array<Pair<F>>, scratch: &mut Shared<[f32]>, #[comptime] m_tiles: u32) {
    let (_, b_base) = emulation_base(m_tiles);
    let g = UNIT_POS_X / 4;
    let t = UNIT_POS_X % 4;
    #[unroll]
    for i in 0..2u32 {
        let row = 2 * t + 8 * i;
        #[unroll]
        for j in 0..2u32 {
            let pair = if j == 0 { low[i as usize] } else { high[i as usize] };
            let col = b_base + j * 8 + g;
            scratch[(col + row * N_BLOCK) as usize] = f32::cast_from(pair.extract(0usize));
            scratch[(col + (row + 1) * N_BLOCK) as usize] = f32::cast_from(pair.extract(1usize));
        }
    }
}

/// `acc[4·mt ..][..4] += A · B` for row tile `mt` and both subtiles, from the scattered
/// operands: the four accumulator pairs this lane holds.
#[cube]
fn emulated_products(acc: &mut Array<Pair<f32>>, scratch: &Shared<[f32]>, mt: u32, #[comptime] m_tiles: u32) {
    let (a_base, b_base) = emulation_base(m_tiles);
    let g = UNIT_POS_X / 4;
    let t = UNIT_POS_X % 4;
    #[unroll]
    for j in 0..2u32 {
        #[unroll]
        for i in 0..2u32 {
            let at = (mt * 4 + j * 2 + i) as usize;
            let row = a_base + (mt * M_TILE + g + 8 * i) * K_STEP;
            let col = b_base + j * 8 + 2 * t;
            let mut sums = acc[at];
            let mut first = sums.extract(0usize);
            let mut second = sums.extract(1usize);
            for kk in 0..K_STEP {
                let lhs = scratch[(row + kk) as usize];
                first += lhs * scratch[(col + kk * N_BLOCK) as usize];
                second += lhs * scratch[(col + kk * N_BLOCK + 1) as usize];
            }
            sums.insert(0usize, first);
            sums.insert(1usize, second);
            acc[at] = sums;
        }
    }
}
