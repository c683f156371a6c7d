//! `ember run`: stream a completion for one prompt.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use ember::engine::{generate, GenerationRequest};
use ember::ChatMessage;

use super::ModelArgs;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Maximum new tokens (default: generation_config's max_new_tokens, else 128).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// 0 is greedy (default: the model's generation_config).
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable); the output ends before it.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn execute(args: RunArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let tokenizer = loaded.tokenizer()?;
    let prompt_ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        tokenizer.encode_chat(&messages)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let mut sampling = loaded.generation.sampling_defaults();
    if let Some(t) = args.temperature {
        sampling.temperature = t;
    }
    if let Some(k) = args.top_k {
        sampling.top_k = k;
    }
    if let Some(p) = args.top_p {
        sampling.top_p = p;
    }
    if let Some(r) = args.repetition_penalty {
        sampling.repetition_penalty = r;
    }
    sampling.seed = args.seed;
    let request = GenerationRequest {
        prompt_ids,
        sampling,
        max_tokens: args.max_tokens.or(loaded.generation.max_new_tokens).unwrap_or(128),
        stop_token_ids: if args.ignore_eos { Vec::new() } else { loaded.stop_token_ids() },
        stop_strings: args.stop.clone(),
    };
    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        write!(stdout, "{}", args.prompt)?;
    }
    let generation = generate(&loaded.model, tokenizer, &request, &mut |text| {
        let _ = write!(stdout, "{text}");
        let _ = stdout.flush();
    })?;
    writeln!(stdout)?;
    eprintln!(
        "\n{} prompt tokens, {} new tokens ({}); prefill {:.1} ms, decode {:.2} tokens/s",
        generation.prompt_tokens,
        generation.tokens.len(),
        generation.finish_reason.as_str(),
        generation.prefill_time.as_secs_f64() * 1e3,
        generation.decode_tokens_per_second(),
    );
    Ok(())
}
