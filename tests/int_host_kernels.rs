//! The packed-integer and half-weight host kernels on Flex (the selector's choice there)
//! against the reference, under each vector set the CPU has: every layout, row counts on
//! and off AMX's tile unit, exact activations, and grouped experts.

use burn::tensor::{DType, Device, Tensor, TensorData};
use ember_quant::kernels::host::{HostPath, TileProducts, VectorIsa};
use ember_quant::kernels::{self, DenseKernel, IntGemmKernel};
use ember_quant::packing::int_tensor;
use ember_quant::repr::{PackedIntWeight, ZeroPoints};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kernels::{activations, error_against, random_stack, random_weight, to_f32, tolerance, Case, Order, Zeros, LAYOUT_CASES, PLAIN_G128};

/// The host kernel (the selector's choice on Flex) against the reference, through the
/// path a model's linear takes, or by `path` when given.
fn host_relative_error(case: Case, rows: usize, dtype: DType, seed: u64, path: Option<HostPath>) -> f32 {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(seed);
    let weight = random_weight(case, &device, &mut rng);
    let x = activations(rows, case.k, dtype, &device, &mut rng);
    assert_eq!(kernels::select::int_gemm(&weight, &device, dtype, rows).kernel, IntGemmKernel::Host);
    let output = match path {
        Some(path) => kernels::host::int_weight_gemm_by(&weight, x.clone(), path).expect("a weight on Flex"),
        None => kernels::int_weight_forward(&weight, &Default::default(), x.clone()),
    };
    assert_eq!(output.dtype(), dtype);
    let kernel = to_f32(output);
    error_against(&kernel, &to_f32(weight.forward_reference(x)), case, rows)
}

/// Every layout at row counts covering each row tile (1, 2, 4, 8) and ragged ones, N not
/// a multiple of the 128-column block, the tiled path (chosen from `INT_TILED_ROWS`) on every
/// layout and on K spanning several tiles with act-order and uneven groups, and f16 / bf16
/// activations. Under AMX, products from 16 rows run on the tile unit: one row block (16)
/// or pairs (21, 32, 64, and 257 with a lone last block), channel tiles of 8 and 12 (N = 72,
/// 300), K with a partial last step of 32 columns (200, 100), and activations too large
/// to stay in cache (48 × 2048), taken a span of K at a time by tasks of several channel
/// pairs, a span of whole groups or one spanning all of K split across spans.
///
/// The fused kernel is compiled once per vector set: each one this CPU has is checked in
/// turn (the cap is process-wide; tests running meanwhile stay correct under it).
#[test]
fn int_gemm_host_kernel_on_flex() {
    crate::common::under_each_vector_isa(|_| int_host_kernel_cases());
}

fn int_host_kernel_cases() {
    for (i, case) in LAYOUT_CASES.into_iter().chain([PLAIN_G128, Case { n: 300, ..PLAIN_G128 }]).enumerate() {
        for rows in [1usize, 2, 3, 4, 7, 13, 16, 21] {
            let err = host_relative_error(case, rows, DType::F32, 300 + i as u64, None);
            assert!(err < tolerance(DType::F32), "{case:?} rows={rows}: relative error {err}");
        }
        let err = host_relative_error(case, 3, DType::F32, 340 + i as u64, Some(HostPath::Tiled));
        assert!(err < tolerance(DType::F32), "{case:?} tiled: relative error {err}");
    }
    // K = 1152 is two whole tiles of 512 and a part.
    let long = Case { k: 1152, n: 200, order: Order::ActOrder, zeros: Zeros::Integer, ..PLAIN_G128 };
    let cases = [
        long,
        Case { order: Order::Uneven, group_size: 64, zeros: Zeros::Float, ..long },
        Case { bits: 8, group_size: 0, ..long },
        Case { k: 200, group_size: 0, zeros: Zeros::Integer, ..long },
        Case { bits: 8, k: 100, group_size: 0, zeros: Zeros::Float, ..long },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        for (path, rows) in [(HostPath::Fused, 5), (HostPath::Fused, 21), (HostPath::Tiled, 5)] {
            let err = host_relative_error(case, rows, DType::F32, 350 + i as u64, Some(path));
            assert!(err < tolerance(DType::F32), "{case:?} {path:?} rows={rows}: relative error {err}");
        }
    }
    let wide = Case { k: 2048, n: 1032, ..long };
    for (i, case) in [wide, Case { bits: 8, group_size: 0, zeros: Zeros::Float, ..wide }].into_iter().enumerate() {
        let err = host_relative_error(case, 48, DType::F32, 360 + i as u64, Some(HostPath::Fused));
        assert!(err < tolerance(DType::F32), "{case:?} rows=48: relative error {err}");
    }
    for (i, rows) in [kernels::host::INT_TILED_ROWS, 64, 257].into_iter().enumerate() {
        let err = host_relative_error(Case { zeros: Zeros::Integer, ..PLAIN_G128 }, rows, DType::F32, 320 + i as u64, None);
        assert!(err < tolerance(DType::F32), "rows={rows}: relative error {err}");
    }
    for dtype in [DType::F16, DType::BF16] {
        for rows in [5, kernels::host::INT_TILED_ROWS] {
            let err = host_relative_error(Case { zeros: Zeros::Float, group_size: 32, ..PLAIN_G128 }, rows, dtype, 330, None);
            assert!(err < tolerance(dtype), "{dtype:?} rows={rows}: relative error {err}");
        }
    }
}

