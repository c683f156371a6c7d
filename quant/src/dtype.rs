//! Element types as checkpoints store them.
//!
//! Burn has no FP8 dtype, so FP8 tensors stay raw bytes on the host until a format
//! module decodes them; everything else maps onto a Burn `DType` when uploaded.

use std::fmt;

/// The element type of a tensor in a checkpoint (safetensors naming).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    F8E4M3,
    F8E5M2,
}

impl StoredDtype {
    /// Every dtype Ember reads, for error messages.
    pub const ALL: [StoredDtype; 11] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::I64,
        Self::I32,
        Self::I16,
        Self::I8,
        Self::U8,
        Self::Bool,
        Self::F8E4M3,
        Self::F8E5M2,
    ];

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I64 => 8,
            Self::I8 | Self::U8 | Self::Bool | Self::F8E4M3 | Self::F8E5M2 => 1,
        }
    }

    /// Floating-point types that Burn can hold directly (FP8 is excluded on purpose).
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, Self::I64 | Self::I32 | Self::I16 | Self::I8 | Self::U8)
    }

    /// The name safetensors headers use.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I64 => "I64",
            Self::I32 => "I32",
            Self::I16 => "I16",
            Self::I8 => "I8",
            Self::U8 => "U8",
            Self::Bool => "BOOL",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E5M2 => "F8_E5M2",
        }
    }

    pub fn from_safetensors_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.safetensors_name() == name)
    }
}

impl fmt::Display for StoredDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// The float type a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ComputeDtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl ComputeDtype {
    pub fn burn(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::F16 => burn::tensor::DType::F16,
            Self::BF16 => burn::tensor::DType::BF16,
        }
    }

    pub fn stored(self) -> StoredDtype {
        match self {
            Self::F32 => StoredDtype::F32,
            Self::F16 => StoredDtype::F16,
            Self::BF16 => StoredDtype::BF16,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Some(Self::F32),
            "f16" | "float16" | "half" => Some(Self::F16),
            "bf16" | "bfloat16" => Some(Self::BF16),
            _ => None,
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

/// What a weight spec accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeRule {
    /// F32, F16 or BF16: converted to the compute dtype at load.
    AnyFloat,
    Exactly(StoredDtype),
}

impl DtypeRule {
    pub fn accepts(self, dtype: StoredDtype) -> bool {
        match self {
            Self::AnyFloat => dtype.is_float(),
            Self::Exactly(want) => want == dtype,
        }
    }
}

impl fmt::Display for DtypeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyFloat => f.write_str("a float type (F32, F16 or BF16)"),
            Self::Exactly(d) => write!(f, "{d}"),
        }
    }
}
