//! `--device` parsing and the default compute dtype per device.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

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

/// Runs one tiny op. Backends report a missing driver or adapter by panicking, often on
/// their own threads and in a chain (the driver loader, then every thread waiting on it),
/// so while the probe runs a panic hook keeps the first message, the root cause, and the
/// terminal gets one error line instead of a backtrace per thread.
fn probe(device: &Device) -> Result<(), String> {
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let record = Arc::clone(&first_panic);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut first) = record.lock() {
            first.get_or_insert_with(|| panic_message(info.payload()));
        }
    }));
    let device = device.clone();
    let outcome = catch_unwind(AssertUnwindSafe(move || Tensor::<1>::ones([1], &device).try_into_data().map(drop)));
    std::panic::set_hook(previous_hook);
    let root_cause = first_panic.lock().ok().and_then(|mut first| first.take());
    match (outcome, root_cause) {
        (Ok(Ok(())), _) => Ok(()),
        (_, Some(message)) => Err(elide_long_lists(&message)),
        (Ok(Err(error)), None) => Err(error.to_string()),
        (Err(panic), None) => Err(panic_message(panic.as_ref())),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the backend failed to initialise".into())
}

/// Shortens bracketed lists longer than a line (a driver loader's every candidate file
/// name) to `[…]`, keeping the sentences around them.
fn elide_long_lists(message: &str) -> String {
    const LONGEST_KEPT: usize = 80;
    let mut out = String::with_capacity(message.len().min(512));
    let mut rest = message;
    while let Some(open) = rest.find('[') {
        let Some(length) = rest[open..].find(']') else { break };
        out.push_str(&rest[..open]);
        let list = &rest[open..=open + length];
        out.push_str(if list.len() > LONGEST_KEPT { "[…]" } else { list });
        rest = &rest[open + length + 1..];
    }
    out.push_str(rest);
    out
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

