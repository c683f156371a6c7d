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
//! the caller sums the f32 partials.
//!
//! With `tensor_cores` off, the same fragments go through [`emulated_mma`], a shared-memory
//! rendering of the instruction's documented register layout. It is slow and exists so the
//! repack, the bit-level dequantization and the fragment indexing are tested on runtimes
//! without tensor cores (wgpu, the CPU runtime); only the `mma` instruction itself differs.

use cubecl::cmma::MmaDefinition;
use cubecl::prelude::*;

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
/// f32 scratch per warp for the emulated instruction: a 16×16 A tile and a 16×8 B tile.
const EMULATION_SCRATCH: u32 = 16 * 16 + 16 * 8;

type Pair<E> = Vector<E, Const<2>>;

/// See the module documentation. `x` is `[M, K/2]` pairs, `words` `[K/64, N/16, 32,
/// bits/4]` groups of four i32, scales and the zero buffers `[G, N]`; `group_size` is a multiple of 16, or 0 for one group spanning K.
/// Cube `(x, y, z)` covers column blocks `x·warps ..`, K blocks `y·blocks_per_split ..` and
/// rows `z·16·m_tiles ..`; units are `(lane, warp)`. With `grouped` (mixture of experts),
/// the rows of `x` are sorted by expert, the experts' fragments and group buffers are
/// stacked (`groups` scale rows each), and row tile `z` multiplies rows
/// `tiles[3z+1]..tiles[3z+2]` by expert `tiles[3z]`, as in the portable kernels.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn int_mma_gemm<F: Float>(
    x: &[Pair<F>],
    words: &[Vector<i32, Const<4>>],
    scales: &[f32],
    zeros: &[i32],
    offsets: &[f32],
    tiles: &[u32],
    partials: &mut [f32],
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
    #[comptime] tensor_cores: bool,
    #[comptime] bit_dequant: bool,
    #[comptime] grouped: bool,
    #[define(F)] _dtype: ElemType,
) {
    let lane = UNIT_POS_X;
    let warp = UNIT_POS_Y;
    let group_id = lane / 4;
    let thread_in_group = lane % 4;
    let n_blocks = n / N_BLOCK;
    // Warps past the last column block compute on it and store nothing: the emulated
    // instruction needs every unit of the cube at its barriers.
    let block_n = CUBE_POS_X * warps + warp;
    let nb = min(block_n, n_blocks - 1);
    let kb_begin = CUBE_POS_Y * blocks_per_split;
    let kb_end = min(kb_begin + blocks_per_split, k / K_BLOCK);
    let tile = row_tile(tiles, CUBE_POS_Z, comptime!(M_TILE * m_tiles), m, grouped);
    let row0 = tile.first;
    let row_end = tile.end;
    // Each lane's words per block come in 16-byte loads: one for 4 bits, two for 8.
    let loads = comptime!(bits / 4);
    // Offsets of this row tile's expert in the stacked buffers, in 16-byte loads and in
    // scale rows.
    let word_base = tile.expert * (k / K_BLOCK) * n_blocks * LANES * loads;
    let group_base = tile.expert * groups * n;

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
    let mut scratch = Shared::<[f32]>::new_slice(comptime!(if tensor_cores { 1usize } else { (EMULATION_SCRATCH * warps) as usize }));

    for kb in kb_begin..kb_end {
        // One or two 16-byte loads: the lane's B registers for the block's four K steps.
        #[unroll]
        for l in 0..loads {
            let loaded = words[(word_base + ((kb * n_blocks + nb) * LANES + lane) * loads + l) as usize];
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

            let col = k0 / 2 + thread_in_group;
            #[unroll]
            for mt in 0..m_tiles {
                let top = a_rows[(mt * 2) as usize];
                let bottom = a_rows[(mt * 2 + 1) as usize];
                a[0] = x[(top + col) as usize];
                a[1] = x[(bottom + col) as usize];
                a[2] = x[(top + col + 4) as usize];
                a[3] = x[(bottom + col + 4) as usize];
                mma::<F>(&a, &b_low, &mut acc, mt * 4, &mut scratch, tensor_cores);
                mma::<F>(&a, &b_high, &mut acc, mt * 4 + 2, &mut scratch, tensor_cores);
            }
        }
    }

    if block_n < n_blocks {
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
                        partials[at as usize] = pair.extract(0usize);
                        partials[(at + 1) as usize] = pair.extract(1usize);
                    }
                }
            }
        }
    }
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

/// `acc[at .. at + 2] += A · B` for one 16×8×16 product, on tensor cores or emulated.
#[cube]
fn mma<F: Float>(
    a: &Array<Pair<F>>,
    b: &Array<Pair<F>>,
    acc: &mut Array<Pair<f32>>,
    at: u32,
    scratch: &mut Shared<[f32]>,
    #[comptime] tensor_cores: bool,
) {
    if comptime!(tensor_cores) {
        let definition = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
        let mut c = Array::<Pair<f32>>::new(2usize);
        c[0] = acc[at as usize];
        c[1] = acc[(at + 1) as usize];
        let d = definition.execute(a, b, &c);
        acc[at as usize] = d[0];
        acc[(at + 1) as usize] = d[1];
    } else {
        emulated_mma::<F>(a, b, acc, at, scratch);
    }
}

/// `mma.m16n8k16` with f32 accumulation rendered in shared memory, following the PTX
/// fragment layout (lane `l`, group `g = l / 4`, `t = l % 4`): A register `i` holds row
/// `g + 8·(i % 2)`, columns `2t + 8·(i / 2)` and one on; B register `i` holds rows
/// `2t + 8i` and one on of column `g`; accumulator register `i` holds row `g + 8i`,
/// columns `2t` and one on. Every unit of the cube must call it the same number of times.
#[cube]
fn emulated_mma<F: Float>(a: &Array<Pair<F>>, b: &Array<Pair<F>>, acc: &mut Array<Pair<f32>>, at: u32, scratch: &mut Shared<[f32]>) {
    let lane = UNIT_POS_X;
    let g = lane / 4;
    let t = lane % 4;
    let a_base = UNIT_POS_Y * EMULATION_SCRATCH;
    let b_base = a_base + 256;
    #[unroll]
    for i in 0..4u32 {
        let at_a = a_base + (g + 8 * (i % 2)) * 16 + 2 * t + 8 * (i / 2);
        let pair = a[i as usize];
        scratch[at_a as usize] = f32::cast_from(pair.extract(0usize));
        scratch[(at_a + 1) as usize] = f32::cast_from(pair.extract(1usize));
    }
    #[unroll]
    for i in 0..2u32 {
        let row = 2 * t + 8 * i;
        let pair = b[i as usize];
        scratch[(b_base + row * 8 + g) as usize] = f32::cast_from(pair.extract(0usize));
        scratch[(b_base + (row + 1) * 8 + g) as usize] = f32::cast_from(pair.extract(1usize));
    }
    sync_cube();
    #[unroll]
    for i in 0..2u32 {
        let row = g + 8 * i;
        let mut sums = acc[(at + i) as usize];
        let mut first = sums.extract(0usize);
        let mut second = sums.extract(1usize);
        for kk in 0..16u32 {
            let lhs = scratch[(a_base + row * 16 + kk) as usize];
            first += lhs * scratch[(b_base + kk * 8 + 2 * t) as usize];
            second += lhs * scratch[(b_base + kk * 8 + 2 * t + 1) as usize];
        }
        sums.insert(0usize, first);
        sums.insert(1usize, second);
        acc[(at + i) as usize] = sums;
    }
    sync_cube();
}
