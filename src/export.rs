//! `ember quantize`: a float checkpoint in, a compressed-tensors checkpoint out, layer by
//! layer (each linear is read, quantized with the same recipe `--quantization` uses at
//! load, written, and dropped), so memory stays near one shard.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ember_models::{check_architecture, plan_linears, ModelConfig, Weights};
use ember_quant::dtype::DtypeRule;
use ember_quant::formats::compressed_tensors::export::{layer_tensors, quantization_config};
use ember_quant::online::{fp8_recipe, OnlineFactory, OnlineMethod, OnlineSettings};
use ember_quant::{ComputeDtype, HostTensor, LayerKind, LoadContext, Recipe, TensorSource, WeightSpec};
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::{Dtype, View};

use crate::checkpoint::{safetensors_dtype, SafetensorsCheckpoint};
use crate::error::Error;

/// The schemes `ember quantize` writes, named as llm-compressor names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportScheme {
    /// int4 weights, group scales (default 128), float activations.
    W4A16,
    /// int8 weights, per-channel scales (or groups), float activations.
    W8A16,
    /// int8 per-channel weights, int8 per-token dynamic activations.
    W8A8,
    /// e4m3 per-channel weights, e4m3 per-token dynamic activations (FP8_DYNAMIC).
    Fp8,
}

impl ExportScheme {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "w4a16" => Self::W4A16,
            "w8a16" => Self::W8A16,
            "w8a8" => Self::W8A8,
            "fp8" | "fp8_dynamic" => Self::Fp8,
            _ => return None,
        })
    }

    /// The recipe: the same one `--quantization int4|int8|w8a8|fp8` applies at load, with
    /// `settings` (group size, symmetry) for the int schemes.
    pub fn recipe(self, settings: &OnlineSettings) -> Result<Recipe, Error> {
        let config = settings.to_config();
        Ok(match self {
            Self::W4A16 => OnlineFactory::INT4.recipe(&config)?,
            Self::W8A16 => OnlineFactory::INT8.recipe(&config)?,
            Self::W8A8 => OnlineFactory::W8A8.recipe(&config)?,
            Self::Fp8 if settings.is_empty() => fp8_recipe(),
            Self::Fp8 => return Err(Error::InvalidArgument("--group-size, --symmetric and --asymmetric do not apply to fp8".into())),
        })
    }
}

pub struct ExportOptions {
    pub recipe: Recipe,
    /// Start a new shard once one holds this many bytes.
    pub max_shard_bytes: u64,
    pub progress: bool,
}

