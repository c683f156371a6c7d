//! Kernels (DESIGN.md §Kernels). Each op has the Burn-ops reference (in `crate::repr`, the
//! oracle for tests and the path on Flex), a portable CubeCL kernel for every Cube runtime,
//! and a selector that picks one per call and can say why.

pub mod codegen;
pub mod int_gemm;
mod ops;
pub mod paged_attention;
pub mod select;

use burn::tensor::Tensor;

use crate::packing::int_tensor;
use crate::repr::{ExpertStack, PackedIntWeight, ZeroPoints};

pub use ops::{gemm_output_shape, same_shape, GroupBuffer, IntGemmLayout, KernelOps, PagedAttentionLayout, ZeroBuffer};
pub use select::{with_policy, AttentionKernel, IntGemmKernel, KernelPolicy, Selection};

/// `x · W` for an `Int4` / `Int8` weight through the kernel the selector picks.
pub fn int_weight_forward(weight: &PackedIntWeight, x: Tensor<2>) -> Tensor<2> {
    let rows = x.dims()[0];
    match select::int_gemm(weight, &x.device(), x.dtype(), rows).kernel {
        IntGemmKernel::Reference => weight.forward_reference(x),
        IntGemmKernel::Portable { tile_m } => int_weight_gemm(weight, x, tile_m),
    }
}

/// The portable CubeCL kernel on a Cube device (panics on Flex, which the selector never
/// sends here).
pub fn int_weight_gemm(weight: &PackedIntWeight, x: Tensor<2>, tile_m: u32) -> Tensor<2> {
    use burn::backend::Dispatch;

    let x = weight.ordered_input(x);
    let zeros = zero_buffer(&weight.zeros);
    // The kernel's contiguous path takes one group per packed word.
    let per_word = crate::packing::per_word(weight.bits);
    let groups = match weight.groups_contiguous && weight.group_size % per_word == 0 {
        true => GroupBuffer::Contiguous,
        false => GroupBuffer::Indexed(weight.group_index.clone().into_dispatch()),
    };
    let layout = IntGemmLayout { bits: weight.bits, group_size: weight.group_size as u32, tile_m };
    Tensor::from_dispatch(<Dispatch as KernelOps>::int_weight_gemm(
        x.into_dispatch(),
        weight.packed.clone().into_dispatch(),
        weight.scales.clone().into_dispatch(),
        zeros,
        groups,
        layout,
    ))
}

/// One grouped launch for a mixture-of-experts projection: `x` holds `rows_per_expert[e]`
/// rows for each expert `e`, in expert order; returns `[rows, N]` in the same order.
pub fn grouped_int_weight_gemm(stack: &ExpertStack, x: Tensor<2>, rows_per_expert: &[usize], tile_m: u32) -> Tensor<2> {
    use burn::backend::Dispatch;

    let mut tiles = Vec::new();
    let mut start = 0usize;
    for (expert, &rows) in rows_per_expert.iter().enumerate() {
        let end = start + rows;
        for first in (start..end).step_by(tile_m as usize) {
            tiles.extend([expert, first, (first + tile_m as usize).min(end)].map(|v| v as i32));
        }
        start = end;
    }
    let len = tiles.len();
    let tiles = int_tensor(tiles, [len], &x.device());
    let layout = IntGemmLayout { bits: stack.bits, group_size: stack.group_size as u32, tile_m };
    Tensor::from_dispatch(<Dispatch as KernelOps>::grouped_int_weight_gemm(
        x.into_dispatch(),
        stack.packed.clone().into_dispatch(),
        stack.scales.clone().into_dispatch(),
        zero_buffer(&stack.zeros),
        tiles.into_dispatch(),
        layout,
    ))
}

fn zero_buffer(zeros: &ZeroPoints) -> ZeroBuffer<burn::backend::Dispatch> {
    match zeros {
        ZeroPoints::Midpoint => ZeroBuffer::Midpoint,
        ZeroPoints::Integer(z) => ZeroBuffer::Integer(z.clone().into_dispatch()),
        ZeroPoints::Float(o) => ZeroBuffer::Float(o.clone().into_dispatch()),
    }
}

/// Decode attention on the paged pools through the CubeCL kernel (a Cube device; see
/// [`paged_attention`]). `q` is `[batch, heads, head_dim]`.
pub fn paged_decode_attention(
    q: Tensor<3>,
    key_pool: Tensor<3>,
    value_pool: Tensor<3>,
    block_tables: Tensor<2, burn::tensor::Int>,
    context_lens: Tensor<1, burn::tensor::Int>,
    layout: PagedAttentionLayout,
) -> Tensor<3> {
    use burn::backend::Dispatch;

    Tensor::from_dispatch(<Dispatch as KernelOps>::paged_decode_attention(
        q.into_dispatch(),
        key_pool.into_dispatch(),
        value_pool.into_dispatch(),
        block_tables.into_dispatch(),
        context_lens.into_dispatch(),
        layout,
    ))
}
