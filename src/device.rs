//! `--device` parsing and the default compute dtype per device.

use std::panic::{catch_unwind, AssertUnwindSafe};

use burn::tensor::{Device, Tensor};
use ember_quant::ComputeDtype;

use crate::error::Error;

/// The devices Ember is built with.
pub const DEVICE_NAMES: [&str; 4] = ["flex", "cpu", "wgpu", "cuda"];

/// Parses `flex`, `cpu` (CubeCL's CPU runtime), `wgpu`, `cuda` or `cuda:N`, and checks the
/// device can run a tensor op, so a missing GPU is an error instead of a crash later.
pub fn parse_device(spec: &str) -> Result<Device, Error> {
    let unavailable = |reason: String| Error::DeviceUnavailable { spec: spec.to_string(), reason };
    let (name, index) = match spec.split_once(':') {
        Some((name, index)) => (name, Some(index.parse::<usize>().map_err(|_| unavailable("index must be a number".into()))?)),
        None => (spec, None),
    };
    let device = match name.to_ascii_lowercase().as_str() {
        "flex" => Device::flex(),
        "cpu" => Device::cpu(),
        "wgpu" => Device::wgpu(Default::default()),
        "cuda" => Device::cuda(index.unwrap_or(0)),
        _ => return Err(unavailable(format!("unknown device; built with: {}", DEVICE_NAMES.join(", ")))),
    };
    probe(&device).map_err(unavailable)?;
    Ok(device)
}

/// Runs one tiny op; backends report a missing driver or adapter by panicking.
fn probe(device: &Device) -> Result<(), String> {
    let device = device.clone();
    let outcome = catch_unwind(AssertUnwindSafe(move || Tensor::<1>::ones([1], &device).into_data()));
    match outcome {
        Ok(_) => Ok(()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the backend failed to initialise".into())),
    }
}

/// f32 on CPUs (exact, and what the reference logits use); bf16 on CUDA; f32 on wgpu,
/// where half-precision support depends on the adapter.
pub fn default_dtype(spec: &str) -> ComputeDtype {
    if spec.starts_with("cuda") {
        ComputeDtype::BF16
    } else {
        ComputeDtype::F32
    }
}