/// Activations whose values need every bf16 term the tile unit splits them into: f32
/// `c = 1 + 2⁻⁹ + 2⁻¹⁸` (three terms), then `−1` and `−2⁻⁹` at the next two rows of K,
/// whose equal weight values `w` leave `w · 2⁻¹⁸`; f16 `1 + 2⁻⁹` and `−1` (two terms),
/// leaving `w · 2⁻⁹`. Scales are powers of two, so every path computes these exactly:
/// a term dropped would show as a zero. Under each vector set, rows on and off the tile
/// unit.
#[test]
fn int_gemm_host_kernel_keeps_every_bit_of_the_activations() {
    crate::common::under_each_vector_isa(exact_activation_cases);
}

fn exact_activation_cases(isa: VectorIsa) {
    let device = Device::flex();
    let (k, n, group_size) = (64usize, 48usize, 32usize);
    let mut rng = StdRng::seed_from_u64(61);
    // Each channel's first three rows hold one value, never the midpoint (a zero weight).
    let q: Vec<i32> = (0..k * n).map(|index| if index < 3 * n { [1, 3, 12, 15][index % n % 4] } else { rng.random_range(0..16) }).collect();
    let mut words = vec![0i32; k / 8 * n];
    for (index, &value) in q.iter().enumerate() {
        let (row, col) = (index / n, index % n);
        words[row / 8 * n + col] |= value << (4 * (row % 8));
    }
    let scales = Tensor::<2>::from_data(TensorData::new(vec![0.0625f32; k / group_size * n], [k / group_size, n]), (&device, DType::F32));
    let weight = PackedIntWeight::new(4, int_tensor(words, [k / 8, n], &device), scales, ZeroPoints::Midpoint, group_size);
    let c = 1.0 + 2f32.powi(-9) + 2f32.powi(-18);
    for (dtype, leading, leaves) in [(DType::F32, vec![c, -1.0, -(2f32.powi(-9))], 2f32.powi(-18)), (DType::F16, vec![1.0 + 2f32.powi(-9), -1.0], 2f32.powi(-9))] {
        for rows in [3usize, 8, 40] {
            let mut values = vec![0f32; rows * k];
            for row in 0..rows {
                let row_scale = 2f32.powi(row as i32 % 4);
                for (column, &value) in leading.iter().enumerate() {
                    values[row * k + column] = value * row_scale;
                }
            }
            let x = Tensor::<2>::from_data(TensorData::new(values, [rows, k]), (&device, DType::F32)).cast(dtype);
            let expected: Vec<f32> = (0..rows * n).map(|index| (q[index % n] - 8) as f32 * 0.0625 * leaves * 2f32.powi((index / n) as i32 % 4)).collect();
            for path in [None, Some(HostPath::Tiled)] {
                let output = match path {
                    Some(path) => kernels::host::int_weight_gemm_by(&weight, x.clone(), path).expect("a weight on Flex"),
                    None => kernels::host::int_weight_gemm(&weight, x.clone()).expect("a weight on Flex"),
                };
                assert_eq!(to_f32(output), expected, "{isa:?} {dtype:?} rows={rows} {path:?}");
            }
        }
    }
}

