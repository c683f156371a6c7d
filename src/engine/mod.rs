//! Generation: sampling, stop handling, and the decode loop.

mod generate;
mod sampling;
mod stop;

pub use generate::{check_prompt, generate, FinishReason, Generation, GenerationRequest};
pub use sampling::{argmax, Sampler, SamplingParams};
pub use stop::StopStrings;
