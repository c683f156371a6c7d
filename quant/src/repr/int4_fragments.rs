//! An `Int4` weight repacked for the tensor-core kernel ([`crate::kernels::int4_mma`]):
//! the nibbles of each 64 (K) × 16 (N) block ordered by the `mma.m16n8k16` B-fragment
//! layout, built from the K-packed repr with Burn int ops on the weight's device.
//!
//! Value `(k, n)` of block `(k / 64, n / 16)` decomposes as `k = 64·kb + 16·w + 8·half +
//! 2t + pair` and `n = 16·nb + 8·j + g`. It goes to lane `4g + t`, word `w`, nibble slot
//! `4·pair + 2j + half`: the lane's four words are its B registers for the block's four
//! K steps, and slots `p` and `p + 4` of a word are the two K rows of one register.

use burn::tensor::{Int, Tensor};

use super::{PackedIntWeight, ZeroPoints};
use crate::kernels::int4_mma::{K_BLOCK, LANES, N_BLOCK, WORDS_PER_LANE};
use crate::packing::{pack, unpack};

/// Source dims `[kb, w, half, t, pair, nb, j, g]` to `[kb, nb, g, t, w, pair, j, half]`.
const TO_FRAGMENTS: [usize; 8] = [0, 5, 7, 3, 1, 4, 6, 2];
/// The inverse permutation.
const FROM_FRAGMENTS: [usize; 8] = [0, 4, 7, 3, 5, 1, 6, 2];

#[derive(Debug, Clone)]
pub struct Int4Fragments {
    pub in_features: usize,
    pub out_features: usize,
    /// Rows per group; a multiple of 16, or `in_features` for one group per column.
    pub group_size: usize,
    /// `[K/64 · N/16 · 32 · 4]` i32 words.
    pub words: Tensor<1, Int>,
    /// `[G, N]` f32, as in the K-packed repr.
    pub scales: Tensor<2>,
    pub zeros: ZeroPoints,
}

impl Int4Fragments {
    /// Why `weight` cannot be repacked, if it cannot: the kernel takes 4-bit values in
    /// contiguous groups of a multiple of 16 rows, K a multiple of 64 and N of 16.
    pub fn unsupported(weight: &PackedIntWeight) -> Option<String> {
        let (k, n, group) = (weight.in_features, weight.out_features, weight.group_size);
        if weight.bits != 4 {
            Some(format!("{}-bit values (the tensor-core kernel takes 4-bit)", weight.bits))
        } else if !weight.groups_contiguous {
            Some("act-order groups of uneven size".into())
        } else if k % K_BLOCK as usize != 0 || n % N_BLOCK as usize != 0 {
            Some(format!("[{k}x{n}] does not tile into {K_BLOCK}x{N_BLOCK} blocks"))
        } else if group % 16 != 0 && group < k {
            Some(format!("group size {group} is not a multiple of 16"))
        } else {
            None
        }
    }

    /// The fragment-ordered copy of `weight` (rows in stored order, so act-order weights
    /// keep their input permutation in `weight`), or why not.
    pub fn repack(weight: &PackedIntWeight) -> Result<Self, String> {
        if let Some(reason) = Self::unsupported(weight) {
            return Err(reason);
        }
        let (k, n) = (weight.in_features, weight.out_features);
        let values = unpack(weight.packed.clone(), 4, 0);
        let blocks = values
            .reshape([k / 64, 4, 2, 4, 2, n / 16, 2, 8])
            .permute(TO_FRAGMENTS)
            .reshape([k * n / 8, 8]);
        let words = pack(blocks, 4, 1).reshape([k * n / 8]);
        debug_assert_eq!(k * n / 8, (k / K_BLOCK as usize) * (n / N_BLOCK as usize) * (LANES * WORDS_PER_LANE) as usize);
        Ok(Self {
            in_features: k,
            out_features: n,
            group_size: weight.group_size.min(k),
            words,
            scales: weight.scales.clone(),
            zeros: weight.zeros.clone(),
        })
    }

    /// The 4-bit values `[K, N]` back in stored row order (the inverse of [`Self::repack`]).
    pub fn values(&self) -> Tensor<2, Int> {
        let (k, n) = (self.in_features, self.out_features);
        unpack(self.words.clone().reshape([k * n / 8, 1]), 4, 1)
            .reshape([k / 64, n / 16, 8, 4, 4, 2, 2, 2])
            .permute(FROM_FRAGMENTS)
            .reshape([k, n])
    }
}
