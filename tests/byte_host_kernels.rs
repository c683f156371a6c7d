//! The 8-bit host kernels on Flex (W8A8 and FP8) against the reference, under each vector
//! set the CPU has.

use burn::tensor::{DType, Device, Tensor, TensorData};
use ember::quant::kernels::host::{HostPath, VectorIsa};
use ember::quant::kernels::{self, GemmKernel};
use ember::quant::repr::{ActivationQuant, Fp8Weight};
use rand::rngs::StdRng;
use rand::SeedableRng;

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
    let (many, many_float) = (kernels::host::INT_TILED_ROWS + 2, kernels::host::byte_tiled_rows() + 2);
    let full = i8::MIN..=i8::MAX;
    let cases = [
        (ActivationQuant::DynamicPerToken, 1028, full.clone(), vec![1usize, 3, 8, 13, 16, many]),
        (ActivationQuant::DynamicPerTensor, 1028, full.clone(), vec![4]),
        (static_scale(), 1028, full.clone(), vec![5, many]),
        (ActivationQuant::None, 1028, full, vec![3, many_float]),
        (ActivationQuant::DynamicPerToken, 4100, -8..=8, vec![1, 11]),
    ];
    for (mode, k, codes, row_counts) in cases {
        let n = if k > 2048 { 40 } else { 200 };
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
    // K = 708 leaves columns past the fused kernel's last step in a scale chunk; 1, 5
    // and 6 rows take AVX2's row blocks of 4, 1 and 2 (the f16 case's 7 rows, 3), 13
    // rows (fused by request) AVX-512's of 8 and 5; K = 4612 spans two of the fused
    // kernel's slices at one row, K = 704 two from five rows.
    let shapes = |case: (Fp8Scales, ActivationQuant)| [(case.clone(), (704, 204)), (case.clone(), (708, 36)), (case, (4612, 20))];
    for ((scales, mode), (k, n)) in cases.into_iter().flat_map(shapes) {
        let what = format!("{isa:?} {scales:?} {} [{k}x{n}]", mode.describe());
        let weight = fp8_weight(k, n, scales, mode, &flex, &mut rng);
        let row_counts: &[usize] = if k > 4096 { &[1, 3] } else { &[1, 5, 6, kernels::host::byte_tiled_rows(), 66] };
        for &rows in row_counts {
            assert_eq!(kernels::select::fp8_gemm(&weight, &flex, DType::F32, rows).kernel, GemmKernel::Host, "{what}");
            let err = fp8_relative_error_of(&weight, rows, DType::F32, &flex, &mut rng, |w, x| kernels::fp8_forward(w, &Default::default(), x));
            assert!(err < 2e-6, "{what} rows={rows}: relative error {err}");
        }
        let fused = |w: &Fp8Weight, x| kernels::host::fp8_gemm_by(w, x, HostPath::Fused).expect("a weight on Flex");
        let err = fp8_relative_error_of(&weight, 13, DType::F32, &flex, &mut rng, fused);
        assert!(err < 2e-6, "{what} rows=13 fused: relative error {err}");
        let err = fp8_relative_error_of(&weight, 7, DType::F16, &flex, &mut rng, |w, x| kernels::fp8_forward(w, &Default::default(), x));
        assert!(err < 2e-2, "{what} f16: relative error {err}");
    }
}
