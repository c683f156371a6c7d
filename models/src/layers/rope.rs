//! Rotary position embeddings (the non-interleaved "rotate half" form of Llama), with
//! linear and Llama 3 frequency scaling. Cos/sin are computed on the host in f32 for
//! the positions of one step only, so long contexts cost no table memory.

use std::f32::consts::PI;

use burn::tensor::{Device, Tensor, TensorData};
use ember_quant::{kernels, ComputeDtype};

use crate::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

/// Cos/sin for the tokens of one step, shaped `[1, 1, tokens, head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let dim = config.head_dim;
        let inv_freq = (0..dim / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / dim as f32))
            .map(|f| scale_frequency(f, &config.rope_scaling))
            .collect();
        Self { inv_freq }
    }

    /// Per-pair rotation frequencies after scaling (`head_dim / 2` values).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Tables for the consecutive positions `start..start + len`.
    pub fn tables(&self, start: usize, len: usize, device: &Device, dtype: ComputeDtype) -> RopeTables {
        self.tables_at(start..start + len, device, dtype)
    }

    /// Tables for arbitrary positions, one row per token (a batch of sequences flattened).
    pub fn tables_at(&self, positions: impl ExactSizeIterator<Item = usize>, device: &Device, dtype: ComputeDtype) -> RopeTables {
        let half = self.inv_freq.len();
        let len = positions.len();
        let mut cos = Vec::with_capacity(len * half * 2);
        let mut sin = Vec::with_capacity(len * half * 2);
        for pos in positions {
            let angles: Vec<f32> = self.inv_freq.iter().map(|f| pos as f32 * f).collect();
            // The two halves of a head share frequencies.
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let upload = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, len, half * 2]), (device, dtype.burn()));
        RopeTables { cos: upload(cos), sin: upload(sin) }
    }
}

impl RopeTables {
    /// Rotates `x` of shape `[tokens, heads, head_dim]` (a step's tokens flattened, the
    /// tables' rows): in one pass on the Flex device, else by [`Self::apply`].
    pub fn apply_rows(&self, x: Tensor<3>) -> Tensor<3> {
        let [tokens, heads, d] = x.dims();
        if self.cos.dims() == [1, 1, tokens, d] {
            let (cos, sin) = (self.cos.clone().reshape([tokens, d]), self.sin.clone().reshape([tokens, d]));
            if let Some(rotated) = kernels::rotate_half_rows(&x, &cos, &sin) {
                return rotated;
            }
        }
        self.apply(x.reshape([1, tokens, heads, d]).swap_dims(1, 2)).swap_dims(1, 2).reshape([tokens, heads, d])
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = x.dims()[3];
        let first = x.clone().narrow(3, 0, d / 2);
        let second = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

fn scale_frequency(inv_freq: f32, scaling: &RopeScaling) -> f32 {
    match *scaling {
        RopeScaling::None => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / factor,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let context = original_max_position_embeddings as f32;
            let wavelen = 2.0 * PI / inv_freq;
            if wavelen < context / high_freq_factor {
                inv_freq
            } else if wavelen > context / low_freq_factor {
                inv_freq / factor
            } else {
                let smooth = (context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
            }
        }
    }
}
