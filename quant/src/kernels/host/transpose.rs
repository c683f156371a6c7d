//! Moving up to eight rows of values into columns of a row-major matrix.

/// Writes `rows` rows (`source[r · stride ..][..len]`, `rows ≤ 8`) as columns `0..rows`
/// of `out`, whose rows are `width` apart: `out[j · width + r] = source[r · stride + j]`.
/// Eight full rows go through 8×8 register transposes where the CPU has AVX2.
#[inline(always)]
pub fn rows_into_columns(source: &[f32], stride: usize, rows: usize, len: usize, out: &mut [f32], width: usize) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if rows == 8 && super::avx2() {
        done = len - len % 8;
        // SAFETY: the CPU was just checked to have the features the function is compiled for.
        unsafe { blocks_avx2(source, stride, done, out, width) };
    }
    for j in done..len {
        for r in 0..rows {
            out[j * width + r] = source[r * stride + j];
        }
    }
}

/// Columns `0..len` (a multiple of 8) of eight rows, transposed in 8×8 blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn blocks_avx2(source: &[f32], stride: usize, len: usize, out: &mut [f32], width: usize) {
    use std::arch::x86_64::*;
    assert!(len % 8 == 0 && source.len() >= 7 * stride + len && (len == 0 || out.len() >= (len - 1) * width + 8));
    for j in (0..len).step_by(8) {
        // SAFETY: the assertion bounds every load (rows 0..8 at columns j..j+8) and store
        // (out rows j..j+8 at columns 0..8).
        unsafe {
            let row = |r: usize| _mm256_loadu_ps(source.as_ptr().add(r * stride + j));
            let (r0, r1, r2, r3, r4, r5, r6, r7) = (row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7));
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
            let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
            let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
            let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
            let columns = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, column) in columns.into_iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add((j + i) * width), column);
            }
        }
    }
}
