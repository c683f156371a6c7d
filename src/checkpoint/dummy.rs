//! Dummy weights (`--load-format dummy`): every requested tensor exists, with the requested
//! shape, filled with deterministic pseudo-random values seeded by its name. Lets a
//! real-size config be benchmarked with no weights on disk.

use std::borrow::Cow;

use ember_quant::{CheckpointError, ComputeDtype, DtypeRule, HostTensor, StoredDtype, TensorMeta, TensorSource, WeightSpec};
use half::{bf16, f16};

#[derive(Debug, Clone)]
pub struct DummySource {
    /// The dtype produced for specs that accept any float (no conversion at load).
    float_dtype: ComputeDtype,
    seed: u64,
}

impl DummySource {
    pub fn new(float_dtype: ComputeDtype, seed: u64) -> Self {
        Self { float_dtype, seed }
    }
}

impl TensorSource for DummySource {
    fn load(&self, spec: &WeightSpec) -> Result<HostTensor<'_>, CheckpointError> {
        let dtype = match spec.dtype {
            DtypeRule::AnyFloat => self.float_dtype.stored(),
            DtypeRule::Exactly(d) => d,
        };
        let count: usize = spec.shape.iter().product();
        let mut rng = SplitMix64(self.seed ^ fnv1a(spec.name.as_bytes()));
        // Keep activations bounded: 1-D tensors (norm weights, biases) near one, matrices
        // scaled by their fan-in like a standard initialisation.
        let (center, spread) = match spec.shape.as_slice() {
            [_] => (1.0, 0.1),
            shape => (0.0, 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt()),
        };
        let mut float = || center + spread * (2.0 * rng.unit() - 1.0);
        let bytes: Vec<u8> = match dtype {
            StoredDtype::F32 => (0..count).flat_map(|_| float().to_le_bytes()).collect(),
            StoredDtype::F16 => (0..count).flat_map(|_| f16::from_f32(float()).to_le_bytes()).collect(),
            StoredDtype::BF16 => (0..count).flat_map(|_| bf16::from_f32(float()).to_le_bytes()).collect(),
            other => {
                let mut bytes = vec![0u8; count * other.size_in_bytes()];
                bytes.chunks_mut(8).for_each(|chunk| {
                    let word = rng.next().to_le_bytes();
                    chunk.copy_from_slice(&word[..chunk.len()]);
                });
                bytes
            }
        };
        Ok(HostTensor::new(spec.name.clone(), dtype, spec.shape.clone(), Cow::Owned(bytes)))
    }

    fn contains(&self, _name: &str) -> Option<bool> {
        None
    }

    fn meta(&self, _name: &str) -> Option<TensorMeta> {
        None
    }

    fn tensor_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn describe(&self) -> String {
        format!("dummy weights ({}, seed {})", self.float_dtype, self.seed)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Small, fast, good-enough generator for filler values.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}
