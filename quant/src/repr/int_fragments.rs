//! A 4- or 8-bit integer weight repacked for the tensor-core kernel
//! ([`crate::kernels::int_mma`]): the values of each 64 (K) × 16 (N) block ordered by the
//! `mma.m16n8k16` B-fragment layout, built from the K-packed repr with Burn int ops on the
//! weight's device.
//!
//! Value `(k, n)` of block `(k / 64, n / 16)` decomposes as `k = 64·kb + 16·w + 8·half +
//! 2t + pair` and `n = 16·nb + 8·j + g`, and goes to lane `4g + t`. With 4 bits the lane
//! holds four words, one per K step `w`, and the value sits in nibble slot
//! `4·pair + 2j + half`; with 8 bits it holds eight, word `2w + j`, byte slot
//! `2·pair + half`. Either way one shift and mask (`(word >> s) & 0x000F000F` or
//! `0x00FF00FF`) extracts the two K rows of one B register as a pair.

use burn::tensor::{Int, Tensor};

use super::{ExpertStack, Fp8Weight, PackedIntWeight, ZeroPoints};
use crate::kernels::int_mma::{K_BLOCK, LANES, N_BLOCK};
use crate::packing::{pack, unpack};

/// Source dims `[kb, w, half, t, pair, nb, j, g]` to `[kb, nb, g, t, w, pair, j, half]`
/// (4 bits) or `[kb, nb, g, t, w, j, pair, half]` (8 bits), and the inverses.
const TO_FRAGMENTS_4: [usize; 8] = [0, 5, 7, 3, 1, 4, 6, 2];
const FROM_FRAGMENTS_4: [usize; 8] = [0, 4, 7, 3, 5, 1, 6, 2];
const TO_FRAGMENTS_8: [usize; 8] = [0, 5, 7, 3, 1, 6, 4, 2];
const FROM_FRAGMENTS_8: [usize; 8] = [0, 4, 7, 3, 6, 1, 5, 2];

#[derive(Debug, Clone)]
pub struct IntFragments {
    /// 4 or 8.
    pub bits: u32,
    /// The 8-bit values are e4m3 codes with no zero point (weight-only FP8) rather than
    /// unsigned integers.
    pub e4m3: bool,
    /// Experts stacked along K (1 for a plain linear).
    pub experts: usize,
    /// Input features per expert.
    pub in_features: usize,
    pub out_features: usize,
    /// Rows per group; a multiple of 16, or `in_features` for one group per column.
    pub group_size: usize,
    /// `[E · K/64 · N/16 · 32 · bits]` i32 words.
    pub words: Tensor<1, Int>,
    /// `[E·G, N]` f32, as in the K-packed repr.
    pub scales: Tensor<2>,
    pub zeros: ZeroPoints,
}

impl IntFragments {
    /// Why `weight` cannot be repacked, if it cannot: the kernel takes 4- or 8-bit values
    /// in contiguous groups of a multiple of 16 rows, K a multiple of 64 and N of 16.
    pub fn unsupported(weight: &PackedIntWeight) -> Option<String> {
        Self::unsupported_layout(weight.bits, weight.in_features, weight.out_features, weight.group_size, weight.groups_contiguous)
    }

    /// Why a mixture-of-experts stack cannot be repacked ([`Self::repack_stack`]), if it cannot.
    pub fn unsupported_stack(stack: &ExpertStack) -> Option<String> {
        Self::unsupported_layout(stack.bits, stack.in_features, stack.out_features, stack.group_size, true)
    }

    fn unsupported_layout(bits: u32, k: usize, n: usize, group: usize, groups_contiguous: bool) -> Option<String> {
        if bits != 4 && bits != 8 {
            Some(format!("{bits}-bit values (the tensor-core kernel takes 4- or 8-bit)"))
        } else if !groups_contiguous {
            Some("act-order groups of uneven size".into())
        } else if !k.is_multiple_of(K_BLOCK as usize) || !n.is_multiple_of(N_BLOCK as usize) {
            Some(format!("[{k}x{n}] does not tile into {K_BLOCK}x{N_BLOCK} blocks"))
        } else if !group.is_multiple_of(16) && group < k {
            Some(format!("group size {group} is not a multiple of 16"))
        } else {
            None
        }
    }

