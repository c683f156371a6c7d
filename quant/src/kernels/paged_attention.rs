//! Decode attention straight from the paged KV pool: one query token per sequence, its
//! keys and values found through the sequence's block table, so nothing is gathered or
//! padded first (the Burn-ops path gathers every context into a padded tensor).
//!
//! One unit per (sequence, query head) walks its context once with an online softmax
//! (running max and sum, rescaling the accumulator as the max grows), in f32 registers.
//! No shared memory and no barriers, so it runs on every CubeCL runtime.

use cubecl::prelude::*;

/// Units per cube, one per (sequence, head).
pub const CUBE_UNITS: u32 = 64;

/// `out[b, h] = softmax(q[b, h] · K_bᵀ · scale) · V_b` where `K_b`/`V_b` are the
/// positions `0..context_lens[b]` of sequence `b` (the last `window` of them when
/// `window > 0`), position `p` at offset `p % block_size` of block `block_tables[b, p /
/// block_size]`. `q`/`out` are `[batch, heads, head_dim]`, the pools `[blocks, kv_heads,
/// block_size, head_dim]`; query head `h` reads kv head `h / (heads / kv_heads)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_attention<F: Float>(
    q: &[F],
    key_pool: &[F],
    value_pool: &[F],
    block_tables: &[u32],
    context_lens: &[u32],
    out: &mut [F],
    batch: u32,
    heads: u32,
    kv_heads: u32,
    max_blocks: u32,
    block_size: u32,
    window: u32,
    scale: f32,
    #[comptime] head_dim: u32,
    #[define(F)] _dtype: ElemType,
) {
    let unit = CUBE_POS_X * CUBE_UNITS + UNIT_POS_X;
    if unit >= batch * heads {
        terminate!();
    }
    let b = unit / heads;
    let h = unit % heads;
    let kv_head = h / (heads / kv_heads);

    let mut query = Array::<f32>::new(comptime!(head_dim as usize));
    let mut acc = Array::<f32>::new(comptime!(head_dim as usize));
    let q_base = unit * head_dim;
    #[unroll]
    for i in 0..head_dim {
        query[i as usize] = f32::cast_from(q[(q_base + i) as usize]) * scale;
        acc[i as usize] = 0.0f32;
    }

    let context = context_lens[b as usize];
    let mut first = 0u32;
    if window > 0 && context > window {
        first = context - window;
    }
    // Far below any score, so the first key's rescale factor is exp(-inf) = 0.
    let mut running_max = f32::new(-1.0e30);
    let mut running_sum = 0.0f32;
    for pos in first..context {
        let block = block_tables[(b * max_blocks + pos / block_size) as usize];
        let base = ((block * kv_heads + kv_head) * block_size + pos % block_size) * head_dim;
        let mut score = 0.0f32;
        #[unroll]
        for i in 0..head_dim {
            score += query[i as usize] * f32::cast_from(key_pool[(base + i) as usize]);
        }
        let new_max = max(running_max, score);
        let rescale = f32::exp(running_max - new_max);
        let weight = f32::exp(score - new_max);
        running_sum = running_sum * rescale + weight;
        #[unroll]
        for i in 0..head_dim {
            acc[i as usize] = acc[i as usize] * rescale + weight * f32::cast_from(value_pool[(base + i) as usize]);
        }
        running_max = new_max;
    }
    #[unroll]
    for i in 0..head_dim {
        out[(q_base + i) as usize] = F::cast_from(acc[i as usize] / running_sum);
    }
}
