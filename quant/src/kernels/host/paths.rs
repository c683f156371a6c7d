//! Which host path a product takes at a row count: the fused register kernels, the tiles
//! decoded for the `gemm` crate, or AMX's tile unit, per weight family and vector set,
//! with the measurements behind each threshold.

use super::{vector_isa, VectorIsa};
#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(target_arch = "x86_64")]
use super::half_gemm::HalfFormat;
#[cfg(target_arch = "x86_64")]
use super::vnni;
use crate::repr::{ActivationQuant, Fp8Weight, W8A8Weight};

/// Rows from which a product of float weights (f16 / bf16) decodes tiles for the `gemm`
/// crate rather than running the fused register kernel, whose blocks of rows and
/// channels fall behind the crate's register-blocked micro-kernels there. The wider the
/// kernel's vectors and blocks, the later (BENCHMARKS.md, "Blocks of channels in the
/// register kernels": at 4096², bf16 weights with AVX-512 16.1 ms fused against 24.6
/// tiled at 128 rows, level by 1024; with AVX2 12.4 against 14.7 at 64 rows, 26.2
/// against 24.1 at 128).
pub fn float_tiled_rows() -> usize {
    match vector_isa() {
        VectorIsa::Amx | VectorIsa::Avx512 => 1024,
        VectorIsa::Avx2 => 128,
        VectorIsa::Baseline => 16,
    }
}

/// The rows from which a product of a float weight (f16 / bf16) with `k` columns takes
/// the tiled path: none where AMX's tile unit takes it from [`amx::half::min_rows`]
/// ([`left_operand_on_tiles`]), otherwise [`float_tiled_rows`].
pub fn half_tiled_rows(k: usize) -> usize {
    match left_operand_on_tiles(k) {
        true => usize::MAX,
        false => float_tiled_rows(),
    }
}

/// Whether a weight of `k` columns read as the tile products' left operand against
/// float activations (float weights, and 8-bit ones widened: [`amx::left_weights`])
/// runs on AMX's tile unit from enough rows: the CPU has it, and K is whole 32-column
/// steps.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn left_operand_on_tiles(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return vector_isa() == VectorIsa::Amx && amx::left_weights::takes(k);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`float_tiled_rows`] for packed integer weights, whose fused kernel unpacks a word for
/// eight rows: it stays ahead of the tiles up to 32 rows (BENCHMARKS.md, at 4096² and 16
/// rows: Int4 5.4–5.8 ms fused against 6.9–7.2 tiled; at 64 rows the tiles lead or tie).
pub const INT_TILED_ROWS: usize = 32;

/// The rows from which a product of a `bits`-bit packed weight with `k` rows in groups
/// of `group_size` (stored contiguously, or not: uneven act-order groups) takes the
/// tiled path: none where AMX's tile unit takes it from [`amx::packed::MIN_ROWS`] rows
/// ([`int_on_tiles`]), otherwise [`INT_TILED_ROWS`].
pub fn int_tiled_rows(bits: u32, k: usize, group_size: usize, groups_contiguous: bool) -> usize {
    match int_on_tiles(bits, k, group_size, groups_contiguous) {
        true => usize::MAX,
        false => INT_TILED_ROWS,
    }
}

/// Whether a packed integer product of enough rows runs on AMX's tile unit: the CPU has
/// it, and each group is whole steps of its bf16 tiles (32 rows) or spans K.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn int_on_tiles(bits: u32, k: usize, group_size: usize, groups_contiguous: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    return vector_isa() == VectorIsa::Amx && amx::packed::takes(bits, k, group_size, groups_contiguous);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The rows from which a W8A8 product takes the tiled path. With quantized activations
/// and AVX-512 VNNI, none: the fused kernel's byte dot products (64 a step, exact in i32,
/// or AMX's tile products from [`amx::int8::MIN_ROWS`] rows) outrun the tiles' f32
/// products at every row count measured (at 4096² and 128 rows 20.0 ms against 39.7,
/// 3.6 on AMX); without VNNI, [`INT_TILED_ROWS`]; with float activations, none where
/// AMX's tile unit takes the product (from [`amx::byte_weights::MIN_ROWS`] rows),
/// otherwise [`byte_tiled_rows`] (the int8 weights decode in the e4m3 kernel's loop).
pub fn w8a8_tiled_rows(weight: &W8A8Weight) -> usize {
    match weight.activations {
        ActivationQuant::None if left_operand_on_tiles(weight.in_features) => usize::MAX,
        ActivationQuant::None => byte_tiled_rows(false),
        #[cfg(target_arch = "x86_64")]
        _ if vnni() => usize::MAX,
        _ => INT_TILED_ROWS,
    }
}

