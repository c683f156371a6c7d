//! One module per checkpoint format. Each owns its tensor names, packing order and
//! unpacking into a runtime representation, documented at its top.

pub mod awq;
pub mod compressed_tensors;
pub mod fp8;
pub mod gptq;
pub mod rules;
pub mod torchao;
pub mod schemes;
