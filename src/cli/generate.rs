//! `ember generate`: offline batch generation over a JSONL file of prompts, one result
//! line per prompt in the same order (vLLM's `LLM.generate` from the command line).

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember::engine::{Engine, Prompt, RequestOutput, SamplingParams};
use ember::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{EngineArgs, ModelArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// JSONL: each line a prompt string, or an object with `prompt`, `prompt_token_ids`
    /// or chat `messages`, and optional sampling fields (max_tokens, temperature, top_p,
    /// top_k, min_p, seed, n, stop, stop_token_ids, presence_penalty, frequency_penalty,
    /// repetition_penalty, logprobs, ignore_eos).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write one JSON result per line.
    #[arg(long)]
    pub output: PathBuf,
    /// max_tokens for lines that do not set it.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// temperature for lines that do not set it (default: the model's generation_config).
    #[arg(long)]
    pub temperature: Option<f32>,
}

/// One input line in object form; unknown fields are an error, so typos do not pass
/// silently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: Option<String>,
    prompt_token_ids: Option<Vec<u32>>,
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    n: Option<usize>,
    stop: Option<StopField>,
    stop_token_ids: Option<Vec<u32>>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logprobs: Option<usize>,
    ignore_eos: Option<bool>,
}

/// OpenAI accepts one stop string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

pub fn execute(args: GenerateArgs) -> Result<()> {
    let input = std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let mut texts = Vec::new();
    for (number, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.input.display()))?;
        if !line.trim().is_empty() {
            texts.push((number + 1, line));
        }
    }
    let loaded = args.model.load()?;
    let mut defaults = loaded.generation.sampling_defaults();
    defaults.max_tokens = args.max_tokens;
    if let Some(t) = args.temperature {
        defaults.temperature = t;
    }
    let mut requests = Vec::with_capacity(texts.len());
    for (number, text) in &texts {
        let request = parse_line(text, &defaults, loaded.tokenizer.as_ref())
            .with_context(|| format!("{} line {number}", args.input.display()))?;
        requests.push(request);
    }
    let prompts: Vec<Value> = requests.iter().map(|(prompt, _)| prompt_json(prompt)).collect();
    let mut engine = Engine::new(loaded, &args.engine.config())?;
    let started = std::time::Instant::now();
    let outputs = engine.generate(requests, true)?;
    let seconds = started.elapsed().as_secs_f64();

    let file = std::fs::File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let mut writer = BufWriter::new(file);
    let mut generated = 0;
    for (index, (output, prompt)) in outputs.iter().zip(prompts).enumerate() {
        generated += output.metrics.completion_tokens;
        serde_json::to_writer(&mut writer, &result_json(index, prompt, output))?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    eprintln!(
        "{} requests, {generated} tokens generated in {seconds:.2} s ({:.1} tokens/s); wrote {}",
        outputs.len(),
        generated as f64 / seconds.max(1e-9),
        args.output.display()
    );
    Ok(())
}

fn parse_line(text: &str, defaults: &SamplingParams, tokenizer: Option<&ember::Tokenizer>) -> Result<(Prompt, SamplingParams)> {
    let value: Value = serde_json::from_str(text).context("not valid JSON")?;
    if let Value::String(prompt) = value {
        return Ok((Prompt::Text(prompt), defaults.clone()));
    }
    let line: Line = serde_json::from_value(value)?;
    let prompt = match (line.prompt, line.prompt_token_ids, line.messages) {
        (Some(text), None, None) => Prompt::Text(text),
        (None, Some(ids), None) => Prompt::Tokens(ids),
        (None, None, Some(messages)) => {
            let tokenizer = tokenizer.context("chat `messages` need the model's tokenizer")?;
            Prompt::Tokens(tokenizer.encode_chat(&messages)?)
        }
        _ => bail!("give exactly one of `prompt`, `prompt_token_ids` and `messages`"),
    };
    let d = defaults;
    let params = SamplingParams {
        max_tokens: line.max_tokens.unwrap_or(d.max_tokens),
        temperature: line.temperature.unwrap_or(d.temperature),
        top_p: line.top_p.unwrap_or(d.top_p),
        top_k: line.top_k.unwrap_or(d.top_k),
        min_p: line.min_p.unwrap_or(d.min_p),
        seed: line.seed.or(d.seed),
        n: line.n.unwrap_or(d.n),
        stop: match line.stop {
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(list)) => list,
            None => d.stop.clone(),
        },
        stop_token_ids: line.stop_token_ids.unwrap_or_else(|| d.stop_token_ids.clone()),
        presence_penalty: line.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: line.frequency_penalty.unwrap_or(d.frequency_penalty),
        repetition_penalty: line.repetition_penalty.unwrap_or(d.repetition_penalty),
        logprobs: line.logprobs.or(d.logprobs),
        ignore_eos: line.ignore_eos.unwrap_or(d.ignore_eos),
    };
    params.validate().map_err(anyhow::Error::msg)?;
    Ok((prompt, params))
}

fn prompt_json(prompt: &Prompt) -> Value {
    match prompt {
        Prompt::Text(text) => json!(text),
        Prompt::Tokens(ids) => json!(ids),
    }
}

fn result_json(index: usize, prompt: Value, output: &RequestOutput) -> Value {
    let completions: Vec<Value> = output
        .completions
        .iter()
        .map(|c| {
            let mut entry = json!({
                "index": c.index,
                "text": c.text,
                "token_ids": c.token_ids,
                "finish_reason": c.finish_reason.as_str(),
            });
            if !c.logprobs.is_empty() {
                entry["logprobs"] = c
                    .logprobs
                    .iter()
                    .map(|lp| json!({ "token": lp.token, "logprob": lp.logprob, "top": lp.top.iter().map(|&(t, l)| json!([t, l])).collect::<Vec<_>>() }))
                    .collect();
            }
            entry
        })
        .collect();
    let m = &output.metrics;
    json!({
        "index": index,
        "prompt": prompt,
        "outputs": completions,
        "usage": { "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens },
        "time_to_first_token_ms": m.time_to_first_token.as_secs_f64() * 1e3,
        "latency_ms": m.latency.as_secs_f64() * 1e3,
    })
}