    /// Why an FP8 weight cannot be repacked for weight-only use ([`Self::repack_fp8`]).
    pub fn unsupported_fp8(weight: &Fp8Weight) -> Option<String> {
        let (k, n) = (weight.in_features, weight.out_features);
        match weight.block {
            Some([bn, bk]) if !n.is_multiple_of(bn) || !k.is_multiple_of(bk) => Some(format!("[{k}x{n}] is not whole {bn}x{bk} scale blocks")),
            Some([_, bk]) => Self::unsupported_layout(8, k, n, bk, true),
            None => Self::unsupported_layout(8, k, n, k, true),
        }
    }

    /// The fragment-ordered copy of an FP8 weight for the weight-only path: its e4m3 bytes
    /// in the 8-bit fragment layout, and its scales as per-column groups along K (one
    /// group for per-tensor and per-channel scales, `bk` rows for `[bn, bk]` blocks).
    pub fn repack_fp8(weight: &Fp8Weight) -> Result<Self, String> {
        if let Some(reason) = Self::unsupported_fp8(weight) {
            return Err(reason);
        }
        let (k, n) = (weight.in_features, weight.out_features);
        let [scale_rows, scale_cols] = weight.scales.dims();
        let (group_size, scales) = match weight.block {
            Some([bn, bk]) => {
                let per_block = weight.scales.clone().transpose().unsqueeze_dim::<3>(2).expand([scale_cols, scale_rows, bn]);
                (bk, per_block.reshape([scale_cols, n]))
            }
            None if scale_rows > 1 => (k, weight.scales.clone().transpose()),
            None => (k, weight.scales.clone().repeat_dim(1, n)),
        };
        let values = unpack(weight.codes.clone(), 8, 1).transpose();
        Ok(Self {
            bits: 8,
            e4m3: true,
            experts: 1,
            in_features: k,
            out_features: n,
            group_size,
            words: fragment_words(values, k, n, 8),
            scales,
            zeros: ZeroPoints::Midpoint,
        })
    }

    /// The fragment-ordered copy of `weight` (rows in stored order, so act-order weights
    /// keep their input permutation in `weight`), or why not.
    pub fn repack(weight: &PackedIntWeight) -> Result<Self, String> {
        if let Some(reason) = Self::unsupported(weight) {
            return Err(reason);
        }
        let (k, n) = (weight.in_features, weight.out_features);
        Ok(Self {
            bits: weight.bits,
            e4m3: false,
            experts: 1,
            in_features: k,
            out_features: n,
            group_size: weight.group_size.min(k),
            words: fragment_words(unpack(weight.packed.clone(), weight.bits, 0), k, n, weight.bits),
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
            bits: stack.bits,
            e4m3: false,
            experts: stack.experts,
            in_features: k,
            out_features: n,
            group_size: stack.group_size.min(k),
            words: fragment_words(unpack(stack.packed.clone(), stack.bits, 0), stack.experts * k, n, stack.bits),
            scales: stack.scales.clone(),
            zeros: stack.zeros.clone(),
        })
    }

    /// The values `[E·K, N]` back in stored row order (the inverse of the repack).
    pub fn values(&self) -> Tensor<2, Int> {
        let (k, n) = (self.experts * self.in_features, self.out_features);
        let (per_word, from) = match self.bits {
            4 => (8, FROM_FRAGMENTS_4),
            _ => (4, FROM_FRAGMENTS_8),
        };
        unpack(self.words.clone().reshape([k * n / per_word, 1]), self.bits, 1)
            .reshape([k / 64, n / 16, 8, 4, 4, 2, 2, 2])
            .permute(from)
            .reshape([k, n])
    }
}

/// Values `[k, n]` packed in fragment order, `[k/64 · n/16 · 32 · bits]` words.
fn fragment_words(values: Tensor<2, Int>, k: usize, n: usize, bits: u32) -> Tensor<1, Int> {
    let (per_word, to) = match bits {
        4 => (8, TO_FRAGMENTS_4),
        _ => (4, TO_FRAGMENTS_8),
    };
    let blocks = values.reshape([k / 64, 4, 2, 4, 2, n / 16, 2, 8]).permute(to).reshape([k * n / per_word, per_word]);
    debug_assert_eq!(k * n / per_word, (k / K_BLOCK as usize) * (n / N_BLOCK as usize) * (LANES * bits) as usize, "each lane holds 32 values of `bits` bits: `bits` words");
    pack(blocks, bits, 1).reshape([k * n / per_word])
}
