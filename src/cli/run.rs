//! `ember run`: stream a completion for one prompt.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use ember::engine::{Engine, Prompt};
use ember::ChatMessage;

use super::{EngineArgs, ModelArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
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
    let mut params = loaded.generation.sampling_defaults();
    if let Some(t) = args.temperature {
        params.temperature = t;
    }
    if let Some(k) = args.top_k {
        params.top_k = k;
    }
    if let Some(p) = args.top_p {
        params.top_p = p;
    }
    if let Some(r) = args.repetition_penalty {
        params.repetition_penalty = r;
    }
    params.seed = args.seed;
    params.max_tokens = args.max_tokens.or(loaded.generation.max_new_tokens).unwrap_or(128);
    params.stop = args.stop.clone();
    params.ignore_eos = args.ignore_eos;

    let mut engine = Engine::new(loaded, &args.engine.config())?;
    engine.add_request(Prompt::Tokens(prompt_ids), params)?;
    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        write!(stdout, "{}", args.prompt)?;
    }
    let mut finished = None;
    while engine.has_unfinished() {
        for output in engine.step()? {
            for delta in &output.deltas {
                write!(stdout, "{}", delta.text)?;
                if let Some(reason) = delta.finish_reason {
                    finished = Some(reason);
                }
            }
            stdout.flush()?;
            if let Some(metrics) = output.finished {
                let reason = finished.map_or("aborted", |r| r.as_str());
                writeln!(stdout)?;
                eprintln!(
                    "\n{} prompt tokens, {} new tokens ({reason}); time to first token {:.1} ms, decode {:.2} tokens/s",
                    metrics.prompt_tokens,
                    metrics.completion_tokens,
                    metrics.time_to_first_token.as_secs_f64() * 1e3,
                    metrics.decode_tokens_per_second(),
                );
            }
        }
    }
    Ok(())
}