/// What an export wrote.
#[derive(Debug)]
pub struct ExportReport {
    pub quantized_layers: usize,
    pub shards: Vec<PathBuf>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Files that travel with a model: tokenizer, chat template, generation defaults.
fn is_side_file(name: &str) -> bool {
    const PREFIXES: [&str; 7] = ["tokenizer", "special_tokens_map", "generation_config", "chat_template", "vocab", "merges", "added_tokens"];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

pub fn export_compressed_tensors(model_dir: &Path, out_dir: &Path, options: &ExportOptions) -> Result<ExportReport, Error> {
    let config = ModelConfig::from_file(&model_dir.join("config.json"))?;
    check_architecture(&config)?;
    if ["quantization_config", "compression_config"].iter().any(|k| config.raw.get(*k).is_some_and(|v| !v.is_null())) {
        return Err(Error::InvalidArgument(format!("{} is already quantized; `ember quantize` takes a float checkpoint", model_dir.display())));
    }
    let source = SafetensorsCheckpoint::open(model_dir)?;
    let method = OnlineMethod::new("export", options.recipe.clone());
    let ctx = LoadContext::new(Device::flex(), ComputeDtype::F32);
    let plan = plan_linears(&Weights::new(&source, &method, &ctx), &config)?;
    let mut recipes = BTreeMap::new();
    let mut ignore = Vec::new();
    for layer in &plan {
        match method.recipe_for(layer) {
            Some(recipe) => {
                recipe.check(layer)?;
                recipes.insert(format!("{}.weight", layer.prefix), (layer.prefix.clone(), recipe));
            }
            None if layer.kind == LayerKind::LmHead => {}
            None => {
                let pattern = module_pattern(&layer.prefix);
                if !ignore.contains(&pattern) {
                    ignore.push(pattern);
                }
            }
        }
    }
    // Listed whether or not it is tied (a tied lm_head is not in the plan).
    ignore.push("lm_head".into());

    fs::create_dir_all(out_dir).map_err(|source| Error::Io { path: out_dir.to_path_buf(), source })?;
    let names = source.tensor_names();
    let bar = progress_bar(options.progress, names.len() as u64);
    let mut writer = ShardWriter::new(out_dir, options.max_shard_bytes);
    for name in &names {
        let meta = source.meta(name).ok_or_else(|| Error::InvalidArgument(format!("tensor `{name}` vanished from {}", source.describe())))?;
        let tensor = source.load(&WeightSpec::new(name.clone(), meta.shape, DtypeRule::Exactly(meta.dtype)))?;
        match recipes.get(name) {
            Some((prefix, recipe)) => {
                let quantized = recipe.quantize(&tensor)?;
                writer.extend(layer_tensors(prefix, recipe, &quantized))?;
            }
            None => writer.push(tensor.into_owned())?,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let shards = writer.finish()?;

    let mut raw = config.raw.clone();
    raw["quantization_config"] = quantization_config(&options.recipe, ignore)?;
    write_json(&out_dir.join("config.json"), &raw)?;
    copy_side_files(model_dir, out_dir)?;
    let bytes_out = shards.iter().map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    Ok(ExportReport { quantized_layers: recipes.len(), shards, bytes_in: source.total_bytes(), bytes_out })
}

/// `model.layers.3.block_sparse_moe.gate` → `re:.*block_sparse_moe\.gate$`: one ignore
/// entry for a module repeated in every layer.
fn module_pattern(prefix: &str) -> String {
    let parts: Vec<&str> = prefix.split('.').collect();
    match parts.iter().position(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) {
        Some(index) if index + 1 < parts.len() => format!("re:.*{}$", parts[index + 1..].join("\\.")),
        _ => prefix.to_string(),
    }
}

fn copy_side_files(from: &Path, to: &Path) -> Result<(), Error> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    for entry in fs::read_dir(from).map_err(io(from.to_path_buf()))? {
        let entry = entry.map_err(io(from.to_path_buf()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().map_err(io(entry.path()))?.is_file() && is_side_file(&name) {
            fs::copy(entry.path(), to.join(&name)).map_err(io(entry.path()))?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), Error> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let text = serde_json::to_string_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    fs::write(path, text).map_err(io)
}

fn progress_bar(visible: bool, len: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("quantizing {bar:30} {pos}/{len} tensors [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

/// A tensor as safetensors serializes it.
struct Stored(HostTensor<'static>);

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        safetensors_dtype(self.0.dtype)
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.0.bytes)
    }

    fn data_len(&self) -> usize {
        self.0.bytes.len()
    }
}

/// Writes tensors into shards of at most `max_bytes` (one tensor may exceed it), named
/// `model.safetensors` when one suffices, else `model-0000i-of-0000n.safetensors` with
/// an index.
struct ShardWriter {
    dir: PathBuf,
    max_bytes: u64,
    pending: Vec<Stored>,
    pending_bytes: u64,
    written: Vec<(PathBuf, Vec<String>)>,
    total_bytes: u64,
}

impl ShardWriter {
    fn new(dir: &Path, max_bytes: u64) -> Self {
        Self { dir: dir.to_path_buf(), max_bytes, pending: Vec::new(), pending_bytes: 0, written: Vec::new(), total_bytes: 0 }
    }

    fn push(&mut self, tensor: HostTensor<'static>) -> Result<(), Error> {
        let bytes = tensor.bytes.len() as u64;
        if !self.pending.is_empty() && self.pending_bytes + bytes > self.max_bytes {
            self.flush()?;
        }
        self.pending_bytes += bytes;
        self.total_bytes += bytes;
        self.pending.push(Stored(tensor));
        Ok(())
    }

    fn extend(&mut self, tensors: Vec<HostTensor<'static>>) -> Result<(), Error> {
        tensors.into_iter().try_for_each(|t| self.push(t))
    }

    fn flush(&mut self) -> Result<(), Error> {
        let path = self.dir.join(format!("shard-{}.safetensors.partial", self.written.len()));
        let pending = std::mem::take(&mut self.pending);
        let metadata = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::serialize_to_file(pending.iter().map(|t| (t.0.name.clone(), t)), metadata, &path)
            .map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
        self.written.push((path, pending.into_iter().map(|t| t.0.name).collect()));
        self.pending_bytes = 0;
        Ok(())
    }

    /// Names the shards and writes the index; returns the shard paths.
    fn finish(mut self) -> Result<Vec<PathBuf>, Error> {
        if !self.pending.is_empty() || self.written.is_empty() {
            self.flush()?;
        }
        let count = self.written.len();
        let final_name = |i: usize| match count {
            1 => "model.safetensors".to_string(),
            _ => format!("model-{:05}-of-{count:05}.safetensors", i + 1),
        };
        let mut weight_map = BTreeMap::new();
        let mut paths = Vec::new();
        for (i, (partial, names)) in self.written.iter().enumerate() {
            let path = self.dir.join(final_name(i));
            fs::rename(partial, &path).map_err(|source| Error::Io { path: path.clone(), source })?;
            weight_map.extend(names.iter().map(|n| (n.clone(), final_name(i))));
            paths.push(path);
        }
        if count > 1 {
            let index = serde_json::json!({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map});
            write_json(&self.dir.join("model.safetensors.index.json"), &index)?;
        }
        Ok(paths)
    }
}
