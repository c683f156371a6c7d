//! The tile instructions the kernels use, computed in software: how the tile kernels'
//! layouts, loops and scaling are checked on CPUs without the unit (the kernels' other
//! code needs AVX-512). Each thread's eight tiles live in a thread-local buffer; the
//! products follow the instructions' definitions: `tdpbssd` sums each line pair's four
//! byte products into wrapping i32 sums, `tdpbf16ps` adds a pair's two products to an
//! f32 sum one after the other, reading bf16 subnormals as zero as the unit does.
//! Thousands of times slower than the unit.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{LINE, LINES, TILE_BYTES};

/// Whether the tile instructions run here rather than on the unit.
static EMULATED: AtomicBool = AtomicBool::new(false);

/// Turns the emulation on for the rest of the process.
pub(in crate::kernels::host) fn enable() {
    EMULATED.store(true, Ordering::Relaxed);
}

#[inline(always)]
pub(super) fn enabled() -> bool {
    EMULATED.load(Ordering::Relaxed)
}

thread_local! {
    static TILES: RefCell<[[u8; TILE_BYTES]; 8]> = const { RefCell::new([[0; TILE_BYTES]; 8]) };
}

pub(super) fn zero(tile: u8) {
    TILES.with_borrow_mut(|tiles| tiles[tile as usize].fill(0));
}

/// # Safety
/// Sixteen lines of 64 bytes, `stride` bytes apart from `base`, must be readable.
pub(super) unsafe fn load(tile: u8, base: *const u8, stride: usize) {
    TILES.with_borrow_mut(|tiles| {
        for (line, bytes) in tiles[tile as usize].chunks_exact_mut(LINE).enumerate() {
            // SAFETY: passed on from the caller.
            bytes.copy_from_slice(unsafe { std::slice::from_raw_parts(base.add(line * stride), LINE) });
        }
    });
}

/// Tile `tile`'s lines, one after the other, into `out`.
pub(super) fn store(tile: u8, out: &mut [u8; TILE_BYTES]) {
    TILES.with_borrow(|tiles| out.copy_from_slice(&tiles[tile as usize]));
}

/// The `index`-th four-byte value of a tile.
fn dword(tile: &[u8; TILE_BYTES], index: usize) -> [u8; 4] {
    [tile[4 * index], tile[4 * index + 1], tile[4 * index + 2], tile[4 * index + 3]]
}

/// Tile `sums` += tile `left` · tile `right`: each four-byte sum updated by `add` with
/// the sixteen pairs of four-byte values that its line of `left` and its column of
/// `right` hold, in order.
fn product(sums: u8, left: u8, right: u8, add: impl Fn([u8; 4], [u8; 4], [u8; 4]) -> [u8; 4]) {
    TILES.with_borrow_mut(|tiles| {
        let (a, b) = (tiles[left as usize], tiles[right as usize]);
        let c = &mut tiles[sums as usize];
        for row in 0..LINES {
            for column in 0..LINES {
                let mut sum = dword(c, row * LINES + column);
                for pair in 0..LINES {
                    sum = add(sum, dword(&a, row * LINES + pair), dword(&b, pair * LINES + column));
                }
                c[4 * (row * LINES + column)..][..4].copy_from_slice(&sum);
            }
        }
    });
}

/// Tile `sums` += tile `left` · tile `right`, int8 by int8 into i32.
pub(super) fn dpbssd(sums: u8, left: u8, right: u8) {
    product(sums, left, right, |sum, x, y| {
        let products = (0..4).map(|byte| x[byte] as i8 as i32 * y[byte] as i8 as i32);
        products.fold(i32::from_le_bytes(sum), i32::wrapping_add).to_le_bytes()
    });
}

/// A bf16 value, subnormals read as zero.
fn bf16(bytes: [u8; 2]) -> f32 {
    let bits = u16::from_le_bytes(bytes);
    let bits = if bits & 0x7f80 == 0 { bits & 0x8000 } else { bits };
    f32::from_bits((bits as u32) << 16)
}

/// Tile `sums` += tile `left` · tile `right`, bf16 pairs into f32.
pub(super) fn dpbf16ps(sums: u8, left: u8, right: u8) {
    product(sums, left, right, |sum, x, y| {
        let sum = f32::from_le_bytes(sum) + bf16([x[0], x[1]]) * bf16([y[0], y[1]]);
        (sum + bf16([x[2], x[3]]) * bf16([y[2], y[3]])).to_le_bytes()
    });
}
