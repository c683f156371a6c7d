//! Low-bit integers packed in 32-bit words, fields lowest bits first (the convention of
//! GPTQ, AWQ and compressed-tensors), unpacked and repacked as Burn int ops on the device.
//! Words are i32; arithmetic shifts of negative words are harmless because every field is
//! masked after shifting.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// Values per 32-bit word.
pub fn per_word(bits: u32) -> usize {
    (32 / bits) as usize
}

/// Uploads host integers as an i32 device tensor.
pub fn int_tensor<const D: usize>(values: Vec<i32>, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::I32))
}

/// `[rows, cols]` words → fields, expanded along `axis`: `[rows * per, cols]` for axis 0,
/// `[rows, cols * per]` for axis 1. Field `i` of word `w` lands at `w * per + i`.
pub fn unpack(words: Tensor<2, Int>, bits: u32, axis: usize) -> Tensor<2, Int> {
    let per = per_word(bits);
    let mask = (1i64 << bits) - 1;
    let [rows, cols] = words.dims();
    let fields: Vec<Tensor<2, Int>> = (0..per)
        .map(|i| words.clone().bitwise_right_shift_scalar((i as u32 * bits) as i64).bitwise_and_scalar(mask))
        .collect();
    match axis {
        0 => Tensor::stack::<3>(fields, 1).reshape([rows * per, cols]),
        _ => Tensor::stack::<3>(fields, 2).reshape([rows, cols * per]),
    }
}

/// Inverse of [`unpack`]: values (each in `0..2^bits`) packed along `axis`, whose length
/// must be a multiple of the fields per word.
pub fn pack(values: Tensor<2, Int>, bits: u32, axis: usize) -> Tensor<2, Int> {
    let per = per_word(bits);
    let [rows, cols] = values.dims();
    let grouped: Tensor<3, Int> = match axis {
        0 => values.reshape([rows / per, per, cols]),
        _ => values.reshape([rows, cols / per, per]).swap_dims(1, 2),
    };
    let [a, _, b] = grouped.dims();
    let mut words = Tensor::<2, Int>::zeros([a, b], (&grouped.device(), DType::I32));
    for i in 0..per {
        let field: Tensor<2, Int> = grouped.clone().narrow(1, i, 1).reshape([a, b]);
        words = words.bitwise_or(field.bitwise_left_shift_scalar((i as u32 * bits) as i64));
    }
    words
}
