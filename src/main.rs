mod cli;

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    if let Err(error) = cli.command.execute() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
