//! Building blocks shared by every architecture.

pub mod attention;
pub mod kv_cache;
pub mod mlp;
pub mod moe;
pub mod paged_kv;
pub mod rms_norm;
pub mod rope;

pub use attention::{Attention, StepPositions};
pub use kv_cache::{KvCache, LayerCache};
pub use mlp::{Mlp, MlpNames};
pub use moe::SparseMoe;
pub use paged_kv::{PagedKvCache, SequenceChunk, StepLayout};
pub use rms_norm::RmsNorm;
pub use rope::{Rope, RopeTables};
