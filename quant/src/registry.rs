//! Name → factory table for quantization methods. Built-ins register themselves in
//! [`QuantRegistry::with_builtins`]; library users add their own with
//! [`QuantRegistry::register`] without touching Ember's code.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::QuantError;
use crate::method::{QuantMethod, QuantMethodFactory};
use crate::online::{OnlineFactory, OnlineSettings};
use crate::formats::awq::AwqFactory;
use crate::formats::compressed_tensors::CompressedTensorsFactory;
use crate::formats::fp8::Fp8Factory;
use crate::formats::gptq::GptqFactory;
use crate::formats::torchao::TorchaoFactory;
use crate::unquantized::UnquantizedFactory;

/// The keys under which checkpoints store their quantization config, newest first
/// (`compression_config` is what older compressed-tensors and LLMC exports write).
const CONFIG_KEYS: [&str; 2] = ["quantization_config", "compression_config"];

#[derive(Clone)]
pub struct QuantRegistry {
    factories: BTreeMap<String, Arc<dyn QuantMethodFactory>>,
}

impl Default for QuantRegistry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl QuantRegistry {
    /// A registry with nothing in it; most callers want [`Self::with_builtins`].
    pub fn empty() -> Self {
        Self { factories: BTreeMap::new() }
    }

    pub fn with_builtins() -> Self {
        let mut registry = Self::empty();
        registry.register(Arc::new(UnquantizedFactory));
        registry.register(Arc::new(GptqFactory));
        registry.register(Arc::new(AwqFactory));
        registry.register(Arc::new(CompressedTensorsFactory));
        registry.register(Arc::new(Fp8Factory));
        registry.register(Arc::new(TorchaoFactory));
        registry.register(Arc::new(OnlineFactory::INT4));
        registry.register(Arc::new(OnlineFactory::INT8));
        registry.register(Arc::new(OnlineFactory::W8A8));
        registry
    }

    /// Adds (or replaces) a method under its factory's name.
    pub fn register(&mut self, factory: Arc<dyn QuantMethodFactory>) {
        self.factories.insert(factory.name().to_ascii_lowercase(), factory);
    }

    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn QuantMethodFactory>, QuantError> {
        self.factories.get(&name.to_ascii_lowercase()).ok_or_else(|| QuantError::UnknownMethod {
            name: name.to_string(),
            known: self.names().join(", "),
        })
    }

    /// Picks the method for a checkpoint from its config.json, or from `override_name`
    /// (the `--quantization` flag) when given. A checkpoint with no quantization config
    /// and no override is unquantized.
    pub fn resolve(&self, model_config: &Value, override_name: Option<&str>) -> Result<Arc<dyn QuantMethod>, QuantError> {
        self.resolve_with_settings(model_config, override_name, &OnlineSettings::default())
    }

    /// [`Self::resolve`], with settings for an overriding online method (`--group-size`,
    /// `--asymmetric`) that replace the checkpoint's own section when given.
    pub fn resolve_with_settings(
        &self,
        model_config: &Value,
        override_name: Option<&str>,
        settings: &OnlineSettings,
    ) -> Result<Arc<dyn QuantMethod>, QuantError> {
        let section = CONFIG_KEYS.iter().find_map(|key| model_config.get(*key)).filter(|v| !v.is_null());
        let stored_name = match section {
            Some(section) => Some(method_name(section)?),
            None => None,
        };
        let name = override_name.or(stored_name.as_deref()).unwrap_or(UnquantizedFactory::NAME);
        let config = match (override_name, settings.is_empty()) {
            (Some(_), false) => settings.to_config(),
            _ => section.cloned().unwrap_or(Value::Null),
        };
        self.get(name)?.create(&config)
    }
}

/// Reads the method name from a quantization config section.
fn method_name(section: &Value) -> Result<String, QuantError> {
    let invalid = |reason: &str| QuantError::InvalidConfig { method: "unknown".into(), reason: reason.into() };
    let object = section.as_object().ok_or_else(|| invalid("quantization_config must be a JSON object"))?;
    if let Some(name) = object.get("quant_method") {
        return name.as_str().map(str::to_string).ok_or_else(|| invalid("`quant_method` must be a string"));
    }
    // Older compressed-tensors exports carry `config_groups` without naming the method.
    if object.contains_key("config_groups") {
        return Ok("compressed-tensors".into());
    }
    Err(invalid("no `quant_method` field"))
}