/// [`float_tiled_rows`] for 8-bit weights with float activations (e4m3, and int8 in
/// W8A8 layers whose activations stay float), whose fused kernel decodes a step's bytes
/// for each block of rows, and with `block_scales` (a scale per 128 columns, say) scales
/// each chunk's sums apart. e4m3 at 4096² (BENCHMARKS.md, "Blocks of channels in the
/// register kernels"), channel scales: with AVX-512 11.5 ms fused against 14.4 tiled at
/// 64 rows, 25.5 against 23.2 at 128; with AVX2 5.3 against 6.4 at 16, 10.7 against 9.3
/// at 32. 128×128 blocks: with AVX-512 5.8 against 5.9 at 16, 11.7 against 9.6 at 32;
/// with AVX2 7.6 against 6.4 at 16.
pub fn byte_tiled_rows(block_scales: bool) -> usize {
    match (vector_isa(), block_scales) {
        (VectorIsa::Amx | VectorIsa::Avx512, false) => 128,
        (VectorIsa::Amx | VectorIsa::Avx512, true) => 32,
        (VectorIsa::Avx2, false) => 32,
        (VectorIsa::Avx2, true) => 16,
        (VectorIsa::Baseline, _) => 8,
    }
}

/// The products AMX's tile unit takes, each family from its own row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileProducts {
    /// Products of 8-bit weights (int8, e4m3) with quantized activations or float ones.
    Bytes,
    /// Packed integer products (Int4 / Int8 weight-only) with float activations.
    PackedInt,
    /// Float weights stored in bf16, with float activations.
    Bf16Weights,
    /// Float weights stored in f16, with float activations.
    F16Weights,
}

/// The rows from which `products` run on AMX's tile unit, or `None` where
/// [`vector_isa`] does not allow it.
pub fn amx_rows(products: TileProducts) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if vector_isa() == VectorIsa::Amx {
        const { assert!(amx::int8::MIN_ROWS == amx::byte_weights::MIN_ROWS, "one threshold to report for byte products") };
        return Some(match products {
            TileProducts::Bytes => amx::int8::MIN_ROWS,
            TileProducts::PackedInt => amx::packed::MIN_ROWS,
            TileProducts::Bf16Weights => amx::half::min_rows(HalfFormat::BF16),
            TileProducts::F16Weights => amx::half::min_rows(HalfFormat::F16),
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = products;
    None
}

/// How a host product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPath {
    /// The fused kernel: words unpacked in registers, nothing written but the output.
    Fused,
    /// The weight decoded one cache-sized tile at a time, each tile multiplied by every
    /// row with the `gemm` crate.
    Tiled,
}

impl HostPath {
    /// The path for `rows` rows, tiled from `tiled_rows`.
    pub fn for_rows(rows: usize, tiled_rows: usize) -> Self {
        if rows >= tiled_rows { Self::Tiled } else { Self::Fused }
    }
}

/// The rows from which an FP8 product takes the tiled path: none where it runs on AMX's
/// tile unit from [`amx::byte_weights::MIN_ROWS`] rows ([`fp8_on_tiles`]; at 4096² and
/// 128 rows with channel scales its bf16 products take 8.1 ms against the tiles' 37.1
/// with e4m3 activation codes, 9.6 against 23.0 with float activations), otherwise
/// [`byte_tiled_rows`].
pub fn fp8_tiled_rows(weight: &Fp8Weight) -> usize {
    let block_scales = weight.block.is_some_and(|[_, columns]| columns < weight.in_features);
    match fp8_on_tiles(weight) {
        true => usize::MAX,
        false => byte_tiled_rows(block_scales),
    }
}

/// Whether an FP8 product of enough rows runs on AMX's tile unit: the CPU has it, and
/// the activation scales' chunks of K line up with the weight's (one per row or tensor,
/// or per group of the weight's block width; float activations carry none, but need K
/// of whole 32-column steps). Scale chunks must be whole steps of the bf16 tiles (32
/// columns) unless one spans K.
pub(super) fn fp8_on_tiles(weight: &Fp8Weight) -> bool {
    let k = weight.in_features;
    let group = match weight.activations {
        ActivationQuant::DynamicPerGroup(group) => Some(group),
        ActivationQuant::None | ActivationQuant::DynamicPerToken | ActivationQuant::DynamicPerTensor | ActivationQuant::Static(_) => None,
    };
    let chunk = match (weight.block.map(|[_, bk]| bk), group) {
        (None, None) => k,
        (Some(columns), None) | (None, Some(columns)) => columns,
        (Some(bk), Some(group)) if bk == group => bk,
        _ => return false,
    };
    #[cfg(target_arch = "x86_64")]
    {
        let whole_steps = chunk >= k || (chunk > 0 && chunk.is_multiple_of(amx::left_weights::COLUMNS));
        let float_activations = matches!(weight.activations, ActivationQuant::None);
        vector_isa() == VectorIsa::Amx && whole_steps && (!float_activations || left_operand_on_tiles(k))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = chunk;
        false
    }
}
