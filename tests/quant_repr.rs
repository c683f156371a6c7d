//! The runtime representations' building blocks against values computed by hand: bit
//! packing, e4m3 decoding and rounding, activation quantization.

use burn::tensor::{Device, Int, Tensor, TensorData};
use ember::quant::packing::{int_tensor, pack, unpack};
use ember::quant::repr::{e4m3_value, quantize_activations, round_to_e4m3, ActivationGrid, ActivationQuant};

fn floats(values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), &Device::flex())
}

fn ints(t: Tensor<2, Int>) -> Vec<i64> {
    t.try_into_vec_as::<i64>().unwrap()
}

#[test]
fn pack_and_unpack_are_inverse_along_both_axes() {
    let device = Device::flex();
    // Word 0x87654321: fields lowest bits first are 1, 2, ..., 8.
    let words = int_tensor(vec![0x8765_4321u32 as i32, 0x0FED_CBA9], [1, 2], &device);
    assert_eq!(ints(unpack(words.clone(), 4, 1)), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0]);
    assert_eq!(ints(unpack(words.clone(), 8, 0)), vec![0x21, 0xA9, 0x43, 0xCB, 0x65, 0xED, 0x87, 0x0F]);
    for (bits, axis) in [(4, 0), (4, 1), (8, 0), (8, 1)] {
        let unpacked = unpack(words.clone(), bits, axis);
        assert_eq!(ints(pack(unpacked, bits, axis)), ints(words.clone()), "bits {bits} axis {axis}");
    }
}

#[test]
fn e4m3_decoding_covers_normals_subnormals_and_nan() {
    assert_eq!(e4m3_value(0x38), 1.0);
    assert_eq!(e4m3_value(0xC0), -2.0);
    assert_eq!(e4m3_value(0x7E), 448.0);
    assert_eq!(e4m3_value(0x01), 2f32.powi(-9));
    assert_eq!(e4m3_value(0x08), 2f32.powi(-6));
    assert!(e4m3_value(0x7F).is_nan() && e4m3_value(0xFF).is_nan());
}

/// Every finite e4m3 value rounds to itself, and midpoints round to the even neighbour.
#[test]
fn e4m3_rounding_is_exact_on_the_grid_and_ties_to_even() {
    let grid: Vec<f32> = (0..=255u8).map(e4m3_value).filter(|v| v.is_finite()).collect();
    let n = grid.len();
    let rounded = round_to_e4m3(floats(grid.clone(), [1, n])).try_into_vec_as::<f32>().unwrap();
    assert_eq!(rounded, grid);
    // 1.0 and 1.125 are neighbours (step 2^-3): 1.0625 ties to 1.0 (even mantissa), and
    // 1.1875 ties to 1.25; just above a tie rounds up; in [256, 512) the step is 32; half
    // the smallest subnormal (2^-10) ties to zero.
    let ties = floats(vec![1.0625, 1.1875, 1.07, 300.0, -2f32.powi(-10), 3.0 * 2f32.powi(-10)], [1, 6]);
    let rounded = round_to_e4m3(ties).try_into_vec_as::<f32>().unwrap();
    assert_eq!(rounded, vec![1.0, 1.25, 1.125, 288.0, 0.0, 2f32.powi(-8)]);
}

#[test]
fn per_token_int8_scales_use_half_the_int8_range() {
    let x = floats(vec![1.0, -2.55, 0.5, 0.0, 0.0, 0.0], [2, 3]);
    let q = quantize_activations(x, &ActivationQuant::DynamicPerToken, ActivationGrid::Int8).unwrap();
    let scales = q.scales.try_into_vec_as::<f32>().unwrap();
    assert!((scales[0] - 2.55 / 127.5).abs() < 1e-7);
    let values = q.values.try_into_vec_as::<f32>().unwrap();
    // -2.55 / (2.55 / 127.5) = -127.5, which rounds (half to even) to -128.
    assert_eq!(values[..3], [50.0, -128.0, 25.0]);
    assert_eq!(values[3..], [0.0, 0.0, 0.0], "an all-zero token stays zero");
}

#[test]
fn per_group_fp8_scales_each_block_of_columns() {
    let mut row: Vec<f32> = vec![0.25; 8];
    row[5] = 4.0;
    let q = quantize_activations(floats(row, [1, 8]), &ActivationQuant::DynamicPerGroup(4), ActivationGrid::E4M3).unwrap();
    let scales = q.scales.try_into_vec_as::<f32>().unwrap();
    assert_eq!(scales[..4], [0.25 / 448.0; 4]);
    assert_eq!(scales[4..], [4.0 / 448.0; 4]);
}
