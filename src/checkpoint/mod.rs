//! Checkpoint sources: safetensors (single file or sharded through
//! `model.safetensors.index.json`), and deterministic dummy weights for benchmarking
//! real-size configs without their weights.

mod dummy;
mod safetensors;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use ember_quant::{CheckpointError, HostTensor, TensorMeta, TensorSource, WeightSpec};
use indicatif::{ProgressBar, ProgressStyle};

pub use self::dummy::DummySource;
pub use self::safetensors::{safetensors_dtype, SafetensorsFile};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Every tensor of a checkpoint directory, across its shards.
pub struct SafetensorsCheckpoint {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    owner: HashMap<String, usize>,
}

impl SafetensorsCheckpoint {
    /// Opens `dir/model.safetensors.index.json` and its shards, or `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let index = dir.join(SHARD_INDEX);
        if index.is_file() {
            Self::open_sharded(dir, &index)
        } else if dir.join(SINGLE_FILE).is_file() {
            Self::from_files(dir, vec![SafetensorsFile::open(&dir.join(SINGLE_FILE))?])
        } else {
            Err(CheckpointError::NoWeights { dir: dir.to_path_buf() })
        }
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self, CheckpointError> {
        let shard_names = read_shard_index(index)?;
        let progress = shard_progress(shard_names.len() as u64);
        let mut files = Vec::with_capacity(shard_names.len());
        for (shard, listed) in &shard_names {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(CheckpointError::MissingShard { index: index.to_path_buf(), shard: shard.clone() });
            }
            progress.set_message(shard.clone());
            let file = SafetensorsFile::open(&path)?;
            if let Some(name) = listed.iter().find(|name| file.meta(name).is_none()) {
                return Err(CheckpointError::MissingTensor {
                    name: name.clone(),
                    location: format!("{} (where {} places it)", path.display(), index.display()),
                });
            }
            files.push(file);
            progress.inc(1);
        }
        progress.finish_and_clear();
        Self::from_files(dir, files)
    }

    fn from_files(dir: &Path, files: Vec<SafetensorsFile>) -> Result<Self, CheckpointError> {
        let mut owner = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                if let Some(&first) = owner.get(&name) {
                    let first: &SafetensorsFile = &files[first];
                    return Err(CheckpointError::DuplicateTensor {
                        name,
                        first: first.path().to_path_buf(),
                        second: file.path().to_path_buf(),
                    });
                }
                owner.insert(name, i);
            }
        }
        Ok(Self { dir: dir.to_path_buf(), files, owner })
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The file that stores `name`.
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.owner.get(name).map(|&i| &self.files[i])
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.owner.keys().filter_map(|n| self.meta(n)).map(|m| (m.shape.iter().product::<usize>() * m.dtype.size_in_bytes()) as u64).sum()
    }
}

impl TensorSource for SafetensorsCheckpoint {
    fn load(&self, spec: &WeightSpec) -> Result<HostTensor<'_>, CheckpointError> {
        let tensor = self
            .file_of(&spec.name)
            .and_then(|file| file.tensor(&spec.name))
            .ok_or_else(|| CheckpointError::MissingTensor { name: spec.name.clone(), location: self.describe() })??;
        spec.check(tensor.dtype, &tensor.shape)?;
        Ok(tensor)
    }

    fn contains(&self, name: &str) -> Option<bool> {
        Some(self.owner.contains_key(name))
    }

    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.file_of(name)?.meta(name)?.ok()
    }

    fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.owner.keys().cloned().collect();
        names.sort();
        names
    }

    fn describe(&self) -> String {
        match self.files.as_slice() {
            [one] => one.path().display().to_string(),
            many => format!("{} ({} shards)", self.dir.display(), many.len()),
        }
    }
}

/// Reads the index's `weight_map`, grouped by shard file (sorted for a stable load order).
fn read_shard_index(index: &Path) -> Result<BTreeMap<String, BTreeSet<String>>, CheckpointError> {
    let malformed = |reason: String| CheckpointError::MalformedIndex { path: index.to_path_buf(), reason };
    let text = std::fs::read_to_string(index).map_err(|source| CheckpointError::Io { path: index.to_path_buf(), source })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| malformed(format!("line {}, column {}: {e}", e.line(), e.column())))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| malformed("no `weight_map` object".into()))?;
    let mut shards: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| malformed(format!("shard of `{tensor}` is not a string")))?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(malformed(format!("shard `{shard}` of `{tensor}` is not a file name in the checkpoint directory")));
        }
        shards.entry(shard.to_string()).or_default().insert(tensor.clone());
    }
    if shards.is_empty() {
        return Err(malformed("`weight_map` is empty".into()));
    }
    Ok(shards)
}

fn shard_progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("opening shards {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
