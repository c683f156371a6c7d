//! The 8-bit host kernels on Flex (W8A8 and FP8) against the reference, under each vector
//! set the CPU has, and exactly where every product and sum is exact.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use ember::quant::kernels::host::{HostPath, VectorIsa};
use ember::quant::kernels::{self, GemmKernel};
use ember::quant::repr::{e4m3_table, e4m3_value, ActivationQuant, Fp8Weight, W8A8Weight};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::byte_kernels::{activations, fp8_relative_error_of, fp8_weight, to_f32, w8a8_weight_within, Fp8Scales};
use crate::common::max_abs_diff;

/// The W8A8 host kernel on Flex (the selector's choice there): with quantized
/// activations the i32 sums and the two scales multiply in the reference's order, so the
/// outputs are equal bit for bit while the f32 reference is exact (sums below 2^24: K ≤
/// 1032, or codes within ±8 at K = 4100), fused or tiled (K = 1028 is two whole tiles and
/// four columns, whose exact sums add in i32; K = 4100 spans three of the fused kernel's
/// slices from eight rows); weight-only layers agree within f32 rounding. Under each
/// vector set (AVX-512's kernel is VNNI's, in row blocks of eight).
#[test]
fn w8a8_host_kernel_on_flex() {
    crate::common::under_each_vector_isa(w8a8_host_cases);
}

fn w8a8_host_cases(isa: VectorIsa) {
    let flex = Device::flex();
    let mut rng = StdRng::seed_from_u64(32);
    let static_scale = || ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.004f32], [1]), (&flex, DType::F32)));
    // Past the rows from which each mode's products are tiled (W8A8 with quantized
    // activations only without VNNI).
    let (many, many_float) = (kernels::host::INT_TILED_ROWS + 2, kernels::host::byte_tiled_rows(false) + 2);
    let full = i8::MIN..=i8::MAX;
    let cases = [
        (ActivationQuant::DynamicPerToken, 1028, full.clone(), vec![1usize, 3, 8, 13, 16, many]),
        (ActivationQuant::DynamicPerTensor, 1028, full.clone(), vec![4]),
        (static_scale(), 1028, full.clone(), vec![5, many]),
        (ActivationQuant::None, 1028, full, vec![3, many_float]),
        (ActivationQuant::DynamicPerToken, 4100, -8..=8, vec![1, 11]),
    ];
    for (mode, k, codes, row_counts) in cases {
        // N past whole 16-channel tasks and their blocks of two or four channels.
        let n = if k > 2048 { 41 } else { 201 };
        let weight = w8a8_weight_within(k, n, mode, &flex, &mut rng, codes);
        for rows in row_counts {
            for dtype in [DType::F32, DType::BF16] {
                let what = format!("{isa:?} {} k={k} rows={rows} {dtype:?}", weight.activations.describe());
                assert_eq!(kernels::select::w8a8_gemm(&weight, &flex, dtype, rows).kernel, GemmKernel::Host, "{what}");
                let x = activations(rows, k, dtype, &flex, &mut rng);
                let ours = kernels::w8a8_forward(&weight, x.clone());
                assert_eq!(ours.dtype(), dtype, "{what}");
                let (ours, reference) = (to_f32(ours), to_f32(weight.forward_reference(x)));
                let exact = dtype == DType::F32 && !matches!(weight.activations, ActivationQuant::None);
                if exact {
                    let mismatches = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
                    assert_eq!(mismatches, 0, "{what}: {mismatches} outputs differ");
                } else {
                    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let tolerance = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
                    assert!(max_abs_diff(&ours, &reference) <= tolerance * scale, "{what}: {}", max_abs_diff(&ours, &reference) / scale);
                }
            }
        }
    }
}

/// The FP8 host kernel on Flex for every scale layout and activation mode, against the
/// reference (within f32 summation order), fused and tiled (K = 704: a whole tile of 512
/// columns, then one and a half 128-column scale blocks; N = 204: three whole blocks of 64
/// channels, then eight and four), under each vector set.
#[test]
fn fp8_host_kernel_on_flex() {
    crate::common::under_each_vector_isa(fp8_host_cases);
}

