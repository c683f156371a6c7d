//! The runtime representations every format lands in (see DESIGN.md): few and closed,
//! so kernels know them all.

pub mod activation;
pub mod expert_stack;
pub mod fp8;
pub mod int_fragments;
pub mod packed_int;
pub mod w8a8;

pub use activation::{quantize_activations, round_to_e4m3, scale_from_absmax, ActivationGrid, ActivationQuant, QuantizedActivations};
pub use expert_stack::ExpertStack;
pub use fp8::{e4m3_table, e4m3_value, Fp8Weight};
pub use int_fragments::IntFragments;
pub use packed_int::{InputOrder, PackedIntWeight, ZeroPoints};
pub use w8a8::W8A8Weight;
