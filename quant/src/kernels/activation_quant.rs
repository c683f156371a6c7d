//! Activation quantization for W8A8 and FP8 layers: `x` `[M, K]` (f32, f16 or bf16) to
//! int8 or e4m3 bytes packed four per i32 word along K (`[M, K/4]`, the layout of the
//! weights they meet), with f32 scales. The numerics are those of the Burn-ops reference
//! ([`crate::repr::quantize_activations`]): scales are absmax / 127.5 (int8) or / 448
//! (e4m3), floored at the smallest normal f32, and values are `x / scale` clamped and
//! rounded half to even.
//!
//! One unit per (row, group): it finds its group's absolute maximum, writes the scale,
//! then quantizes the group. A per-token scale is one group spanning the row. Per-tensor
//! dynamic scales come from a Burn reduction and arrive as a static scale.

use cubecl::prelude::*;

use super::e4m3::{encode_e4m3, round_to_e4m3};

/// Units per cube.
pub const CUBE_UNITS: u32 = 64;

/// The grid values are rounded to (a comptime switch).
pub mod grid {
    /// Signed int8, [-128, 127].
    pub const INT8: u32 = 0;
    /// float8 e4m3fn, [-448, 448].
    pub const E4M3: u32 = 1;
}

/// Quantizes row `r`'s columns `g·group .. min((g+1)·group, k)` for every unit `(r, g)`,
/// `groups = ⌈k / group⌉` units per row; `group` is a multiple of 4. With `dynamic`, each
/// unit writes its scale to `scales[r · groups + g]`; otherwise every unit uses
/// `static_scale[0]` and unit 0 copies it to `scales[0]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn quantize_activations<F: Float>(
    x: &[F],
    static_scale: &[f32],
    codes: &mut [i32],
    scales: &mut [f32],
    m: u32,
    k: u32,
    group: u32,
    groups: u32,
    #[comptime] grid: u32,
    #[comptime] dynamic: bool,
    #[define(F)] _dtype: ElemType,
) {
    let unit = CUBE_POS_X * CUBE_UNITS + UNIT_POS_X;
    if unit >= m * groups {
        terminate!();
    }
    let row = unit / groups;
    let start = (unit % groups) * group;
    let end = min(start + group, k);
    let row_base = row * k;

    let scale = if comptime!(dynamic) {
        let mut absmax = 0.0f32;
        for col in start..end {
            absmax = max(absmax, f32::abs(f32::cast_from(x[(row_base + col) as usize])));
        }
        let half_range = comptime!(if grid == grid::INT8 { 127.5f32 } else { 448.0f32 });
        let scale = max(absmax / half_range, f32::new(f32::MIN_POSITIVE));
        scales[unit as usize] = scale;
        scale
    } else {
        let scale = static_scale[0];
        if unit == 0 {
            scales[0] = scale;
        }
        scale
    };

    let words = k / 4;
    for word in start / 4..end / 4 {
        let mut packed = 0u32;
        #[unroll]
        for byte in 0..4u32 {
            packed |= quantize_value(f32::cast_from(x[(row_base + word * 4 + byte) as usize]), scale, grid) << (byte * 8);
        }
        codes[(row * words + word) as usize] = i32::reinterpret(packed);
    }
}

/// The code byte (low 8 bits) of `x / scale` on `grid`: clamped, then rounded half to
/// even (int8) or to the nearest e4m3 value. Shared with the GEMMs that quantize their
/// activations as they load them, so both give the same codes.
#[cube]
pub fn quantize_value(x: f32, scale: f32, #[comptime] grid: u32) -> u32 {
    let v = x / scale;
    if comptime!(grid == grid::INT8) {
        let q = f32::round(clamp(v, f32::new(-128.0), 127.0f32));
        u32::reinterpret(i32::cast_from(q)) & 0xFF
    } else {
        encode_e4m3(round_to_e4m3(clamp(v, f32::new(-448.0), 448.0f32)))
    }
}