fn fp8_host_cases(isa: VectorIsa) {
    let flex = Device::flex();
    let mut rng = StdRng::seed_from_u64(33);
    let static_scale = || ActivationQuant::Static(Tensor::from_data(TensorData::new(vec![0.02f32], [1]), (&flex, DType::F32)));
    let cases = [
        (Fp8Scales::Channel, ActivationQuant::DynamicPerToken),
        (Fp8Scales::Tensor, ActivationQuant::DynamicPerTensor),
        (Fp8Scales::Tensor, static_scale()),
        (Fp8Scales::Block, ActivationQuant::DynamicPerGroup(128)),
        (Fp8Scales::Block, ActivationQuant::DynamicPerToken),
        (Fp8Scales::Channel, ActivationQuant::None),
        (Fp8Scales::Block, ActivationQuant::None),
    ];
    // K = 708 leaves columns past the fused kernel's last step in a scale chunk; 5 and
    // 6 rows take row blocks of 4 and 1 or 2 (the f16 case's 7 rows, 3), 13 rows (fused
    // by request) three of 4 and 1; N = 37 leaves a channel past AVX-512's blocks of two;
    // K = 4612 spans two of the fused kernel's slices at one row, K = 704 two from five
    // rows.
    let shapes = |case: (Fp8Scales, ActivationQuant)| [(case.clone(), (704, 204)), (case.clone(), (708, 37)), (case, (4612, 20))];
    for ((scales, mode), (k, n)) in cases.into_iter().flat_map(shapes) {
        let what = format!("{isa:?} {scales:?} {} [{k}x{n}]", mode.describe());
        let weight = fp8_weight(k, n, scales, mode, &flex, &mut rng);
        let tiled_rows = kernels::host::byte_tiled_rows(scales == Fp8Scales::Block);
        let row_counts: &[usize] = if k > 4096 { &[1, 3] } else { &[1, 5, 6, tiled_rows, 66] };
        for &rows in row_counts {
            assert_eq!(kernels::select::fp8_gemm(&weight, &flex, DType::F32, rows).kernel, GemmKernel::Host, "{what}");
            // Sums of 704 to 4612 products in another order, each row against its largest
            // output (of as few as 20 channels).
            let err = fp8_relative_error_of(&weight, rows, DType::F32, &flex, &mut rng, |w, x| kernels::fp8_forward(w, &Default::default(), x));
            assert!(err < 4e-6, "{what} rows={rows}: relative error {err}");
        }
        let fused = |w: &Fp8Weight, x| kernels::host::fp8_gemm_by(w, x, HostPath::Fused).expect("a weight on Flex");
        let err = fp8_relative_error_of(&weight, 13, DType::F32, &flex, &mut rng, fused);
        assert!(err < 4e-6, "{what} rows=13 fused: relative error {err}");
        // 7 rows in the register kernels; 12, on AMX, each f16 activation as two bf16 terms.
        for rows in [7, 12] {
            let err = fp8_relative_error_of(&weight, rows, DType::F16, &flex, &mut rng, |w, x| kernels::fp8_forward(w, &Default::default(), x));
            assert!(err < 2e-2, "{what} rows={rows} f16: relative error {err}");
        }
    }
}

/// 8-bit weights with float activations keep every bit of both operands on every path:
/// f32 activations `c = 1 + 2⁻⁹ + 2⁻¹⁸` (three bf16 terms), `−1` and `−2⁻⁹` at the first
/// three columns of K against one weight value `w` per channel leave `w · 2⁻¹⁸`; f16
/// activations `1 + 2⁻⁹` (two terms) and `−1` leave `w · 2⁻⁹`; times the channel's scale
/// (a power of two, as are the blocks'). Every product and sum here is exact in f32, so
/// a term dropped shows as a zero. e4m3 weights (FP8 weight-only: channel scales, and
/// 128×128 blocks over K = 256) and int8 ones (W8A8 layers whose activations stay
/// float); rows on and off the tile unit, a pair of row blocks, N = 40 (a partial tile).
#[test]
fn byte_weights_with_float_activations_keep_every_bit() {
    crate::common::under_each_vector_isa(exact_byte_weight_cases);
}

