//! The asynchronous-copy ring the tensor-core kernels stage operands through: each unit
//! issues `cp.async` copies for a K block, closes them as one group, and before reading a
//! block waits until at most `stages − 2` of its groups are in flight (then a barrier makes
//! every unit's copies visible). On runtimes without `cp.async` the copies are plain
//! loads and stores, and these are no-ops.

use cubecl::prelude::*;

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
