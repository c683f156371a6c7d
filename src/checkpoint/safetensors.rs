//! One safetensors file, memory-mapped. The header is parsed and validated once
//! (offsets contiguous, byte lengths matching dtype × shape, file length matching the
//! header); tensor data is then borrowed straight from the map, never copied whole.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use ember_quant::{CheckpointError, HostTensor, StoredDtype, TensorMeta};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensorError, TensorInfo};
use safetensors::SafeTensors;

/// Bytes before the JSON header: its length as a little-endian u64.
const LENGTH_PREFIX: usize = 8;

pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated under us while mapped is the one
        // case memory maps cannot defend against, and every reader of weights shares it.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header_len, metadata) = parse_header(path, &map)?;
        Ok(Self { path: path.to_path_buf(), map, data_start: LENGTH_PREFIX + header_len, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.metadata.offset_keys().into_iter()
    }

    pub fn meta(&self, name: &str) -> Option<Result<TensorMeta, CheckpointError>> {
        let info = self.metadata.info(name)?;
        Some(self.dtype_of(name, info).map(|dtype| TensorMeta { dtype, shape: info.shape.clone() }))
    }

    /// Borrows a tensor's bytes from the map.
    pub fn tensor(&self, name: &str) -> Option<Result<HostTensor<'_>, CheckpointError>> {
        let info = self.metadata.info(name)?;
        Some(self.dtype_of(name, info).map(|dtype| {
            let (start, end) = info.data_offsets;
            // In bounds: `parse_header` checked that the offsets tile the data section exactly.
            let bytes = &self.map[self.data_start + start..self.data_start + end];
            HostTensor::new(name, dtype, info.shape.clone(), Cow::Borrowed(bytes))
        }))
    }

    fn dtype_of(&self, name: &str, info: &TensorInfo) -> Result<StoredDtype, CheckpointError> {
        let stored_name = serde_json::to_value(info.dtype)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", info.dtype));
        StoredDtype::from_safetensors_name(&stored_name).ok_or_else(|| CheckpointError::UnsupportedDtype {
            name: name.to_string(),
            path: self.path.clone(),
            dtype: stored_name,
            supported: StoredDtype::ALL.map(|d| d.safetensors_name()).join(", "),
        })
    }
}

/// Validates the length prefix and header against the file size before trusting either.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata), CheckpointError> {
    let truncated = |reason: String| CheckpointError::Truncated { path: path.to_path_buf(), reason };
    let malformed = |reason: String| CheckpointError::MalformedHeader { path: path.to_path_buf(), reason };
    let prefix: [u8; LENGTH_PREFIX] = bytes
        .get(..LENGTH_PREFIX)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| truncated(format!("{} bytes, shorter than the 8-byte header length", bytes.len())))?;
    let header_len = u64::from_le_bytes(prefix);
    let available = (bytes.len() - LENGTH_PREFIX) as u64;
    if header_len > available {
        return Err(truncated(format!("header length is {header_len} bytes but only {available} follow")));
    }
    match SafeTensors::read_metadata(bytes) {
        Ok(parsed) => Ok(parsed),
        Err(SafeTensorError::MetadataIncompleteBuffer) => {
            let data_len = available - header_len;
            Err(truncated(format!("tensor data is {data_len} bytes, which does not match the offsets in its header")))
        }
        Err(SafeTensorError::HeaderTooLarge) => Err(malformed(format!("header length {header_len} exceeds the 100 MB limit"))),
        Err(SafeTensorError::InvalidHeader(e)) => Err(malformed(format!("header is not UTF-8: {e}"))),
        Err(SafeTensorError::InvalidHeaderDeserialization(e)) => Err(malformed(format!("header JSON: {e}"))),
        Err(SafeTensorError::InvalidOffset(name)) => {
            Err(malformed(format!("data offsets of `{name}` overlap, leave a gap, or run backwards")))
        }
        Err(SafeTensorError::TensorInvalidInfo) => {
            Err(malformed("a tensor's byte length does not match its dtype and shape".to_string()))
        }
        Err(other) => Err(malformed(other.to_string())),
    }
}

/// The safetensors crate's name for a stored dtype (for writing files).
pub fn safetensors_dtype(dtype: StoredDtype) -> ::safetensors::Dtype {
    use ::safetensors::Dtype;
    match dtype {
        StoredDtype::F32 => Dtype::F32,
        StoredDtype::F16 => Dtype::F16,
        StoredDtype::BF16 => Dtype::BF16,
        StoredDtype::I64 => Dtype::I64,
        StoredDtype::I32 => Dtype::I32,
        StoredDtype::I16 => Dtype::I16,
        StoredDtype::I8 => Dtype::I8,
        StoredDtype::U8 => Dtype::U8,
        StoredDtype::Bool => Dtype::BOOL,
        StoredDtype::F8E4M3 => Dtype::F8_E4M3,
        StoredDtype::F8E5M2 => Dtype::F8_E5M2,
    }
}
