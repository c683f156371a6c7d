//! Finding a model: a local directory, a Hugging Face repo id (through the standard local
//! HF cache, downloading when online), or the small model embedded in the binary.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo};

use crate::checkpoint::{SHARD_INDEX, SINGLE_FILE};
use crate::error::Error;

/// Files a model directory may hold besides its weights.
const SIDE_FILES: [&str; 5] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];

/// Resolves `--model`: an existing directory is used as is; `org/name` is looked up in
/// the HF cache (`HF_HOME`/`HF_HUB_CACHE`) and downloaded when missing, unless
/// `HF_HUB_OFFLINE=1`.
pub fn resolve_model(spec: &str) -> Result<PathBuf, Error> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let not_found = |reason: String| Error::ModelNotFound { spec: spec.to_string(), reason };
    if path.exists() {
        return Err(not_found("expected a directory holding config.json".into()));
    }
    if spec.split('/').count() != 2 || spec.starts_with('.') || spec.starts_with('/') {
        return Err(not_found("no such directory, and not a Hugging Face repo id (org/name)".into()));
    }
    if let Some(dir) = cached(spec) {
        return Ok(dir);
    }
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        return Err(not_found("not in the local Hugging Face cache and HF_HUB_OFFLINE=1".into()));
    }
    download(spec).map_err(not_found)
}

/// The snapshot directory of a cached repo, if config.json and weights are present.
fn cached(repo_id: &str) -> Option<PathBuf> {
    let repo = Cache::from_env().repo(Repo::model(repo_id.to_string()));
    let config = repo.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    (dir.join(SINGLE_FILE).is_file() || dir.join(SHARD_INDEX).is_file()).then_some(dir)
}

fn download(repo_id: &str) -> Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).build().map_err(|e| e.to_string())?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").map_err(|e| format!("downloading config.json: {e}"))?;
    for file in SIDE_FILES.iter().skip(1) {
        // Optional files: a repo without them is still usable.
        let _ = repo.get(file);
    }
    match repo.get(SHARD_INDEX) {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{SHARD_INDEX}: {e}"))?;
            let mut shards: Vec<&str> =
                json["weight_map"].as_object().into_iter().flatten().filter_map(|(_, v)| v.as_str()).collect();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                repo.get(shard).map_err(|e| format!("downloading {shard}: {e}"))?;
            }
        }
        Err(_) => {
            repo.get(SINGLE_FILE).map_err(|e| format!("downloading {SINGLE_FILE}: {e}"))?;
        }
    }
    config.parent().map(Path::to_path_buf).ok_or_else(|| "unexpected cache layout".into())
}
