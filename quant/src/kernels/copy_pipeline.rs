//! The asynchronous-copy ring the tensor-core kernels stage operands through: each unit
//! issues `cp.async` copies for a K block, closes them as one group, and before reading a
//! block waits until at most `stages − 2` of its groups are in flight (then a barrier makes
//! every unit's copies visible). On runtimes without `cp.async` the copies are plain
//! loads and stores, and the group operations are no-ops.

use cubecl::prelude::barrier::copy_async;
use cubecl::prelude::*;

/// Copies K block `kb` of `rows` rows of `source`, from row `first` (rows past `last` read
/// `last`), into `stage` from `at`. A row is `row_pieces` 16-byte pieces long in `source`
/// (`scalars` scalars each), of which a block takes `block_pieces`; staged rows are
/// `stage_stride` pieces apart. The cube's `units` units each copy a share: `cp.async`
/// with `tensor_cores`, so nothing waits here; otherwise loads and stores, visible after
/// the next `sync_cube`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn stage_block<E: CubePrimitive>(
    source: &[E],
    stage: &mut Shared<[E]>,
    kb: u32,
    at: u32,
    first: u32,
    last: u32,
    row_pieces: u32,
    #[comptime] rows: u32,
    #[comptime] block_pieces: u32,
    #[comptime] stage_stride: u32,
    #[comptime] scalars: u32,
    #[comptime] units: u32,
    #[comptime] tensor_cores: bool,
) {
    let pieces = comptime!(rows * block_pieces);
    #[unroll]
    for round in 0..comptime!(pieces.div_ceil(units)) {
        let piece = round * units + UNIT_POS;
        if comptime!((round + 1) * units <= pieces) || piece < pieces {
            let row = piece / block_pieces;
            let column = piece % block_pieces;
            let from = (min(first + row, last) * row_pieces + kb * block_pieces + column) as usize;
            // Unpadded rows are one run of pieces (spelled so, ptxas keeps fewer registers).
            let to = if comptime!(stage_stride == block_pieces) { at + piece } else { at + row * stage_stride + column };
            copy_piece(source, from, stage, to as usize, scalars, tensor_cores);
        }
    }
}

/// Copies the 16-byte piece `source[from]` (`scalars` scalars) to `stage[to]`: `cp.async`
/// with `tensor_cores`, otherwise a load and a store.
#[cube]
pub fn copy_piece<E: CubePrimitive>(source: &[E], from: usize, stage: &mut Shared<[E]>, to: usize, #[comptime] scalars: u32, #[comptime] tensor_cores: bool) {
    if comptime!(tensor_cores) {
        copy_async(&source[from..from + 1], &mut stage[to..to + 1], scalars);
    } else {
        stage[to] = source[from];
    }
}

/// Closes this unit's group of `cp.async` copies (CUDA; a no-op elsewhere).
#[cube]
pub fn commit_copies(#[comptime] tensor_cores: bool) {
    if comptime!(tensor_cores) {
        gpu_asm!("cp.async.commit_group;");
    }
}

/// Waits until at most `stages − 2` of this unit's copy groups are in flight, which is
/// when the oldest outstanding block has landed (CUDA; a no-op elsewhere).
#[cube]
pub fn wait_for_copies(#[comptime] tensor_cores: bool, #[comptime] stages: u32) {
    if comptime!(tensor_cores) {
        gpu_asm!("cp.async.wait_group {pending};", pending = const (stages - 2));
    }
}