/// Float weights kept in f16 / bf16 on Flex times f32 activations: both host paths and
/// the forward dispatch against the f32 matmul of the converted weight (the same
/// products, summed in another order), over K with and without a tail of a step (sixteen
/// or thirty-two columns), more than one tile and (K = 4660 at one row, 1152 from four)
/// more than one of the register kernel's slices, row blocks of four and six and their
/// remainders, and N not a multiple of the channel blocks (16 a task, four or two a
/// register block); under each vector set.
#[test]
fn half_weights_host_kernel_on_flex() {
    crate::common::under_each_vector_isa(half_weight_cases);
}

fn half_weight_cases(isa: VectorIsa) {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(41);
    for (k, n) in [(64usize, 48usize), (708, 33), (1152, 130), (4660, 20)] {
        let values: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        for dtype in [DType::F16, DType::BF16] {
            let weight = Tensor::<2>::from_data(TensorData::new(values.clone(), [n, k]), (&device, DType::F32)).cast(dtype);
            let weight_t = weight.clone().transpose();
            for rows in [1usize, 3, 4, 6, 9, 13, kernels::host::float_tiled_rows(), 33] {
                let x = activations(rows, k, DType::F32, &device, &mut rng);
                let expected = to_f32(x.clone().matmul(weight_t.clone().cast(DType::F32)));
                let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
                let forward = kernels::dense_forward(&weight_t, x.clone());
                assert_eq!(forward.dtype(), DType::F32);
                let outputs = [HostPath::Fused, HostPath::Tiled].map(|path| kernels::host::half_weight_gemm_by(&weight, x.clone(), path).expect("a weight on Flex"));
                for (name, output) in [("forward", forward), ("fused", outputs[0].clone()), ("tiled", outputs[1].clone())] {
                    let err = to_f32(output).iter().zip(&expected).fold(0f32, |a, (o, e)| a.max((o - e).abs())) / scale;
                    assert!(err < 1e-5, "{isa:?} {dtype:?} k={k} n={n} rows={rows} {name}: relative error {err}");
                }
                // Computing in the weight's own dtype: the same kernels, the output rounded
                // to that dtype (relative error up to 2⁻⁹ for bf16, 2⁻¹² for f16).
                let x_half = x.clone().cast(dtype);
                let expected = to_f32(x_half.clone().cast(DType::F32).matmul(weight_t.clone().cast(DType::F32)));
                let forward = kernels::dense_forward(&weight_t, x_half);
                assert_eq!(forward.dtype(), dtype);
                let err = to_f32(forward).iter().zip(&expected).fold(0f32, |a, (o, e)| a.max((o - e).abs())) / scale;
                let bound = if dtype == DType::BF16 { 2f32.powi(-8) } else { 2f32.powi(-11) };
                assert!(err < bound, "{isa:?} {dtype:?} k={k} n={n} rows={rows} in {dtype:?}: relative error {err}");
            }
        }
    }
    let weight_t = Tensor::<2>::zeros([16, 8], (&device, DType::F16));
    assert_eq!(kernels::select::half_dense_gemm(DType::F16, &device, DType::F32, 1, weight_t.dims()).kernel, DenseKernel::Host);
    assert_eq!(kernels::select::half_dense_gemm(DType::F64, &device, DType::F32, 1, weight_t.dims()).kernel, DenseKernel::Reference);
    assert_eq!(kernels::select::half_dense_gemm(DType::BF16, &device, DType::BF16, 1, weight_t.dims()).kernel, DenseKernel::Host);
    // Whole 32-column steps of K run on AMX's tile unit where it exists; other K never.
    let rows = kernels::host::float_tiled_rows();
    for (dtype, family) in [(DType::BF16, TileProducts::Bf16Weights), (DType::F16, TileProducts::F16Weights)] {
        let reason = kernels::select::half_dense_gemm(dtype, &device, DType::F32, rows, [64, 48]).reason;
        match (isa, kernels::host::amx_rows(family)) {
            (VectorIsa::Amx, Some(from)) => assert!(reason.contains(&format!("at every row count (on AMX's tile unit from {from} rows)")), "{reason}"),
            _ => assert!(reason.contains("host tiled kernel"), "{isa:?}: {reason}"),
        }
        let uneven = kernels::select::half_dense_gemm(dtype, &device, DType::F32, rows, [708, 48]).reason;
        assert!(uneven.contains("host tiled kernel"), "{isa:?}: {uneven}");
    }
}

