//! `ember check <dir>`: a readable report on a checkpoint, without loading it.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct CheckArgs {
    /// Model directory or Hugging Face repo id.
    #[arg(value_name = "MODEL")]
    pub model: String,
}

pub fn execute(args: CheckArgs) -> Result<()> {
    let dir = super::model_dir(Some(&args.model))?;
    println!("checking       {}", dir.display());
    let report = ember::check::check_checkpoint(&dir);
    print!("{}", report.render());
    std::io::Write::flush(&mut std::io::stdout())?;
    if !report.is_clean() {
        bail!("{} has {} problem(s)", dir.display(), report.problems.len());
    }
    Ok(())
}
