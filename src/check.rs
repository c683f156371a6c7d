//! `ember check`: validates a checkpoint without building the model — what to run
//! before a long load on a GPU. Reads config.json and the safetensors headers, asks the
//! quant method which tensors each layer needs, and reads only the small tensors whose
//! values matter (scales must be finite, act-order maps must name existing groups).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;

use ember_models::{check_architecture, plan_linears, ModelConfig, Weights};
use ember_quant::{resolve_scheme, ComputeDtype, HostTensor, LoadContext, QuantError, QuantRegistry, TensorSource, WeightSpec};

use crate::checkpoint::SafetensorsCheckpoint;

/// What `check` found: a line per stage, and every problem.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// (stage, summary) in order.
    pub stages: Vec<(String, String)>,
    /// Each problem names its tensor or file.
    pub problems: Vec<String>,
    /// Worth knowing, not wrong (tensors no layer reads).
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn stage(&mut self, name: &str, summary: impl Into<String>) {
        self.stages.push((name.to_string(), summary.into()));
    }

    /// The report as `ember check` prints it.
    pub fn render(&self) -> String {
        const SHOWN: usize = 50;
        let mut out = String::new();
        for (stage, summary) in &self.stages {
            out.push_str(&format!("{stage:<14} {summary}\n"));
        }
        for warning in &self.warnings {
            out.push_str(&format!("warning        {warning}\n"));
        }
        for problem in self.problems.iter().take(SHOWN) {
            out.push_str(&format!("problem        {problem}\n"));
        }
        if self.problems.len() > SHOWN {
            out.push_str(&format!("               ... and {} more\n", self.problems.len() - SHOWN));
        }
        match self.problems.len() {
            0 => out.push_str("result         clean\n"),
            n => out.push_str(&format!("result         {n} problem{}\n", if n == 1 { "" } else { "s" })),
        }
        out
    }
}

