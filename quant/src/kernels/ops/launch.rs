//! The Cube backend's kernel launches behind [`super::KernelOps`]: buffers made
//! contiguous, placeholders for unused bindings, grid shapes, and the comptime switches
//! each kernel variant is compiled for.

use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::ir::{ElemType, FloatKind, IntKind};
use cubecl::prelude::*;

use super::{byte_mma_output_shape, int_mma_output_shape, ByteMmaLayout, Fp8GemmLayout, GroupBuffer, IntGemmLayout, IntGemmTiling, IntMmaLayout, ZeroBuffer};
use crate::kernels::int_gemm::{self, zero_mode, CUBE_UNITS, TILE_MAP_STRIDE, TILE_N};
use crate::kernels::{byte_mma, fp8_gemm, int_gemm_tiled, int_mma};

pub(super) fn launch_int_gemm(
    x: CubeTensor,
    packed: CubeTensor,
    scales: CubeTensor,
    zeros: ZeroBuffer<CubeBackend>,
    groups: GroupBuffer<CubeBackend>,
    tiles: Option<CubeTensor>,
    layout: IntGemmLayout,
) -> CubeTensor {
    let shape = x.shape();
    let (m, k, n) = (shape[0], shape[1], packed.shape()[1]);
    let per_word = 32 / layout.bits as usize;
    let experts = packed.shape()[0] / (k / per_word).max(1);
    let groups_per_expert = scales.shape()[0] / experts.max(1);
    let client = x.client.clone();
    let out = empty_device_dtype(client.clone(), x.device.clone(), Shape::from([m, n]), x.dtype);
    if m == 0 || n == 0 {
        return out;
    }
    let placeholder = |dtype: DType| empty_device_dtype(client.clone(), x.device.clone(), Shape::from([1]), dtype);
    let (zeros_mode, zeros, offsets) = zero_point_buffers(zeros, &x);
    let (group_size, group_index) = match groups {
        GroupBuffer::Contiguous => (layout.group_size, placeholder(DType::I32)),
        GroupBuffer::Indexed(index) => (0, index),
    };
    let elem = float_elem(x.dtype);
    let row_tiles = match &tiles {
        Some(map) => (map.shape()[0] as u32) / TILE_MAP_STRIDE,
        None => (m as u32).div_ceil(layout.tiling.rows_per_tile()),
    };
    let grouped = tiles.is_some();
    let tiles = tiles.unwrap_or_else(|| placeholder(DType::U32));
    let (x, packed, scales) = (into_contiguous(x).into_buffer_arg(), into_contiguous(packed).into_buffer_arg(), into_contiguous(scales).into_buffer_arg());
    let (zeros, offsets) = (into_contiguous(zeros).into_buffer_arg(), into_contiguous(offsets).into_buffer_arg());
    let (group_index, tiles) = (into_contiguous(group_index).into_buffer_arg(), into_contiguous(tiles).into_buffer_arg());
    let (m, k, n, groups_per_expert) = (m as u32, k as u32, n as u32, groups_per_expert as u32);
    // SAFETY: every index the kernels form is bounded by m, k and n, which are the
    // buffers' own shapes (x `[m, k]`, packed `[E·k/per_word, n]`, scales and zeros
    // `[E·G, n]` with G covering every group, out `[m, n]`), and by the tile map,
    // whose experts and row ranges the caller builds within those shapes. The
    // shared-memory kernel steps through K in whole tiles, so it needs k to be a
    // multiple of TILE_K, which the selector checks.
    unsafe {
        match layout.tiling {
            IntGemmTiling::Registers { tile_m } => int_gemm::int_weight_gemm::launch_unchecked(
                &client,
                CubeCount::Static(n.div_ceil(CUBE_UNITS * TILE_N), row_tiles, 1),
                CubeDim::new_1d(CUBE_UNITS),
                x,
                packed,
                scales,
                zeros,
                offsets,
                group_index,
                tiles,
                out.clone().into_buffer_arg(),
                m,
                k,
                n,
                groups_per_expert,
                layout.bits,
                group_size,
                zeros_mode,
                tile_m,
                grouped,
                elem,
            ),
            IntGemmTiling::SharedMemory => int_gemm_tiled::int_weight_gemm_tiled::launch_unchecked(
                &client,
                CubeCount::Static(n.div_ceil(int_gemm_tiled::TILE_N), row_tiles, 1),
                CubeDim::new_2d(int_gemm_tiled::CUBE_SIDE, int_gemm_tiled::CUBE_SIDE),
                x,
                packed,
                scales,
                zeros,
                offsets,
                group_index,
                tiles,
                out.clone().into_buffer_arg(),
                m,
                k,
                n,
                groups_per_expert,
                layout.bits,
                group_size,
                zeros_mode,
                grouped,
                elem,
            ),
        }
    }
    out
}

