//! Helpers shared by the formats: config field access with typed errors, module-name
//! matching for ignore lists and targets, and layer-shape checks.

use serde_json::Value;

use crate::error::QuantError;
use crate::method::LayerInfo;

/// Typed access to one method's config object.
pub struct ConfigFields<'a> {
    pub method: &'static str,
    pub value: &'a Value,
}

impl<'a> ConfigFields<'a> {
    pub fn new(method: &'static str, value: &'a Value) -> Self {
        Self { method, value }
    }

    pub fn invalid(&self, reason: impl Into<String>) -> QuantError {
        QuantError::InvalidConfig { method: self.method.into(), reason: reason.into() }
    }

    fn field(&self, keys: &[&str]) -> Option<&'a Value> {
        keys.iter().find_map(|k| self.value.get(*k)).filter(|v| !v.is_null())
    }

    pub fn int(&self, keys: &[&str]) -> Result<Option<i64>, QuantError> {
        self.field(keys)
            .map(|v| v.as_i64().ok_or_else(|| self.invalid(format!("`{}` must be an integer, got {v}", keys[0]))))
            .transpose()
    }

    pub fn bool(&self, keys: &[&str]) -> Result<Option<bool>, QuantError> {
        self.field(keys)
            .map(|v| v.as_bool().ok_or_else(|| self.invalid(format!("`{}` must be true or false, got {v}", keys[0]))))
            .transpose()
    }

    pub fn str(&self, keys: &[&str]) -> Result<Option<&'a str>, QuantError> {
        self.field(keys)
            .map(|v| v.as_str().ok_or_else(|| self.invalid(format!("`{}` must be a string, got {v}", keys[0]))))
            .transpose()
    }

    pub fn strings(&self, keys: &[&str]) -> Result<Vec<String>, QuantError> {
        match self.field(keys) {
            None => Ok(Vec::new()),
            // Nested lists are flattened: LLMC writes `ignored_layers: [["lm_head"]]`.
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        Value::Array(inner) if inner.iter().all(Value::is_string) => {
                            out.extend(inner.iter().filter_map(Value::as_str).map(str::to_string))
                        }
                        _ => return Err(self.invalid(format!("`{}` must hold strings", keys[0]))),
                    }
                }
                Ok(out)
            }
            Some(other) => Err(self.invalid(format!("`{}` must be a list, got {other}", keys[0]))),
        }
    }
}

/// Bits a weight-only integer format can hold; 2 and 3 are named as unsupported.
pub fn check_int_bits(fields: &ConfigFields, bits: i64) -> Result<u32, QuantError> {
    match bits {
        4 | 8 => Ok(bits as u32),
        2 | 3 => Err(fields.invalid(format!("{bits}-bit weights are not supported (supported: 4, 8)"))),
        other => Err(fields.invalid(format!("`bits` must be 4 or 8, got {other}"))),
    }
}

/// Resolves a group size against a layer: `-1`/`None` is one group over all of K.
pub fn group_size_for(layer: &LayerInfo, group_size: Option<i64>) -> Result<usize, QuantError> {
    let k = layer.in_features;
    let group = match group_size {
        None | Some(-1) => k,
        Some(g) if g > 0 => g as usize,
        Some(g) => return Err(unsupported(layer, format!("group size {g} is not positive"))),
    };
    if !k.is_multiple_of(group) {
        return Err(unsupported(layer, format!("group size {group} does not divide in_features {k}")));
    }
    Ok(group)
}

/// Packed int layouts need whole words along the packed axis.
pub fn check_packable(layer: &LayerInfo, bits: u32, axis_len: usize, axis: &str) -> Result<(), QuantError> {
    let per = (32 / bits) as usize;
    if !axis_len.is_multiple_of(per) {
        return Err(unsupported(layer, format!("{axis} ({axis_len}) is not a multiple of {per}, the {bits}-bit values per 32-bit word")));
    }
    Ok(())
}

pub fn unsupported(layer: &LayerInfo, reason: impl Into<String>) -> QuantError {
    QuantError::UnsupportedLayer { layer: layer.prefix.clone(), reason: reason.into() }
}

/// Module-name patterns as the tools write them: `re:<regex>` (matched from the start of
/// the name, as Python's `re.match`), or a plain name matching the module or any module
/// whose dotted path ends with it.
#[derive(Debug, Clone)]
pub enum ModulePattern {
    Regex(regex::Regex),
    Name(String),
}

impl ModulePattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        match pattern.strip_prefix("re:") {
            Some(re) => regex::Regex::new(&format!("^(?:{re})")).map(Self::Regex).map_err(|e| format!("bad pattern `{pattern}`: {e}")),
            None => Ok(Self::Name(pattern.to_string())),
        }
    }

    pub fn matches(&self, module: &str) -> bool {
        match self {
            Self::Regex(re) => re.is_match(module),
            Self::Name(name) => module == name || module.ends_with(&format!(".{name}")),
        }
    }
}

/// AWQ/GPTQ-style skip lists: a module is skipped when any entry is a substring of its name.
pub fn skipped_by_substring(list: &[String], module: &str) -> bool {
    list.iter().any(|entry| !entry.is_empty() && module.contains(entry.as_str()))
}