/// Checks the checkpoint in `dir`. Stops at the first stage that leaves nothing to check
/// (no config, no readable checkpoint); otherwise lists every problem.
pub fn check_checkpoint(dir: &Path) -> CheckReport {
    let mut report = CheckReport::default();
    let config = match ModelConfig::from_file(&dir.join("config.json")) {
        Ok(config) => config,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    report.stage(
        "config",
        format!("{}, {} layers, hidden {}, vocab {}", config.architecture, config.num_layers, config.hidden_size, config.vocab_size),
    );
    if let Err(e) = check_architecture(&config) {
        report.problems.push(e.to_string());
        return report;
    }
    let method = match QuantRegistry::with_builtins().resolve(&config.raw, None) {
        Ok(method) => method,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    report.stage("quantization", method.name());
    let checkpoint = match SafetensorsCheckpoint::open(dir) {
        Ok(checkpoint) => checkpoint,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    let names = checkpoint.tensor_names();
    report.stage("checkpoint", format!("{} tensors in {}, {:.1} MiB", names.len(), checkpoint.describe(), checkpoint.total_bytes() as f64 / (1 << 20) as f64));

    // Nothing is uploaded: the context only satisfies the planning API.
    let ctx = LoadContext::new(burn::tensor::Device::flex(), ComputeDtype::F32);
    let weights = Weights::new(&checkpoint, method.as_ref(), &ctx);
    let layers = match plan_linears(&weights, &config) {
        Ok(layers) => layers,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    let mut expected: Vec<WeightSpec> = Vec::new();
    let mut schemes: BTreeMap<String, usize> = BTreeMap::new();
    // One line per distinct refusal, naming the layers it hits.
    let mut refused: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for layer in &layers {
        match resolve_scheme(method.as_ref(), layer, &checkpoint) {
            Ok(scheme) => {
                *schemes.entry(scheme.describe()).or_default() += 1;
                expected.extend(scheme.weights());
            }
            Err(QuantError::UnsupportedLayer { reason, .. }) => refused.entry(reason).or_default().push(&layer.prefix),
            Err(e) => report.problems.push(e.to_string()),
        }
        if layer.bias {
            expected.push(WeightSpec::float(format!("{}.bias", layer.prefix), [layer.out_features]));
        }
    }
    for (reason, layers) in &refused {
        let more = match layers.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        report.problems.push(format!("{reason}: layer `{}`{more}", layers[0]));
    }
    expected.extend(other_tensors(&config));
    let present = expected.iter().filter(|spec| check_spec(&checkpoint, spec, &mut report.problems)).count();
    let summary: Vec<String> = schemes.iter().map(|(scheme, n)| format!("{scheme} x{n}")).collect();
    report.stage("layers", format!("{} linear layers: {}", layers.len(), summary.join(", ")));
    report.stage("tensors", format!("{present} of {} expected tensors present with the expected shapes and dtypes", expected.len()));

    let (scales, maps) = check_values(&checkpoint, &names, &mut report.problems);
    report.stage("values", format!("{scales} scale tensors finite-checked, {maps} act-order maps range-checked"));

    let used: BTreeSet<&str> = expected.iter().map(|spec| spec.name.as_str()).collect();
    let unused: Vec<&String> = names.iter().filter(|n| !used.contains(n.as_str())).collect();
    // Layers that could not be planned leave their tensors unread; that is not news.
    if let (Some(first), true) = (unused.first(), refused.is_empty()) {
        report.warnings.push(format!("{} tensors no layer reads (first: `{first}`)", unused.len()));
    }
    report
}

/// Embeddings, norms and (untied) head weights of the Llama-family layout every
/// supported architecture shares.
fn other_tensors(c: &ModelConfig) -> Vec<WeightSpec> {
    let mut specs = vec![
        WeightSpec::float("model.embed_tokens.weight", [c.vocab_size, c.hidden_size]),
        WeightSpec::float("model.norm.weight", [c.hidden_size]),
    ];
    for i in 0..c.num_layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            specs.push(WeightSpec::float(format!("model.layers.{i}.{norm}.weight"), [c.hidden_size]));
        }
    }
    specs
}

/// Whether `spec`'s tensor is there as expected; records why not.
fn check_spec(checkpoint: &SafetensorsCheckpoint, spec: &WeightSpec, problems: &mut Vec<String>) -> bool {
    match checkpoint.file_of(&spec.name).and_then(|file| file.meta(&spec.name)) {
        None if spec.optional => true,
        None => {
            problems.push(format!("`{}` is missing", spec.name));
            false
        }
        // Stored in a dtype Ember does not read.
        Some(Err(e)) => {
            problems.push(e.to_string());
            false
        }
        Some(Ok(meta)) => match spec.check(meta.dtype, &meta.shape) {
            Ok(()) => true,
            Err(e) => {
                problems.push(e.to_string());
                false
            }
        },
    }
}

/// Reads scale tensors (must be finite) and `g_idx` maps (must name one of the layer's
/// groups, counted from its `scales`). Returns how many of each were checked.
fn check_values(checkpoint: &SafetensorsCheckpoint, names: &[String], problems: &mut Vec<String>) -> (usize, usize) {
    let (mut scales, mut maps) = (0, 0);
    for name in names.iter().filter(|n| is_scale(n) || n.ends_with(".g_idx")) {
        let tensor = match checkpoint.file_of(name).and_then(|f| f.tensor(name)) {
            Some(Ok(tensor)) => tensor,
            Some(Err(e)) => {
                problems.push(e.to_string());
                continue;
            }
            None => continue,
        };
        if is_scale(name) && tensor.dtype.is_float() {
            scales += 1;
            if let Some(problem) = non_finite(&tensor) {
                problems.push(problem);
            }
        } else if let Some(prefix) = name.strip_suffix(".g_idx") {
            maps += 1;
            let groups = checkpoint.meta(&format!("{prefix}.scales")).and_then(|m| m.shape.first().copied());
            match (tensor.to_i64_vec(), groups) {
                (Ok(values), Some(groups)) => {
                    if let Some(bad) = values.iter().find(|&&g| g < 0 || g as usize >= groups) {
                        problems.push(format!("`{name}` names group {bad}, but the layer has {groups} groups"));
                    }
                }
                (Err(e), _) => problems.push(e.to_string()),
                (Ok(_), None) => {}
            }
        }
    }
    (scales, maps)
}

fn is_scale(name: &str) -> bool {
    [".scales", ".weight_scale", ".weight_scale_inv", ".input_scale", "._weight_scale"].iter().any(|suffix| name.ends_with(suffix))
}

fn non_finite(tensor: &HostTensor<'_>) -> Option<String> {
    match tensor.to_f32_vec() {
        Ok(values) => {
            let bad = values.iter().filter(|v| !v.is_finite()).count();
            (bad > 0).then(|| format!("`{}` holds {bad} non-finite values (NaN or infinity); scales must be finite", tensor.name))
        }
        Err(e) => Some(e.to_string()),
    }
}
