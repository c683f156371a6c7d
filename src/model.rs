//! Loading a model directory end to end: config → quant method → weights source →
//! model build (layer by layer, with progress) → tokenizer and generation defaults.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ember_models::{build_model, check_architecture, DecoderModel, ModelConfig, Weights};
use ember_quant::online::Requantize;
use ember_quant::{ComputeDtype, LoadContext, OnlineSettings, QuantRegistry, TensorSource};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{DummySource, SafetensorsCheckpoint};
use crate::error::Error;
use crate::generation_config::GenerationConfig;
use crate::tokenizer::Tokenizer;

/// Where weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadFormat {
    /// The checkpoint's safetensors files.
    #[default]
    Safetensors,
    /// Deterministic random weights of the right shapes (benchmarking; no files needed).
    Dummy,
}

#[derive(Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: ComputeDtype,
    /// Keep only the first N decoder layers (benchmarking real-size configs).
    pub num_layers: Option<usize>,
    pub load_format: LoadFormat,
    /// Overrides the checkpoint's quantization method (`--quantization`).
    pub quantization: Option<String>,
    /// Group size and symmetry for an online `quantization` (`int4`, `int8`).
    pub online: OnlineSettings,
    pub registry: QuantRegistry,
    /// Draw a progress bar on stderr while loading.
    pub progress: bool,
    /// Leave activations unquantized in FP8 layers (`--fp8-weight-only`).
    pub fp8_weight_only: bool,
}

impl LoadOptions {
    pub fn new(device: Device, dtype: ComputeDtype) -> Self {
        Self {
            device,
            dtype,
            num_layers: None,
            load_format: LoadFormat::Safetensors,
            quantization: None,
            online: OnlineSettings::default(),
            registry: QuantRegistry::with_builtins(),
            progress: false,
            fp8_weight_only: false,
        }
    }
}

/// A loaded model with what it needs to talk to users.
pub struct LoadedModel {
    pub model: DecoderModel,
    /// Absent only for dummy loads of a bare config.
    pub tokenizer: Option<Tokenizer>,
    pub generation: GenerationConfig,
    pub quant_method: String,
    pub dir: PathBuf,
}

impl LoadedModel {
    pub fn tokenizer(&self) -> Result<&Tokenizer, Error> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("{} has no tokenizer.json; pass token ids instead of text", self.dir.display()))
        })
    }

    /// Token ids that end generation: generation_config's eos ids plus the tokenizer's eos.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids = self.generation.eos_token_ids.clone();
        if let Some(eos) = self.tokenizer.as_ref().and_then(Tokenizer::eos_token_id) {
            ids.push(eos);
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

pub fn load_model(dir: &Path, options: &LoadOptions) -> Result<LoadedModel, Error> {
    if !options.device.supports_dtype(options.dtype.burn()) {
        return Err(Error::DeviceUnavailable {
            spec: format!("{:?}", options.device),
            reason: format!("does not support {} compute; choose another --dtype", options.dtype),
        });
    }
    let mut config = ModelConfig::from_file(&dir.join("config.json"))?;
    check_architecture(&config)?;
    if let Some(n) = options.num_layers {
        config.truncate_layers(n);
    }
    let method = options.registry.resolve_with_settings(&config.raw, options.quantization.as_deref(), &options.online)?;
    let source: Box<dyn TensorSource> = match options.load_format {
        LoadFormat::Safetensors => Box::new(SafetensorsCheckpoint::open(dir)?),
        // Float tensors in the dtype the config says the checkpoint holds, as a real one would.
        LoadFormat::Dummy => {
            let stored = config.stored_dtype.as_deref().and_then(ComputeDtype::parse).unwrap_or(options.dtype);
            Box::new(DummySource::new(stored, 0))
        }
    };
    let ctx = LoadContext { fp8_weight_only: options.fp8_weight_only, ..LoadContext::new(options.device.clone(), options.dtype) };
    let weights = Weights::new(source.as_ref(), method.as_ref(), &ctx);
    let bar = layer_progress(options.progress, config.num_layers as u64);
    let generation = GenerationConfig::from_dir(dir, &config.raw);
    let model = build_model(&weights, config, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let tokenizer = match dir.join("tokenizer.json").is_file() {
        true => Some(Tokenizer::from_dir(dir)?),
        false => None,
    };
    Ok(LoadedModel { model, tokenizer, generation, quant_method: method.name().to_string(), dir: dir.to_path_buf() })
}

impl LoadedModel {
    /// Weight sync: reads float (f32/f16/bf16) weights from the checkpoint in `dir` and
    /// quantizes each layer again into the representation it has now (see
    /// [`DecoderModel::reload`] for the guarantees). The architecture and dims must match.
    pub fn reload_weights(&mut self, dir: &Path, progress: bool) -> Result<(), Error> {
        let source = SafetensorsCheckpoint::open(dir)?;
        self.reload_from(&source, progress)
    }

    /// [`Self::reload_weights`] from any tensor source.
    pub fn reload_from(&mut self, source: &dyn TensorSource, progress: bool) -> Result<(), Error> {
        let method = Requantize::from_linears(self.model.linears());
        let ctx = LoadContext::new(self.model.device().clone(), self.model.dtype());
        let weights = Weights::new(source, &method, &ctx);
        let bar = layer_progress(progress, self.model.config().num_layers as u64);
        self.model.reload(&weights, &mut |done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        Ok(())
    }
}

fn layer_progress(visible: bool, layers: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(layers);
    bar.set_style(
        ProgressStyle::with_template("loading layers {bar:30} {pos}/{len} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
