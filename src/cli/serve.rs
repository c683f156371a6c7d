//! `ember serve`: the OpenAI-compatible HTTP server (a drop-in for `vllm serve`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use ember::engine::Engine;
use ember::server::{Server, ServerConfig};

use super::{EngineArgs, ModelArgs};

#[derive(Args)]
pub struct ServeArgs {
    /// Model directory or Hugging Face repo id (the same as --model).
    #[arg(value_name = "MODEL", conflicts_with = "model")]
    pub model_path: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on; 0.0.0.0 exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "EMBER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model name clients send and /v1/models lists (default: the model argument).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Seconds in-flight requests may run after SIGINT/SIGTERM before they are aborted.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Seconds a client may read nothing of its response before it is disconnected.
    #[arg(long, default_value_t = 60)]
    pub stalled_client_timeout: u64,
    /// Most tokens one request may ask to generate (prompts × n × max_tokens).
    #[arg(long, default_value_t = 1 << 18)]
    pub max_request_tokens: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
}

pub fn execute(mut args: ServeArgs) -> Result<()> {
    if let Some(path) = args.model_path.take() {
        args.model.model = Some(path);
    }
    let name = match (&args.served_model_name, &args.model.model) {
        (Some(name), _) => name.clone(),
        (None, Some(model)) => model.clone(),
        (None, None) => ember::embedded::NAME.to_string(),
    };
    if name.is_empty() {
        bail!("--served-model-name must not be empty");
    }
    let loaded = args.model.load()?;
    let engine = Engine::new(loaded, &args.engine.config())?;
    let mut config = ServerConfig::new(name);
    config.addr = SocketAddr::new(args.host, args.port);
    config.api_key = args.api_key.filter(|key| !key.is_empty());
    config.shutdown_grace = Duration::from_secs(args.shutdown_timeout);
    config.stalled_client_timeout = Duration::from_secs(args.stalled_client_timeout.max(1));
    config.max_request_tokens = args.max_request_tokens;
    config.max_body_bytes = args.max_body_bytes;
    config.handle_signals = true;
    let max_model_len = engine.max_model_len();
    let server = Server::start(engine, config.clone())?;
    // Tests and scripts read the address from this line.
    eprintln!(
        "serving `{}` on http://{} (context {max_model_len} tokens{}); Ctrl-C to stop",
        config.served_model_name,
        server.local_addr(),
        if config.api_key.is_some() { ", API key required" } else { "" }
    );
    server.wait()?;
    eprintln!("server stopped");
    Ok(())
}