fn exact_byte_weight_cases(isa: VectorIsa) {
    let flex = Device::flex();
    let (k, n) = (256usize, 40usize);
    let mut rng = StdRng::seed_from_u64(68);
    let c = 1.0 + 2f32.powi(-9) + 2f32.powi(-18);
    let activation_cases = [(DType::F32, vec![c, -1.0, -(2f32.powi(-9))], 2f32.powi(-18)), (DType::F16, vec![1.0 + 2f32.powi(-9), -1.0], 2f32.powi(-9))];
    let e4m3_values = [0.5f32, -1.5, 3.0, 0.375];
    let e4m3_byte = |value: f32| (0..=u8::MAX).find(|&byte| e4m3_value(byte) == value).expect("an e4m3 value");
    let int8_values = [3i8, -7, 12, 1];
    // Each channel's first columns its value, the others any byte (their activations are
    // zeros).
    let words = |lead: &dyn Fn(usize) -> u8, rng: &mut StdRng| {
        let bytes: Vec<u8> = (0..n * k)
            .map(|index| match index % k < 3 {
                true => lead(index / k),
                false => rng.random_range(0..0x7F) | (rng.random::<u8>() & 0x80),
            })
            .collect();
        byte_words(&bytes, [n, k], &flex)
    };
    let channel_scale = |channel: usize| 2f32.powi(-(channel as i32 % 3));
    let channel_scales: Vec<f32> = (0..n).map(channel_scale).collect();
    let fp8 = |scales: Vec<f32>, shape: [usize; 2], block: Option<[usize; 2]>, rng: &mut StdRng| Fp8Weight {
        in_features: k,
        out_features: n,
        codes: words(&|channel| e4m3_byte(e4m3_values[channel % 4]), rng),
        scales: Tensor::from_data(TensorData::new(scales, shape), (&flex, DType::F32)),
        block,
        activations: ActivationQuant::None,
        table: e4m3_table(&flex),
    };
    let channels = fp8(channel_scales.clone(), [n, 1], None, &mut rng);
    // Two blocks along K: the leading columns lie in the first, scaled by 1/4.
    let blocks = fp8(vec![0.25, 4.0], [1, 2], Some([128, 128]), &mut rng);
    let int8 = W8A8Weight {
        in_features: k,
        out_features: n,
        codes: words(&|channel| int8_values[channel % 4] as u8, &mut rng),
        scales: Tensor::from_data(TensorData::new(channel_scales, [1, n]), (&flex, DType::F32)),
        activations: ActivationQuant::None,
    };
    for (dtype, x_columns, leaves) in &activation_cases {
        for rows in [3usize, 8, 13, 40] {
            let mut x = vec![0f32; rows * k];
            for row in 0..rows {
                x[row * k..][..x_columns.len()].iter_mut().zip(x_columns).for_each(|(x, &value)| *x = value * 2f32.powi(row as i32 % 4));
            }
            let x = Tensor::<2>::from_data(TensorData::new(x, [rows, k]), (&flex, DType::F32)).cast(*dtype);
            let expected = |value: &dyn Fn(usize) -> f32| -> Vec<f32> { (0..rows * n).map(|index| value(index % n) * leaves * 2f32.powi((index / n) as i32 % 4)).collect() };
            let what = format!("{isa:?} {dtype:?} rows={rows}");
            for (name, weight, scale) in [("channels", &channels, &channel_scale as &dyn Fn(usize) -> f32), ("blocks", &blocks, &|_| 0.25)] {
                let want = expected(&|channel| e4m3_values[channel % 4] * scale(channel));
                assert_eq!(to_f32(kernels::fp8_forward(weight, &Default::default(), x.clone())), want, "{what} e4m3 {name}");
                for path in [HostPath::Fused, HostPath::Tiled] {
                    assert_eq!(to_f32(kernels::host::fp8_gemm_by(weight, x.clone(), path).expect("a weight on Flex")), want, "{what} e4m3 {name} {path:?}");
                }
            }
            let want = expected(&|channel| int8_values[channel % 4] as f32 * channel_scale(channel));
            assert_eq!(to_f32(kernels::w8a8_forward(&int8, x.clone())), want, "{what} int8");
            for path in [HostPath::Fused, HostPath::Tiled] {
                assert_eq!(to_f32(kernels::host::w8a8_gemm_by(&int8, x.clone(), path).expect("a weight on Flex")), want, "{what} int8 {path:?}");
            }
        }
    }
}

/// Bytes `[n, k]` as the `[n, k/4]` little-endian words 8-bit weights are stored in.
fn byte_words(bytes: &[u8], [n, k]: [usize; 2], device: &Device) -> Tensor<2, Int> {
    let words: Vec<i32> = bytes.chunks_exact(4).map(|word| i32::from_le_bytes([word[0], word[1], word[2], word[3]])).collect();
    Tensor::<2, Int>::from_data(TensorData::new(words, [n, k / 4]), (device, DType::I32))
}

/// Every finite e4m3 code multiplies as its own value on every path: channel `c` holds
/// code `c` (the two NaN codes as zero) at column 0, against activations that are 1
/// there and 0 elsewhere, so each output is exactly the code's value. Eight rows take
/// AMX's tile unit (its widening looks magnitudes up in a table).
#[test]
fn e4m3_weights_keep_every_code() {
    crate::common::under_each_vector_isa(every_e4m3_code);
}

fn every_e4m3_code(isa: VectorIsa) {
    let flex = Device::flex();
    let (k, n, rows) = (32usize, 256usize, 8usize);
    let code = |channel: usize| if channel & 0x7F == 0x7F { 0u8 } else { channel as u8 };
    let bytes: Vec<u8> = (0..n * k).map(|index| if index % k == 0 { code(index / k) } else { 0 }).collect();
    let weight = Fp8Weight {
        in_features: k,
        out_features: n,
        codes: byte_words(&bytes, [n, k], &flex),
        scales: Tensor::from_data(TensorData::new(vec![1f32; n], [n, 1]), (&flex, DType::F32)),
        block: None,
        activations: ActivationQuant::None,
        table: e4m3_table(&flex),
    };
    let mut x = vec![0f32; rows * k];
    x.iter_mut().step_by(k).for_each(|x| *x = 1.0);
    let x = Tensor::<2>::from_data(TensorData::new(x, [rows, k]), (&flex, DType::F32));
    let expected: Vec<f32> = (0..rows * n).map(|index| e4m3_value(code(index % n))).collect();
    for path in [HostPath::Fused, HostPath::Tiled] {
        assert_eq!(to_f32(kernels::host::fp8_gemm_by(&weight, x.clone(), path).expect("a weight on Flex")), expected, "{isa:?} {path:?}");
    }
}
