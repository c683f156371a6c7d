//! Generation (sampling, stop handling, the decode loop) and perplexity scoring.

mod generate;
mod perplexity;
mod sampling;
mod stop;

pub use generate::{check_prompt, generate, FinishReason, Generation, GenerationRequest};
pub use perplexity::{perplexity, PerplexityReport};
pub use sampling::{argmax, Sampler, SamplingParams};
pub use stop::StopStrings;