/// f16 / bf16 activations are widened to f32 and the output rounded back by the host
/// kernels' own conversions: bit for bit what the f32 activations' product gives once
/// Burn casts it, on and off the tile unit. Channel `c` adds columns `c` and `c + 32`, so
/// each output is the f32 sum `a + b` of a chosen pair: ties to even (down and up),
/// below and above half a unit, and rounding past the largest finite value to infinity.
#[test]
fn half_activations_round_trip_exactly() {
    let device = Device::flex();
    let (k, n) = (64usize, 16usize);
    let mut ones = vec![0f32; n * k];
    for c in 0..n {
        ones[c * k + c] = 1.0;
        ones[c * k + c + 32] = 1.0;
    }
    // (dtype, unit at 1, largest finite, half its unit)
    for (dtype, ulp, max, half_max_ulp) in [(DType::BF16, 2f32.powi(-7), 3.3895314e38f32, 2f32.powi(119)), (DType::F16, 2f32.powi(-10), 65504.0, 16.0)] {
        let weight = Tensor::<2>::from_data(TensorData::new(ones.clone(), [n, k]), (&device, DType::F32)).cast(dtype);
        let pairs = [
            ((1.0, ulp / 2.0), 1.0),
            ((1.0 + ulp, ulp / 2.0), 1.0 + 2.0 * ulp),
            ((-1.0 - ulp, -ulp / 2.0), -1.0 - 2.0 * ulp),
            ((1.0, ulp / 4.0), 1.0),
            ((1.0, 3.0 * ulp / 4.0), 1.0 + ulp),
            ((max, half_max_ulp), f32::INFINITY),
            ((-max, -half_max_ulp), f32::NEG_INFINITY),
            ((max, half_max_ulp / 2.0), max),
        ];
        let mut rng = StdRng::seed_from_u64(71);
        for rows in [1usize, 3, 8, 17] {
            let mut x = vec![0f32; rows * k];
            let mut expected = vec![None; rows * n];
            for r in 0..rows {
                for c in 0..n {
                    let pair = (r * n + c) % (pairs.len() + 4);
                    let (a, b) = match pairs.get(pair) {
                        Some(&(values, sum)) => {
                            expected[r * n + c] = Some(sum);
                            values
                        }
                        None => (rng.random_range(-4f32..4.0), rng.random_range(-4f32..4.0)),
                    };
                    (x[r * k + c], x[r * k + c + 32]) = (a, b);
                }
            }
            let x = Tensor::<2>::from_data(TensorData::new(x, [rows, k]), (&device, DType::F32)).cast(dtype);
            let direct = kernels::host::half_weight_gemm(&weight, x.clone()).expect("a weight on Flex");
            assert_eq!(direct.dtype(), dtype);
            let via_f32 = kernels::host::half_weight_gemm(&weight, x.cast(DType::F32)).expect("a weight on Flex").cast(dtype);
            let (direct, via_f32) = (to_f32(direct), to_f32(via_f32));
            for (i, (d, v)) in direct.iter().zip(&via_f32).enumerate() {
                assert_eq!(d.to_bits(), v.to_bits(), "{dtype:?} rows={rows} output {i}: {d} against {v}");
                if let Some(sum) = expected[i] {
                    assert_eq!(*d, sum, "{dtype:?} rows={rows} output {i}");
                }
            }
        }
    }
}

/// Float weights keep every bit of both operands on every path: f32 activations
/// `c = 1 + 2⁻⁹ + 2⁻¹⁸` (three bf16 terms), `−1` and `−2⁻⁹` at the first three columns
/// of K against one bf16 weight value `w` leave `w · 2⁻¹⁸`; f16 weight values
/// `w · (1 + 2⁻⁹)` (two bf16 terms) and `−w` against one activation `a` leave
/// `a · w · 2⁻⁹`. Every product and sum here is exact in f32, so a term dropped shows as
/// a zero. Rows on and off the tile unit, a pair of row blocks, N = 40 (a partial tile).
#[test]
fn half_weights_host_kernel_keeps_every_bit() {
    crate::common::under_each_vector_isa(exact_half_weight_cases);
}