/// Launches the tensor-core W4A16 / W8A16 kernel, grouped by expert when `tiles` is given.
pub(super) fn launch_int_mma(x: CubeTensor, words: CubeTensor, scales: CubeTensor, zeros: ZeroBuffer<CubeBackend>, tiles: Option<CubeTensor>, layout: IntMmaLayout) -> CubeTensor {
    let (m, k, n) = (x.shape()[0], x.shape()[1], scales.shape()[1]);
    let client = x.client.clone();
    let output = empty_device_dtype(client.clone(), x.device.clone(), int_mma_output_shape(&x.shape(), &scales.shape(), &layout), layout.output_dtype());
    if m == 0 || n == 0 || k == 0 {
        return output;
    }
    let experts = (words.shape()[0] / (k * n * layout.bits as usize / 32)).max(1);
    let groups_per_expert = scales.shape()[0] / experts;
    let (zeros_mode, zeros, offsets) = zero_point_buffers(zeros, &x);
    let (m, k, n) = (m as u32, k as u32, n as u32);
    let blocks_per_split = (k / int_mma::K_BLOCK).div_ceil(layout.splits.max(1));
    let row_tiles = match &tiles {
        Some(map) => (map.shape()[0] as u32) / TILE_MAP_STRIDE,
        None => m.div_ceil(int_mma::M_TILE * layout.m_tiles),
    };
    let grouped = tiles.is_some();
    let tiles = tiles.unwrap_or_else(|| empty_device_dtype(client.clone(), x.device.clone(), Shape::from([1]), DType::U32));
    let cube_count = CubeCount::Static((n / int_mma::N_BLOCK).div_ceil(layout.warps), layout.splits, row_tiles);
    let bf16 = x.dtype == DType::BF16;
    let elem = float_elem(x.dtype);
    let (stages, staged_activations) = (layout.staging.ring_stages(), layout.staging.stages_activations());
    assert!(layout.k_slices >= 1 && (layout.k_slices == 1 || !staged_activations), "int_mma: warps slice K only when the activations load directly");
    // A binding must hold at least one vector: each unused one gets a 16-byte placeholder.
    let device = x.device.clone();
    let placeholder = |dtype: DType| empty_device_dtype(client.clone(), device.clone(), Shape::from([8]), dtype);
    // With one K split the output is written in the activations' dtype, otherwise as f32
    // partial products.
    let direct = layout.splits <= 1;
    let (out, partials) = match direct {
        true => (output.clone(), placeholder(DType::F32)),
        false => (placeholder(layout.dtype), output.clone()),
    };
    // The activations go in as pairs (direct loads) or as 16-byte pieces (staged).
    let (x_pairs, x_pieces) = match staged_activations {
        false => (x, placeholder(layout.dtype)),
        true => (placeholder(layout.dtype), x),
    };
    // SAFETY: the caller guarantees k % 64 == 0 and n % 16 == 0 (IntFragments checks
    // both), x `[m, k]`, words `[E · k/64 · n/16 · 32 · bits]` for E experts, scales and zeros
    // `[E·G, n]` with G·group_size covering k, and a tile map whose experts and row ranges
    // lie within those shapes. The kernel clamps rows to the tile's last row and column
    // blocks to n/16-1 before reading (directly or into its stages, which it indexes
    // within `stages · 16·m_tiles · 9` activation pieces and
    // `stages · warps · k_slices · 32 · bits/4` weight pieces), reads K blocks below k/64
    // only, and writes out `[m, n]` or partials `[splits·m, n]` for rows inside its tile
    // and column blocks below n/16 only.
    unsafe {
        int_mma::int_mma_gemm::launch_unchecked(
            &client,
            cube_count,
            CubeDim::new_2d(int_mma::LANES, layout.warps * layout.k_slices),
            into_contiguous(x_pairs).into_buffer_arg(),
            into_contiguous(x_pieces).into_buffer_arg(),
            into_contiguous(words).into_buffer_arg(),
            into_contiguous(scales).into_buffer_arg(),
            into_contiguous(zeros).into_buffer_arg(),
            into_contiguous(offsets).into_buffer_arg(),
            into_contiguous(tiles).into_buffer_arg(),
            partials.into_buffer_arg(),
            out.into_buffer_arg(),
            m,
            k,
            n,
            groups_per_expert as u32,
            blocks_per_split,
            layout.bits,
            layout.e4m3,
            layout.group_size,
            zeros_mode,
            bf16,
            layout.m_tiles,
            layout.warps,
            layout.k_slices,
            stages,
            staged_activations,
            layout.tensor_cores,
            layout.bit_dequant,
            grouped,
            direct,
            elem,
        );
    }
    output
}

