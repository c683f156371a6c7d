//! Tensors as read from a checkpoint: raw little-endian bytes on the host, borrowed from a
//! memory map where possible, decoded and uploaded to a Burn device one at a time.

use std::borrow::Cow;

use burn::tensor::{Device, Int, Tensor, TensorData};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::{ComputeDtype, StoredDtype};
use crate::error::CheckpointError;

/// Values per task of [`HostTensor::to_f32_vec`].
const DECODE_CHUNK: usize = 1 << 16;

fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    for (value, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Through `half`'s slice conversion, which uses the CPU's f16 instructions where it has them.
fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    let halves: Vec<f16> = bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect();
    halves.convert_to_f32_slice(out);
}

/// A bf16 is the top half of an f32.
fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    for (value, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *value = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

/// One tensor's bytes and metadata, still on the host.
#[derive(Debug, Clone)]
pub struct HostTensor<'a> {
    pub name: String,
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
}

impl<'a> HostTensor<'a> {
    pub fn new(name: impl Into<String>, dtype: StoredDtype, shape: Vec<usize>, bytes: Cow<'a, [u8]>) -> Self {
        Self { name: name.into(), dtype, shape, bytes }
    }

    /// The same tensor owning its bytes (copied out of a memory map if borrowed).
    pub fn into_owned(self) -> HostTensor<'static> {
        HostTensor { name: self.name, dtype: self.dtype, shape: self.shape, bytes: Cow::Owned(self.bytes.into_owned()) }
    }

    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    fn require(&self, ok: bool, expected: &str) -> Result<(), CheckpointError> {
        if ok {
            Ok(())
        } else {
            Err(CheckpointError::DtypeMismatch {
                name: self.name.clone(),
                expected: expected.to_string(),
                found: self.dtype,
            })
        }
    }

    /// Decodes a float tensor (F32/F16/BF16) to f32 values, a chunk per rayon task (a
    /// model's weights pass through here once each when they are quantized at load or
    /// converted to f32).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, CheckpointError> {
        self.require(self.dtype.is_float(), "a float type (F32, F16 or BF16)")?;
        let width = self.dtype.size_in_bytes();
        let decode: fn(&[u8], &mut [f32]) = match self.dtype {
            StoredDtype::F32 => decode_f32,
            StoredDtype::F16 => decode_f16,
            _ => decode_bf16,
        };
        let mut values = vec![0f32; self.bytes.len() / width];
        values.par_chunks_mut(DECODE_CHUNK).zip(self.bytes.par_chunks(DECODE_CHUNK * width)).for_each(|(out, bytes)| decode(bytes, out));
        Ok(values)
    }

    /// Decodes an integer tensor (I64/I32/I16/I8/U8) to i64 values.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, CheckpointError> {
        self.require(self.dtype.is_int(), "an integer type")?;
        let b = &self.bytes;
        Ok(match self.dtype {
            StoredDtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            StoredDtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            StoredDtype::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            StoredDtype::I8 => b.iter().map(|&v| v as i8 as i64).collect(),
            _ => b.iter().map(|&v| v as i64).collect(),
        })
    }

    /// Decodes an I32 tensor as raw 32-bit words (packed quantized weights).
    pub fn to_i32_vec(&self) -> Result<Vec<i32>, CheckpointError> {
        self.require(self.dtype == StoredDtype::I32, "I32")?;
        Ok(self.bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Uploads a float tensor to `device`, converted to `dtype` on the host so that only
    /// the final representation is allocated on the device.
    pub fn to_float_tensor<const D: usize>(
        &self,
        device: &Device,
        dtype: ComputeDtype,
    ) -> Result<Tensor<D>, CheckpointError> {
        let shape = self.shape_of_rank::<D>()?;
        let data = match (dtype, self.dtype) {
            (ComputeDtype::F32, _) => TensorData::new(self.to_f32_vec()?, shape),
            (ComputeDtype::F16, StoredDtype::F16) => TensorData::new(pod_vec::<f16>(&self.bytes, f16::from_le_bytes), shape),
            (ComputeDtype::BF16, StoredDtype::BF16) => {
                TensorData::new(pod_vec::<bf16>(&self.bytes, bf16::from_le_bytes), shape)
            }
            (ComputeDtype::F16, _) => {
                TensorData::new(self.to_f32_vec()?.into_iter().map(f16::from_f32).collect::<Vec<_>>(), shape)
            }
            (ComputeDtype::BF16, _) => {
                TensorData::new(self.to_f32_vec()?.into_iter().map(bf16::from_f32).collect::<Vec<_>>(), shape)
            }
        };
        Ok(Tensor::from_data(data, (device, dtype.burn())))
    }

    /// Uploads an I32 tensor's raw words as an i32 device tensor (packed weights).
    pub fn to_i32_tensor<const D: usize>(&self, device: &Device) -> Result<Tensor<D, Int>, CheckpointError> {
        let shape = self.shape_of_rank::<D>()?;
        Ok(crate::packing::int_tensor(self.to_i32_vec()?, shape, device))
    }

    /// Uploads a float tensor as f32 (scales), rejecting NaN and infinity.
    pub fn to_f32_tensor<const D: usize>(&self, device: &Device) -> Result<Tensor<D>, CheckpointError> {
        let shape = self.shape_of_rank::<D>()?;
        let values = self.to_f32_vec()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(CheckpointError::InvalidValues { name: self.name.clone(), reason: format!("holds {bad}; scales must be finite") });
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), (device, burn::tensor::DType::F32)))
    }

    /// Packs a one-byte tensor (I8/U8/F8) four bytes per i32 word along the last axis,
    /// `[rows, cols]` → `[rows, cols/4]`; `cols` must be a multiple of 4.
    pub fn bytes_as_words(&self, device: &Device) -> Result<Tensor<2, Int>, CheckpointError> {
        let [rows, cols] = self.shape_of_rank::<2>()?;
        if self.dtype.size_in_bytes() != 1 || cols % 4 != 0 {
            return Err(CheckpointError::ShapeMismatch {
                name: self.name.clone(),
                expected: "a one-byte dtype with a last dimension divisible by 4".into(),
                found: self.shape.clone(),
            });
        }
        let words = self.bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(crate::packing::int_tensor(words, [rows, cols / 4], device))
    }

    fn shape_of_rank<const D: usize>(&self) -> Result<[usize; D], CheckpointError> {
        self.shape.as_slice().try_into().map_err(|_| CheckpointError::ShapeMismatch {
            name: self.name.clone(),
            expected: format!("a rank-{D} tensor"),
            found: self.shape.clone(),
        })
    }
}

fn pod_vec<T>(bytes: &[u8], from_le: fn([u8; 2]) -> T) -> Vec<T> {
    bytes.chunks_exact(2).map(|c| from_le([c[0], c[1]])).collect()
}
