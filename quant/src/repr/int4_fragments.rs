//! An `Int4` weight repacked for the tensor-core kernel ([`crate::kernels::int4_mma`]):
//! the nibbles of each 64 (K) × 16 (N) block ordered by the `mma.m16n8k16` B-fragment
//! layout, built from the K-packed repr with Burn int ops on the weight's device.
//!
//! Value `(k, n)` of block `(k / 64, n / 16)` decomposes as `k = 64·kb + 16·w + 8·half +
//! 2t + pair` and `n = 16·nb + 8·j + g`. It goes to lane `4g + t`, word `w`, nibble slot
//! `4·pair + 2j + half`: the lane's four words are its B registers for the block's four
//! K steps, and slots `p` and `p + 4` of a word are the two K rows of one register.

use burn::tensor::{Int, Tensor};

use super::{ExpertStack, PackedIntWeight, ZeroPoints};
use crate::kernels::int4_mma::{K_BLOCK, LANES, N_BLOCK, WORDS_PER_LANE};
use crate::packing::{pack, unpack};

/// Source dims `[kb, w, half, t, pair, nb, j, g]` to `[kb, nb, g, t, w, pair, j, half]`.
const TO_FRAGMENTS: [usize; 8] = [0, 5, 7, 3, 1, 4, 6, 2];
/// The inverse permutation.
const FROM_FRAGMENTS: [usize; 8] = [0, 4, 7, 3, 5, 1, 6, 2];

#[derive(Debug, Clone)]
pub struct Int4Fragments {
    /// Experts stacked along K (1 for a plain linear).
    pub experts: usize,
    /// Input features per expert.
    pub in_features: usize,
    pub out_features: usize,
    /// Rows per group; a multiple of 16, or `in_features` for one group per column.
    pub group_size: usize,
    /// `[E · K/64 · N/16 · 32 · 4]` i32 words.
    pub words: Tensor<1, Int>,
    /// `[E·G, N]` f32, as in the K-packed repr.
    pub scales: Tensor<2>,
    pub zeros: ZeroPoints,
}

impl Int4Fragments {
    /// Why `weight` cannot be repacked, if it cannot: the kernel takes 4-bit values in
    /// contiguous groups of a multiple of 16 rows, K a multiple of 64 and N of 16.
    pub fn unsupported(weight: &PackedIntWeight) -> Option<String> {
        Self::unsupported_layout(weight.bits, weight.in_features, weight.out_features, weight.group_size, weight.groups_contiguous)
    }

    /// Why a mixture-of-experts stack cannot be repacked ([`Self::repack_stack`]), if it cannot.
    pub fn unsupported_stack(stack: &ExpertStack) -> Option<String> {
        Self::unsupported_layout(stack.bits, stack.in_features, stack.out_features, stack.group_size, true)
    }

    fn unsupported_layout(bits: u32, k: usize, n: usize, group: usize, groups_contiguous: bool) -> Option<String> {
        if bits != 4 {
            Some(format!("{bits}-bit values (the tensor-core kernel takes 4-bit)"))
        } else if !groups_contiguous {
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
        Ok(Self {
            experts: 1,
            in_features: k,
            out_features: n,
            group_size: weight.group_size.min(k),
            words: fragment_words(weight.packed.clone(), k, n),
            scales: weight.scales.clone(),
            zeros: weight.zeros.clone(),
        })
    }

    /// The fragment-ordered copy of a mixture-of-experts stack: each expert's K rows are
    /// whole 64-row blocks, so repacking the stack as one tall weight keeps the experts
    /// apart, one after another.
    pub fn repack_stack(stack: &ExpertStack) -> Result<Self, String> {
        let (k, n) = (stack.in_features, stack.out_features);
        if let Some(reason) = Self::unsupported_stack(stack) {
            return Err(reason);
        }
        Ok(Self {
            experts: stack.experts,
            in_features: k,
            out_features: n,
            group_size: stack.group_size.min(k),
            words: fragment_words(stack.packed.clone(), stack.experts * k, n),
            scales: stack.scales.clone(),
            zeros: stack.zeros.clone(),
        })
    }

    /// The 4-bit values `[E·K, N]` back in stored row order (the inverse of the repack).
    pub fn values(&self) -> Tensor<2, Int> {
        let (k, n) = (self.experts * self.in_features, self.out_features);
        unpack(self.words.clone().reshape([k * n / 8, 1]), 4, 1)
            .reshape([k / 64, n / 16, 8, 4, 4, 2, 2, 2])
            .permute(FROM_FRAGMENTS)
            .reshape([k, n])
    }
}

/// K-packed 4-bit words `[k/8, n]` in fragment order, `[k/64 · n/16 · 32 · 4]`.
fn fragment_words(packed: Tensor<2, Int>, k: usize, n: usize) -> Tensor<1, Int> {
    let blocks = unpack(packed, 4, 0).reshape([k / 64, 4, 2, 4, 2, n / 16, 2, 8]).permute(TO_FRAGMENTS).reshape([k * n / 8, 8]);
    debug_assert_eq!(k * n / 8, (k / K_BLOCK as usize) * (n / N_BLOCK as usize) * (LANES * WORDS_PER_LANE) as usize);
    pack(blocks, 4, 1).reshape([k * n / 8])
}