/// Launches the FP8 kernel on `x` (weight-only) or `a_codes` (quantized activations);
/// the other is a placeholder.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch_fp8_gemm(
    x: CubeTensor,
    a_codes: CubeTensor,
    a_scales: CubeTensor,
    w_codes: CubeTensor,
    w_scales: CubeTensor,
    m: usize,
    quantized_input: bool,
    layout: Fp8GemmLayout,
) -> CubeTensor {
    let (n, k_words) = (w_codes.shape()[0], w_codes.shape()[1]);
    let client = w_codes.client.clone();
    let out = empty_device_dtype(client.clone(), w_codes.device.clone(), Shape::from([m, n]), layout.out_dtype);
    if m == 0 || n == 0 {
        return out;
    }
    let scales = layout.scales;
    let chunk_words = (scales.chunk / 4).max(1);
    let cube_count = CubeCount::Static((n as u32).div_ceil(CUBE_UNITS * TILE_N), (m as u32).div_ceil(layout.tile_m), 1);
    // SAFETY: rows and columns are clamped to m-1 and n-1 before any read of x `[m,
    // 4·k_words]`, a_codes `[m, k_words]` or w_codes `[n, k_words]`; the caller's strides
    // address the scale buffers within their shapes for every (row, column, chunk) with
    // chunk < ⌈k_words / chunk_words⌉; out is written only below (m, n).
    unsafe {
        fp8_gemm::fp8_gemm::launch_unchecked(
            &client,
            cube_count,
            CubeDim::new_1d(CUBE_UNITS),
            into_contiguous(x).into_buffer_arg(),
            into_contiguous(a_codes).into_buffer_arg(),
            into_contiguous(a_scales).into_buffer_arg(),
            into_contiguous(w_codes).into_buffer_arg(),
            into_contiguous(w_scales).into_buffer_arg(),
            out.clone().into_buffer_arg(),
            m as u32,
            k_words as u32,
            n as u32,
            chunk_words,
            scales.a_row,
            scales.a_chunk,
            scales.w_col_div.max(1),
            scales.w_row,
            scales.w_chunk,
            quantized_input,
            layout.tile_m,
            float_elem(layout.out_dtype),
        );
    }
    out
}

/// The zero-point mode and the integer-zeros and float-offsets buffers the integer
/// kernels take, with one-element placeholders for the ones the mode does not read.
pub(super) fn zero_point_buffers(zeros: ZeroBuffer<CubeBackend>, like: &CubeTensor) -> (u32, CubeTensor, CubeTensor) {
    let placeholder = |dtype: DType| empty_device_dtype(like.client.clone(), like.device.clone(), Shape::from([1]), dtype);
    match zeros {
        ZeroBuffer::Midpoint => (zero_mode::MIDPOINT, placeholder(DType::I32), placeholder(DType::F32)),
        ZeroBuffer::Integer(z) => (zero_mode::INTEGER, z, placeholder(DType::F32)),
        ZeroBuffer::Float(o) => (zero_mode::FLOAT, placeholder(DType::I32), o),
    }
}

pub(super) fn float_elem(dtype: DType) -> ElemType {
    match dtype {
        DType::F16 => ElemType::Float(FloatKind::F16),
        DType::BF16 => ElemType::Float(FloatKind::BF16),
        _ => ElemType::Float(FloatKind::F32),
    }
}