fn exact_half_weight_cases(isa: VectorIsa) {
    let device = Device::flex();
    let (k, n) = (64usize, 40usize);
    let mut rng = StdRng::seed_from_u64(67);
    let w = |channel: usize| [0.5f32, -1.5, 3.0, 0.375][channel % 4];
    let c = 1.0 + 2f32.powi(-9) + 2f32.powi(-18);
    for (dtype, weight_columns, x_columns, leaves) in [
        (DType::BF16, vec![1.0f32], vec![c, -1.0, -(2f32.powi(-9))], 2f32.powi(-18)),
        (DType::F16, vec![1.0 + 2f32.powi(-9), -1.0], vec![1.0, 1.0], 2f32.powi(-9)),
    ] {
        // Each channel's leading columns as above, the others any values (their
        // activations are zeros); a lone weight value repeats across the activations'.
        let values: Vec<f32> = (0..n * k)
            .map(|index| {
                let (channel, column) = (index / k, index % k);
                match (column < x_columns.len(), weight_columns.len()) {
                    (true, 1) => w(channel),
                    (true, _) => w(channel) * weight_columns[column],
                    (false, _) => rng.random_range(-1.0f32..1.0),
                }
            })
            .collect();
        let weight = Tensor::<2>::from_data(TensorData::new(values, [n, k]), (&device, DType::F32)).cast(dtype);
        for rows in [3usize, 8, 13, 40] {
            let mut x = vec![0f32; rows * k];
            for row in 0..rows {
                x[row * k..][..x_columns.len()].iter_mut().zip(&x_columns).for_each(|(x, &value)| *x = value * 2f32.powi(row as i32 % 4));
            }
            let x = Tensor::<2>::from_data(TensorData::new(x, [rows, k]), (&device, DType::F32));
            let expected: Vec<f32> = (0..rows * n).map(|index| w(index % n) * leaves * 2f32.powi((index / n) as i32 % 4)).collect();
            let chosen = kernels::host::half_weight_gemm(&weight, x.clone()).expect("a weight on Flex");
            let tiled = kernels::host::half_weight_gemm_by(&weight, x.clone(), HostPath::Tiled).expect("a weight on Flex");
            assert_eq!(to_f32(chosen), expected, "{isa:?} {dtype:?} rows={rows}");
            assert_eq!(to_f32(tiled), expected, "{isa:?} {dtype:?} rows={rows} tiled");
        }
    }
}

/// The grouped host kernel against each expert's reference, with experts of no rows.
#[test]
fn grouped_int_gemm_host_kernel_on_flex() {
    let device = Device::flex();
    for (case, rows_per_expert) in [
        (Case { k: 128, n: 64, group_size: 32, zeros: Zeros::Integer, ..PLAIN_G128 }, vec![1usize, 0, 2, 1]),
        (Case { bits: 8, k: 128, n: 96, group_size: 0, zeros: Zeros::Float, ..PLAIN_G128 }, vec![9, 3, 0, 20]),
        (Case { k: 256, n: 160, ..PLAIN_G128 }, vec![0, 0, 5, 0]),
        // An expert with enough rows to take the tiled path beside ones that stay fused.
        (Case { k: 128, n: 64, group_size: 64, zeros: Zeros::Integer, ..PLAIN_G128 }, vec![3, kernels::host::INT_TILED_ROWS + 2, 0, 1]),
    ] {
        let mut rng = StdRng::seed_from_u64(13);
        let (_, stack) = random_stack(case, rows_per_expert.len(), &device, &mut rng);
        let total: usize = rows_per_expert.iter().sum();
        let x = activations(total, case.k, DType::F32, &device, &mut rng);
        let max_rows = rows_per_expert.iter().copied().max().unwrap_or(0);
        let kernel = kernels::select::grouped_int_gemm(&stack, &device, DType::F32, max_rows).kernel;
        assert_eq!(kernel, IntGemmKernel::Host);
        let grouped = to_f32(kernels::grouped_int_forward(&stack, &Default::default(), x.clone(), &rows_per_expert, kernel));
        let expected = to_f32(stack.forward_reference(x, &rows_per_expert));
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = grouped.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert_eq!(grouped.len(), expected.len());
        assert!(diff / scale < 1e-5, "{case:?} {rows_per_expert:?}: relative error {}", diff / scale);
    }
}
