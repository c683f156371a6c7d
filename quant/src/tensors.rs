//! The tensors one layer's scheme asked for, looked up by their leaf name
//! (`qweight`, `scales`, ...) under the layer's prefix.

use crate::error::CheckpointError;
use crate::host::HostTensor;

pub struct LayerTensors<'a> {
    prefix: String,
    tensors: Vec<HostTensor<'a>>,
}

impl<'a> LayerTensors<'a> {
    pub fn new(prefix: impl Into<String>, tensors: Vec<HostTensor<'a>>) -> Self {
        Self { prefix: prefix.into(), tensors }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full checkpoint name of a leaf.
    pub fn name(&self, leaf: &str) -> String {
        format!("{}.{leaf}", self.prefix)
    }

    pub fn take_optional(&mut self, leaf: &str) -> Option<HostTensor<'a>> {
        let name = self.name(leaf);
        let index = self.tensors.iter().position(|t| t.name == name)?;
        Some(self.tensors.swap_remove(index))
    }

    pub fn take(&mut self, leaf: &str) -> Result<HostTensor<'a>, CheckpointError> {
        self.take_optional(leaf).ok_or_else(|| CheckpointError::MissingTensor {
            name: self.name(leaf),
            location: "the checkpoint".into(),
        })
    }
}
