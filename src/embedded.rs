//! The default model, embedded in the binary so `ember run` works on a fresh machine with
//! no download: a tiny Llama (4 layers, hidden 256, byte-level BPE) trained on English
//! prose. It is written once to the user cache and then loaded like any directory.

use std::path::PathBuf;

use crate::error::Error;

pub const NAME: &str = "llama-tiny-f16";

macro_rules! embed {
    ($($file:literal),* $(,)?) => {
        [$(($file, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/llama-tiny-f16/", $file)) as &[u8])),*]
    };
}

const FILES: [(&str, &[u8]); 7] = embed!(
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
);

/// Writes the embedded model to `<cache>/ember/<version>/llama-tiny-f16` (once) and
/// returns that directory.
pub fn materialize() -> Result<PathBuf, Error> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = cache.join("ember").join(env!("CARGO_PKG_VERSION")).join(NAME);
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    std::fs::create_dir_all(&dir).map_err(io(dir.clone()))?;
    for (name, bytes) in FILES {
        let path = dir.join(name);
        let current = std::fs::metadata(&path).map(|m| m.len() == bytes.len() as u64).unwrap_or(false);
        if !current {
            // Write then rename, so a concurrent reader never maps a half-written file.
            let partial = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&partial, bytes).map_err(io(partial.clone()))?;
            std::fs::rename(&partial, &path).map_err(io(path.clone()))?;
        }
    }
    Ok(dir)
}
