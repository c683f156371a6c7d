//! Dummy weights (`--load-format dummy`): every requested tensor exists, with the requested
//! shape, filled with deterministic pseudo-random values seeded by its name. Lets a
//! real-size config be benchmarked with no weights on disk.

use std::borrow::Cow;

use ember_quant::{CheckpointError, ComputeDtype, DtypeRule, HostTensor, StoredDtype, TensorMeta, TensorSource, WeightSpec};
use half::{bf16, f16};
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct DummySource {
    /// The dtype produced for specs that accept any float: the one the config says the
    /// checkpoint holds.
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
        let rng = SplitMix64(self.seed ^ fnv1a(spec.name.as_bytes()));
        // Keep activations bounded: 1-D tensors (norm weights, biases) near one, matrices
        // scaled by their fan-in like a standard initialisation.
        let (center, spread) = match spec.shape.as_slice() {
            [_] => (1.0, 0.1),
            shape => (0.0, 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt()),
        };
        let float = |rng: &mut SplitMix64| center + spread * (2.0 * rng.unit() - 1.0);
        // Filled a chunk per rayon task, each task's generator skipped ahead to its first
        // value, so the values are those of one sequential pass.
        let width = dtype.size_in_bytes();
        let mut bytes = vec![0u8; count * width];
        bytes.par_chunks_mut(VALUES_PER_TASK * width).enumerate().for_each(|(task, out)| match dtype {
            StoredDtype::F32 | StoredDtype::F16 | StoredDtype::BF16 => {
                let mut rng = rng.skipped(task * VALUES_PER_TASK);
                for value in out.chunks_exact_mut(width) {
                    let v = float(&mut rng);
                    match dtype {
                        StoredDtype::F32 => value.copy_from_slice(&v.to_le_bytes()),
                        StoredDtype::F16 => value.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
                        _ => value.copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
                    }
                }
            }
            _ => {
                // Raw words, eight bytes per draw (a task's bytes are a multiple of eight).
                let mut rng = rng.skipped(task * VALUES_PER_TASK * width / 8);
                for chunk in out.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
                }
            }
        });
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

/// Values filled per rayon task.
const VALUES_PER_TASK: usize = 1 << 16;

/// Small, fast, good-enough generator for filler values.
#[derive(Clone, Copy)]
struct SplitMix64(u64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// The generator after `draws` calls of `next`: its state only ever adds `GAMMA`.
    fn skipped(self, draws: usize) -> Self {
        Self(self.0.wrapping_add(Self::GAMMA.wrapping_mul(draws as u64)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
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