/// Launches `byte_mma` on activation codes `a` `[M, K/4]`, or with `quantize` on float
/// activations `a` `[M, K]` that the kernel quantizes with the one scale in `a_scales`.
pub(super) fn launch_byte_mma(a: CubeTensor, quantize: bool, a_scales: CubeTensor, w_codes: CubeTensor, w_scales: CubeTensor, layout: ByteMmaLayout) -> CubeTensor {
    let k = if quantize { a.shape()[1] } else { a.shape()[1] * 4 };
    let (m, n) = (a.shape()[0], w_codes.shape()[0]);
    let client = a.client.clone();
    let output = empty_device_dtype(client.clone(), a.device.clone(), byte_mma_output_shape(&a.shape(), &w_codes.shape(), &layout), layout.output_dtype());
    if m == 0 || n == 0 || k == 0 {
        return output;
    }
    let device = a.device.clone();
    let placeholder_of = |len: usize, dtype: DType| empty_device_dtype(client.clone(), device.clone(), Shape::from([len]), dtype);
    let placeholder = |dtype: DType| placeholder_of(1, dtype);
    let direct = layout.splits <= 1;
    let (out, partials) = match direct {
        true => (output.clone(), placeholder(DType::F32)),
        false => (placeholder(layout.out_dtype), output.clone()),
    };
    let (m, k, n) = (m as u32, k as u32, n as u32);
    let blocks_per_split = (k / byte_mma::K_BLOCK).div_ceil(layout.splits.max(1));
    let tiling = layout.tiling;
    assert_ne!(tiling.stages, 1, "byte_mma: one stage cannot be refilled while it is read (0 for direct loads, or at least 2)");
    assert!(tiling.stages > 0 || !tiling.staged_activations, "byte_mma: staged activations need a copy ring");
    assert!(!quantize || !tiling.staged_activations, "byte_mma quantizes activations only as it loads them directly");
    let (a_codes, x) = match quantize {
        true => {
            assert_eq!(a.dtype, layout.out_dtype, "byte_mma quantizes activations of the output's dtype");
            // One vector of each unused operand: a binding holds at least one element.
            (placeholder_of(4, DType::I32), a)
        }
        false => (a, placeholder_of(8, layout.out_dtype)),
    };
    let cube_count = CubeCount::Static(n.div_ceil(tiling.cube_columns()), layout.splits.max(1), m.div_ceil(tiling.cube_rows()));
    let scales = layout.scales;
    let chunk_blocks = (scales.chunk / byte_mma::K_BLOCK).max(1);
    let accumulator = match layout.fp8 {
        true => ElemType::Float(FloatKind::F32),
        false => ElemType::Int(IntKind::I32),
    };
    // SAFETY: the caller guarantees k % 64 == 0 (a_codes `[m, k/4]` or x `[m, k]`,
    // w_codes `[n, k/4]`) and strides that address the scale buffers within their shapes
    // for every row, column and chunk below ⌈k / chunk⌉. The kernel clamps rows to m-1
    // and columns to n-1 before reading (directly or into its stage, which it indexes
    // within `stages · (staged cube rows + cube columns) · 4` pieces), reads K blocks below k/64
    // only, and writes out `[m, n]` or partials `[splits·m, n]` below (m, n) only.
    unsafe {
        byte_mma::byte_mma_gemm::launch_unchecked(
            &client,
            cube_count,
            CubeDim::new_2d(byte_mma::LANES, tiling.warps()),
            into_contiguous(a_codes).into_buffer_arg(),
            into_contiguous(x).into_buffer_arg(),
            into_contiguous(a_scales).into_buffer_arg(),
            into_contiguous(w_codes).into_buffer_arg(),
            into_contiguous(w_scales).into_buffer_arg(),
            partials.into_buffer_arg(),
            out.into_buffer_arg(),
            m,
            k,
            n,
            chunk_blocks,
            scales.a_row,
            scales.a_chunk,
            scales.w_col_div.max(1),
            scales.w_row,
            scales.w_chunk,
            blocks_per_split,
            layout.fp8,
            tiling,
            chunk_blocks < k / byte_mma::K_BLOCK,
            quantize,
            layout.tensor_cores,
            direct,
            [float_elem(layout.out_dtype), accumulator],
        );
    }
    output
}
