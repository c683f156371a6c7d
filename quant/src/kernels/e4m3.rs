//! float8 e4m3fn in kernel code, by bit arithmetic on f32 (no table reads, no native fp8
//! type, so every runtime runs it): rounding onto the e4m3 grid, encoding a value already
//! on the grid as its byte, and decoding a byte. Rounding matches
//! [`crate::repr::round_to_e4m3`] value for value: both scale by a power of two, round
//! half to even, and scale back.

use cubecl::prelude::*;

/// Smallest normal e4m3 value, 2^-6.
const MIN_NORMAL: f32 = 0.015625;
/// Spacing of the subnormals, 2^-9.
const SUBNORMAL_STEP: f32 = 0.001953125;

/// Rounds `v` (|v| ≤ 448) to the nearest e4m3 value, ties to even. In the binade
/// [2^e, 2^(e+1)) values are 2^(e-3) apart; below 2^-6 they are 2^-9 apart.
#[cube]
pub fn round_to_e4m3(v: f32) -> f32 {
    let magnitude = f32::abs(v);
    let step = if magnitude >= MIN_NORMAL {
        // Keep the exponent, drop the mantissa, and move three binades down.
        let exponent = (u32::reinterpret(magnitude) >> 23) & 0xFF;
        f32::reinterpret((exponent - 3) << 23)
    } else {
        f32::new(SUBNORMAL_STEP)
    };
    f32::round(v / step) * step
}

/// The e4m3fn byte of `v`, which must already be on the grid ([`round_to_e4m3`]).
#[cube]
pub fn encode_e4m3(v: f32) -> u32 {
    let magnitude = f32::abs(v);
    let code = if magnitude >= MIN_NORMAL {
        let bits = u32::reinterpret(magnitude);
        // f32 bias 127, e4m3 bias 7; the top three mantissa bits are e4m3's mantissa.
        ((((bits >> 23) & 0xFF) - 120) << 3) | ((bits >> 20) & 0x7)
    } else {
        // Subnormal: the value is an exact multiple of 2^-9 below 8 · 2^-9.
        u32::cast_from(magnitude / SUBNORMAL_STEP)
    };
    let sign = if v < 0.0f32 { 0x80u32 } else { 0u32 };
    code | sign
}

/// The value of an e4m3fn byte (the low 8 bits of `code`). NaN bytes (0x7F, 0xFF) decode
/// as 480; quantizers never produce them. Branch-free (both forms computed, one selected,
/// the sign or-ed in), since GEMMs decode every byte in their inner loop.
#[cube]
pub fn decode_e4m3(code: u32) -> f32 {
    let exponent = (code >> 3) & 0xF;
    let mantissa = code & 0x7;
    let normal = f32::reinterpret(((exponent + 120) << 23) | (mantissa << 20));
    let subnormal = f32::cast_from(mantissa) * SUBNORMAL_STEP;
    let magnitude = select(exponent > 0, normal, subnormal);
    f32::reinterpret(u32::reinterpret(magnitude) | ((code & 0x80) << 24))
}
