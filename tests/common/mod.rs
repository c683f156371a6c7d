//! Fixture access and comparisons shared by the tests.

pub mod synthetic;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use std::collections::HashMap;

use ember::checkpoint::{safetensors_dtype, SafetensorsCheckpoint, SafetensorsFile};
use ember::quant::TensorSource;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;
use ember::quant::ComputeDtype;
use ember::engine::{Engine, EngineConfig, Prompt, SamplingParams};
use ember::{load_model, LoadOptions, LoadedModel};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

pub fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join(name)
}

pub fn load(name: &str, device: Device) -> LoadedModel {
    load_model(&fixture(name), &LoadOptions::new(device, ComputeDtype::F32)).expect("fixture loads")
}

/// What the fixture's tool computed: prompt ids, full-forward logits, greedy continuation.
pub struct Reference {
    pub prompt: String,
    pub input_ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub greedy_new_ids: Vec<u32>,
}

impl Reference {
    pub fn read(name: &str) -> Self {
        let dir = fixture(name);
        let file = SafetensorsFile::open(&dir.join("reference.safetensors")).expect("reference.safetensors");
        let tensor = |n: &str| file.tensor(n).expect("tensor present").expect("readable");
        let input_ids = tensor("input_ids").to_i64_vec().unwrap().into_iter().map(|v| v as u32).collect();
        let logits = tensor("logits").to_f32_vec().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let greedy_new_ids = json["greedy_new_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        Self { prompt: json["prompt"].as_str().unwrap().to_string(), input_ids, logits, greedy_new_ids }
    }

    pub fn logit_range(&self) -> f32 {
        let max = self.logits.iter().copied().fold(f32::MIN, f32::max);
        let min = self.logits.iter().copied().fold(f32::MAX, f32::min);
        max - min
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared tensors differ in length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Full-prompt logits of a loaded model, on the host.
pub fn prompt_logits(loaded: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut cache = loaded.model.new_cache();
    loaded.model.forward_ids(ids, &mut cache).try_into_vec_as::<f32>().unwrap()
}

/// Copies the non-weight files of a fixture into `dest` (config, tokenizer, generation config).
pub fn copy_side_files(name: &str, dest: &Path) {
    for file in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        let src = fixture(name).join(file);
        if src.exists() {
            std::fs::copy(&src, dest.join(file)).unwrap();
        }
    }
}

/// One tensor of a rewritten checkpoint.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Copies a fixture into a temporary directory as one `model.safetensors`, after letting
/// `edit_config` change its config.json and `edit_tensors` its tensors.
pub fn rewrite_fixture(
    name: &str,
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_tensors: impl FnOnce(&mut Vec<StoredTensor>),
) -> TempDir {
    let dir = TempDir::new().unwrap();
    copy_side_files(name, dir.path());
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();

    let source = SafetensorsCheckpoint::open(&fixture(name)).unwrap();
    let mut tensors: Vec<StoredTensor> = source
        .tensor_names()
        .into_iter()
        .map(|name| {
            let file = source.files().iter().find(|f| f.meta(&name).is_some()).unwrap();
            let tensor = file.tensor(&name).unwrap().unwrap();
            StoredTensor { dtype: safetensors_dtype(tensor.dtype), shape: tensor.shape.clone(), bytes: tensor.bytes.into_owned(), name }
        })
        .collect();
    edit_tensors(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &dir.path().join("model.safetensors")).unwrap();
    dir
}

/// The greedy continuation of `prompt` through the engine, end-of-sequence ignored.
pub fn greedy_tokens(loaded: LoadedModel, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut engine = Engine::new(loaded, &EngineConfig::default()).unwrap();
    let params = SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::greedy() };
    let mut out = engine.generate(vec![(Prompt::Tokens(prompt.to_vec()), params)], false).unwrap();
    out.remove(0).completions.remove(0).token_ids
}

/// Runs `check` under each vector set the host kernels may use on this CPU, widest first
/// (AMX emulated where the CPU has AVX-512 without it), then restores the widest. The cap is process-wide: tests running meanwhile stay
/// correct under it, and one lock keeps two of these from interleaving.
pub fn under_each_vector_isa(mut check: impl FnMut(ember_quant::kernels::host::VectorIsa)) {
    use ember_quant::kernels::host::{limit_vector_isa, vector_isa, VectorIsa};
    static SWITCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _switching = SWITCHING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let widest = vector_isa();
    // Without the unit, its kernels run on emulated tile instructions.
    let tiles = ember_quant::kernels::host::emulate_amx();
    let checked = |isa: VectorIsa| isa <= widest || (isa == VectorIsa::Amx && tiles);
    for isa in [VectorIsa::Amx, VectorIsa::Avx512, VectorIsa::Avx2, VectorIsa::Baseline].into_iter().filter(|&isa| checked(isa)) {
        limit_vector_isa(isa);
        assert_eq!(vector_isa(), isa);
        check(isa);
    }
    limit_vector_isa(widest);
}
