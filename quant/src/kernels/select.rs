//! Which kernel runs a quantized matmul, and why. The choice depends on the device, the
//! activation dtype, the weight's layout and the number of rows; each distinct choice is
//! logged once at debug level (`RUST_LOG=ember_quant::kernels=debug`).

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use burn::tensor::{DType, Device};
use burn_dispatch::DispatchDevice;

use cubecl::ir::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind, IntKind};

use super::host::{amx_rows, fp8_tiled_rows, half_tiled_rows, int_tiled_rows, w8a8_tiled_rows, HostPath, TileProducts};
use super::{byte_mma, int_gemm_tiled, IntGemmTiling, MmaTiling, Staging};
use crate::repr::{ActivationQuant, ExpertStack, Fp8Weight, IntFragments, PackedIntWeight, W8A8Weight, ZeroPoints};

/// Which kernels may run. `EMBER_KERNELS=reference`, `auto` or `tensor-cores` sets it for
/// the process; [`with_policy`] overrides it on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPolicy {
    /// The fastest kernel the device and shape allow, among those verified on hardware.
    Auto,
    /// `Auto`, plus the CUDA tensor-core kernels (8-bit `byte_mma`), which are tested
    /// through their emulation and compiled for sm_90a in CI but not yet run against the
    /// reference on a GPU.
    TensorCores,
    /// Always the Burn-ops reference (the oracle).
    Reference,
}

impl KernelPolicy {
    fn from_env() -> Self {
        match std::env::var("EMBER_KERNELS").ok().as_deref().map(str::trim) {
            Some("reference") => Self::Reference,
            Some("tensor-cores") => Self::TensorCores,
            Some("auto") | Some("") | None => Self::Auto,
            Some(other) => {
                tracing::warn!("EMBER_KERNELS={other:?} is not one of auto, tensor-cores, reference; using auto");
                Self::Auto
            }
        }
    }
}

thread_local! {
    static THREAD_POLICY: Cell<Option<KernelPolicy>> = const { Cell::new(None) };
}

/// Runs `f` with `policy` on this thread (benchmarks and tests compare kernels this way).
/// The previous policy comes back even if `f` panics.
pub fn with_policy<T>(policy: KernelPolicy, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<KernelPolicy>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_POLICY.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(THREAD_POLICY.with(|p| p.replace(Some(policy))));
    f()
}

pub fn policy() -> KernelPolicy {
    static PROCESS: OnceLock<KernelPolicy> = OnceLock::new();
    THREAD_POLICY.with(Cell::get).unwrap_or_else(|| *PROCESS.get_or_init(KernelPolicy::from_env))
}

/// A kernel for a quantized matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    /// Dequantize with Burn ops, then a dense matmul.
    Reference,
    /// The host kernel on the Flex device ([`super::host`]), reading the 8-bit weight in place.
    Host,
    /// The portable CubeCL kernel, `tile_m` output rows per unit.
    Portable { tile_m: u32 },
    /// The tensor-core kernel (CUDA `mma.sync`), covering the output as tiled.
    TensorCores(MmaTiling),
}

/// A kernel for an integer weight-only matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntGemmKernel {
    /// Dequantize with Burn ops, then a dense matmul.
    Reference,
    /// The host kernel on the Flex device ([`super::host`]), reading the packed weight in place.
    Host,
    /// A CubeCL kernel: the register kernel or the shared-memory tile kernel.
    Cube(IntGemmTiling),
    /// The tensor-core W4A16 / W8A16 kernel (CUDA `mma.sync`) on the weight's fragment-ordered copy.
    TensorCores(MmaTiling),
}

/// Most output rows a register-kernel unit holds.
pub const MAX_TILE_M: u32 = 8;

/// Fewest rows for which a GPU card runs the shared-memory tile kernel: below it, a
/// tile's 64 rows are mostly padding. (Not yet tuned on a GPU; on CPU devices the
/// register kernel always runs, as measured in BENCHMARKS.md.)
pub const SHARED_MEMORY_MIN_ROWS: usize = 32;

/// The kernel chosen and the reason the faster ones were not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<K> {
    pub kernel: K,
    pub reason: String,
}

/// Picks the kernel for `rows × K` activations of `dtype` times `weight` on `device`.
pub fn int_gemm(weight: &PackedIntWeight, device: &Device, dtype: DType, rows: usize) -> Selection<IntGemmKernel> {
    let buffers = WeightBuffers { packed: weight.packed.dtype(), scales: weight.scales.dtype(), zeros: &weight.zeros, k: weight.in_features };
    let tensor_cores = int_mma_choice(device, dtype, rows, weight.in_features, weight.out_features, IntFragments::unsupported(weight));
    let selection = choose(buffers, device, dtype, HostRows::Product { rows, tiled_from: int_tiled_rows(weight.bits, weight.in_features, weight.group_size, weight.groups_contiguous), tiles: Some(TileProducts::PackedInt) }, tensor_cores);
    log_once(|| format!(
        "int{} [{}x{}] g{} rows={rows} {dtype:?}: {:?} ({})",
        weight.bits, weight.in_features, weight.out_features, weight.group_size, selection.kernel, selection.reason
    ));
    selection
}

/// Picks the kernel for a mixture-of-experts projection whose largest expert batch has
/// `max_rows` rows.
pub fn grouped_int_gemm(stack: &ExpertStack, device: &Device, dtype: DType, max_rows: usize) -> Selection<IntGemmKernel> {
    let buffers = WeightBuffers { packed: stack.packed.dtype(), scales: stack.scales.dtype(), zeros: &stack.zeros, k: stack.in_features };
    let tensor_cores = int_mma_choice(device, dtype, max_rows, stack.in_features, stack.out_features, IntFragments::unsupported_stack(stack));
    let selection = choose(buffers, device, dtype, HostRows::PerExpert { max_rows, tiled_from: int_tiled_rows(stack.bits, stack.in_features, stack.group_size, true) }, tensor_cores);
    log_once(|| format!(
        "moe int{} {}x[{}x{}] g{} max rows={max_rows} {dtype:?}: {:?} ({})",
        stack.bits, stack.experts, stack.in_features, stack.out_features, stack.group_size, selection.kernel, selection.reason
    ));
    selection
}

/// The dtypes the kernels read weight buffers in, and the input features.
struct WeightBuffers<'a> {
    packed: DType,
    scales: DType,
    zeros: &'a ZeroPoints,
    k: usize,
}

fn choose(weight: WeightBuffers, device: &Device, dtype: DType, host_rows: HostRows, tensor_cores: Result<MmaTiling, String>) -> Selection<IntGemmKernel> {
    let layout_ok = weight.packed == DType::I32
        && weight.scales == DType::F32
        && match weight.zeros {
            ZeroPoints::Integer(z) => z.dtype() == DType::I32,
            ZeroPoints::Float(o) => o.dtype() == DType::F32,
            ZeroPoints::Midpoint => true,
        };
    let refusal = (!layout_ok).then(|| "weight buffers are not i32 words with f32 scales".to_string());
    if !matches!(device.as_dispatch(), DispatchDevice::Cube(_)) {
        return choose_host(dtype, refusal, host_rows, IntGemmKernel::Host, IntGemmKernel::Reference);
    }
    let rows = host_rows.rows();
    let no_tensor_cores = match tensor_cores {
        Ok(tiling) if refusal.is_none() => {
            let portable = choose_portable(dtype, rows, None, String::new());
            return match portable.kernel {
                Some(_) => Selection { kernel: IntGemmKernel::TensorCores(tiling), reason: "tensor-core kernel (int_mma)".into() },
                None => Selection { kernel: IntGemmKernel::Reference, reason: portable.reason },
            };
        }
        Ok(_) => String::new(),
        Err(why) => why,
    };
    let portable = choose_portable(dtype, rows, refusal, no_tensor_cores.clone());
    let Some(tile_m) = portable.kernel else {
        return Selection { kernel: IntGemmKernel::Reference, reason: portable.reason };
    };
    let registers = |reason| Selection { kernel: IntGemmKernel::Cube(IntGemmTiling::Registers { tile_m }), reason };
    if rows < SHARED_MEMORY_MIN_ROWS {
        return registers(portable.reason);
    }
    let tile_k = int_gemm_tiled::TILE_K as usize;
    let no_tiles = if !weight.k.is_multiple_of(tile_k) {
        Some(format!("K = {} is not a multiple of {tile_k}", weight.k))
    } else {
        software_device(device).map(|name| format!("{name} is a CPU, not a GPU card: its barriers and shared memory cost more than the tiles save"))
    };
    match no_tiles {
        Some(why) => registers(format!("{}; no shared-memory tiles: {why}", portable.reason)),
        None => Selection {
            kernel: IntGemmKernel::Cube(IntGemmTiling::SharedMemory),
            reason: format!("shared-memory tile kernel for {rows} rows; {no_tensor_cores}"),
        },
    }
}

/// The checks every quantized matmul's kernels share: the policy, the activations' dtype
/// (`kernel` names what takes them), then the format's own `refusal`; `Err` gives why the
/// reference runs.
fn kernels_allowed(dtype: DType, refusal: Option<String>, kernel: &str) -> Result<(), String> {
    if policy() == KernelPolicy::Reference {
        return Err("kernels disabled (EMBER_KERNELS=reference)".into());
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("activations in {dtype:?}; the {kernel} takes f32, f16 or bf16"));
    }
    refusal.map_or(Ok(()), Err)
}

/// On the Flex device: the host kernel (`host`) where [`kernels_allowed`], otherwise the
/// reference (`reference`).
fn choose_host<K>(dtype: DType, refusal: Option<String>, rows: HostRows, host: K, reference: K) -> Selection<K> {
    match kernels_allowed(dtype, refusal, "host kernel") {
        Ok(()) => Selection { kernel: host, reason: format!("{}; Flex keeps its tensors in host memory", rows.path()) },
        Err(reason) => Selection { kernel: reference, reason },
    }
}

/// The rows a host product's path ([`HostPath`]) follows.
#[derive(Debug, Clone, Copy)]
enum HostRows {
    /// One product of `rows` rows, tiled from `tiled_from` rows, of a family AMX's tile
    /// unit takes (`tiles`) or not.
    Product { rows: usize, tiled_from: usize, tiles: Option<TileProducts> },
    /// A mixture-of-experts projection of packed integer experts: each expert's rows
    /// take their own path.
    PerExpert { max_rows: usize, tiled_from: usize },
}

impl HostRows {
    /// The rows the Cube kernels are sized for: the product's, or the largest expert batch.
    fn rows(self) -> usize {
        match self {
            Self::Product { rows, .. } | Self::PerExpert { max_rows: rows, .. } => rows,
        }
    }

    /// Which host path runs, and where the other one takes over.
    fn path(self) -> String {
        match self {
            // Only products the tile unit takes and 8-bit ones with quantized activations
            // are never tiled.
            Self::Product { tiled_from: usize::MAX, tiles, .. } => format!("host fused kernel, at every row count{}", on_tile_unit(tiles)),
            Self::PerExpert { tiled_from: usize::MAX, .. } => format!("host fused kernel per expert, at every row count{}", on_tile_unit(Some(TileProducts::PackedInt))),
            Self::Product { rows, tiled_from, .. } => match HostPath::for_rows(rows, tiled_from) {
                HostPath::Fused => format!("host fused kernel, tiles for the gemm crate from {tiled_from} rows"),
                HostPath::Tiled => format!("host tiled kernel, the fused kernel below {tiled_from} rows"),
            },
            Self::PerExpert { tiled_from, .. } => format!("host kernels per expert, fused below {tiled_from} rows and tiled from there"),
        }
    }
}

/// Where AMX's tile unit takes a host product of family `tiles`: " (on AMX's tile unit
/// from N rows)", or nothing.
fn on_tile_unit(tiles: Option<TileProducts>) -> String {
    tiles.and_then(amx_rows).map(|rows| format!(" (on AMX's tile unit from {rows} rows)")).unwrap_or_default()
}

/// On a Cube device, where [`kernels_allowed`]: the portable kernel, with its `tile_m`
/// sized to the rows (`None` is the reference).
fn choose_portable(dtype: DType, rows: usize, refusal: Option<String>, no_tensor_cores: String) -> Selection<Option<u32>> {
    if let Err(reason) = kernels_allowed(dtype, refusal, "portable kernel") {
        return Selection { kernel: None, reason };
    }
    let tile_m = match rows {
        0..=1 => 1,
        2 => 2,
        3..=4 => 4,
        _ => MAX_TILE_M,
    };
    Selection { kernel: Some(tile_m), reason: format!("portable CubeCL kernel; {no_tensor_cores}") }
}

/// The device's name when it is the CPU runtime or a software rasterizer (wgpu on Mesa's
/// lavapipe) rather than a GPU card.
fn software_device(device: &Device) -> Option<String> {
    let DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return None;
    };
    let client = cube.client();
    let identity = &client.properties().identity;
    identity.physical.is_none().then(|| identity.name.clone())
}

/// K blocks of weights each warp keeps in flight at decode ([`Staging::Weights`]): with
/// four cubes of four warps per streaming multiprocessor, four blocks of 512 bytes each
/// (4-bit) keep 32 KiB per multiprocessor on the way, about what covers the memory
/// latency at full bandwidth. A first estimate, to be tuned on hardware.
pub const WEIGHT_STAGES: u32 = 4;

/// How a tensor-core kernel covers `rows × [k, n]` on `device` when its activations load
/// directly (16 output columns per warp, K in blocks of 64): row tiles of 16 per warp (1,
/// 2 or 4), four warps per cube side by side along N, K splits enough to fill the GPU
/// ([`k_splits`]), and the weights streamed [`WEIGHT_STAGES`] K blocks deep.
pub fn mma_tiling(device: &Device, rows: usize, k: usize, n: usize) -> MmaTiling {
    direct_activation_tiling(device, rows, k, n, 4, 1)
}

/// [`mma_tiling`] with `warps` column blocks per cube and `k_slices` warps slicing each
/// one's K range.
fn direct_activation_tiling(device: &Device, rows: usize, k: usize, n: usize, warps: u32, k_slices: u32) -> MmaTiling {
    let m_tiles = match rows {
        0..=16 => 1,
        17..=32 => 2,
        _ => 4,
    };
    let cubes = n.div_ceil(16).div_ceil(warps as usize) * rows.div_ceil(16 * m_tiles as usize).max(1);
    let splits = k_splits(device, cubes, k / k_slices as usize);
    MmaTiling { m_tiles, warps, k_slices, splits, staging: Staging::Weights { stages: WEIGHT_STAGES }, tensor_cores: true }
}

/// Rows from which `int_mma` stages its activations through shared memory: from here a
/// cube's four warps share 64 rows, which loading directly fetches once per warp. A first
/// estimate, to be tuned on hardware.
pub const INT_MMA_STAGED_ROWS: usize = 64;

/// Warps slicing each column block's K range in `int_mma` below [`INT_MMA_STAGED_ROWS`]:
/// four cubes per streaming multiprocessor then come with a quarter of the K splits, so
/// most decode shapes need none and no launch sums partial products. A first estimate,
/// to be tuned on hardware.
pub const INT_MMA_K_SLICES: u32 = 4;

/// How `int_mma` covers `rows × [k, n]`: one column block per cube, sliced along K by
/// [`INT_MMA_K_SLICES`] warps, with the weights staged; from [`INT_MMA_STAGED_ROWS`] rows,
/// [`mma_tiling`] with both operands staged three K blocks deep.
pub fn int_mma_tiling(device: &Device, rows: usize, k: usize, n: usize) -> MmaTiling {
    match rows < INT_MMA_STAGED_ROWS {
        true => direct_activation_tiling(device, rows, k, n, 1, INT_MMA_K_SLICES),
        false => MmaTiling { staging: Staging::Operands { stages: 3 }, ..mma_tiling(device, rows, k, n) },
    }
}

/// Rows from which `byte_mma` stages its operands through shared memory: from here each
/// weight byte feeds enough rows that fetching it once per cube rather than once per warp
/// pays for the stage. A first estimate, to be tuned on hardware.
pub const STAGED_ROWS: usize = 256;

/// How `byte_mma` covers `rows × [k, n]`: [`mma_tiling`] below [`STAGED_ROWS`]; from there
/// cubes of four warps in two rows, each warp 64×32 with three K blocks in flight. Scales
/// that change along K (`chunked`) keep a second set of f32 totals, so the warps take 32
/// rows each to stay within the register file.
pub fn byte_mma_tiling(device: &Device, rows: usize, k: usize, n: usize, chunked: bool) -> MmaTiling {
    if rows < STAGED_ROWS {
        return mma_tiling(device, rows, k, n);
    }
    let m_tiles = if chunked { 2 } else { 4 };
    let cubes = n.div_ceil(64) * rows.div_ceil(32 * m_tiles as usize);
    MmaTiling { m_tiles, warps: 2, k_slices: 1, splits: k_splits(device, cubes, k), staging: Staging::Operands { stages: 3 }, tensor_cores: true }
}

/// K splits for a grid of `cubes`: enough that it holds about four cubes per streaming
/// multiprocessor (one split when the device does not say how many it has).
fn k_splits(device: &Device, cubes: usize, k: usize) -> u32 {
    let DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return 1;
    };
    let Some(sms) = cube.client().properties().hardware.num_streaming_multiprocessors else {
        return 1;
    };
    let wanted = 4 * sms as usize;
    let k_blocks = (k / 64).max(1);
    wanted.div_ceil(cubes.max(1)).clamp(1, k_blocks) as u32
}

/// How a tensor-core kernel covers `rows × [k, n]` on a device.
type TilingRule<'a> = &'a dyn Fn(&Device, usize, usize, usize) -> MmaTiling;

/// The tiling of a tensor-core kernel (`kernel`, built on `instruction`) for
/// `rows × [k, n]`, or why it does not run: checked in order the runtime, the format's or
/// shape's own `refusal`, the GPU's instruction set, and the policy.
#[allow(clippy::too_many_arguments)]
fn tensor_core_tiling(device: &Device, rows: usize, k: usize, n: usize, instruction: MmaConfig, refusal: Option<String>, kernel: &str, tiling: TilingRule) -> Result<MmaTiling, String> {
    let DispatchDevice::Cube(cube @ cubecl::Device::Cuda(_)) = device.as_dispatch() else {
        return Err("no tensor cores on this runtime".into());
    };
    if let Some(reason) = refusal {
        return Err(format!("no tensor-core kernel: {reason}"));
    }
    if !cube.client().properties().features.matmul.mma.contains(&instruction) {
        let MmaConfig { a_type, m, n, k, .. } = instruction;
        return Err(format!("this GPU has no {a_type:?} mma.m{m}n{n}k{k} instruction for {kernel}"));
    }
    if policy() != KernelPolicy::TensorCores {
        return Err(format!("the tensor-core kernel ({kernel}) awaits verification on a GPU; EMBER_KERNELS=tensor-cores enables it"));
    }
    Ok(tiling(device, rows, k, n))
}

/// [`tensor_core_tiling`] for `int_mma` (W4A16, W8A16, weight-only FP8): f16 or bf16 activations times a weight
/// whose layout `IntFragments` takes (`unsupported` says why not).
fn int_mma_choice(device: &Device, dtype: DType, rows: usize, k: usize, n: usize, unsupported: Option<String>) -> Result<MmaTiling, String> {
    let (half, refusal) = match dtype {
        DType::F16 => (FloatKind::F16, unsupported),
        DType::BF16 => (FloatKind::BF16, unsupported),
        _ => (FloatKind::F16, Some(format!("activations in {dtype:?} (int_mma takes f16 or bf16)"))),
    };
    let instruction = MmaConfig { a_type: ElemType::Float(half), b_type: ElemType::Float(half), cd_type: ElemType::Float(FloatKind::F32), m: 16, n: 8, k: 16 };
    tensor_core_tiling(device, rows, k, n, instruction, refusal, "int_mma", &int_mma_tiling)
}

/// [`tensor_core_tiling`] for the 8-bit kernel on `operand` × `operand` → `accumulator`,
/// with scales that change along K or not (`chunked`).
#[allow(clippy::too_many_arguments)]
fn byte_mma_choice(device: &Device, rows: usize, k: usize, n: usize, operand: ElemType, accumulator: ElemType, chunked: bool, refusal: Option<String>) -> Result<MmaTiling, String> {
    let refusal = refusal.or_else(|| (!k.is_multiple_of(byte_mma::K_BLOCK as usize)).then(|| format!("K = {k} is not a multiple of {}", byte_mma::K_BLOCK)));
    let instruction = MmaConfig { a_type: operand, b_type: operand, cd_type: accumulator, m: 16, n: 8, k: 32 };
    tensor_core_tiling(device, rows, k, n, instruction, refusal, "byte_mma", &|device, rows, k, n| byte_mma_tiling(device, rows, k, n, chunked))
}

/// The portable choice, or the tensor-core kernel where `tensor_cores` allows it (the
/// checks of [`kernels_allowed`] apply to both; Flex gets its host kernel instead).
fn prefer_tensor_cores(device: &Device, dtype: DType, rows: HostRows, refusal: Option<String>, tensor_cores: Result<MmaTiling, String>, kernel: &str) -> Selection<GemmKernel> {
    if !matches!(device.as_dispatch(), DispatchDevice::Cube(_)) {
        return choose_host(dtype, refusal, rows, GemmKernel::Host, GemmKernel::Reference);
    }
    let rows = rows.rows();
    let (tiling, why_not) = match tensor_cores {
        Ok(tiling) => (Some(tiling), String::new()),
        Err(why) => (None, why),
    };
    let portable = choose_portable(dtype, rows, refusal, why_not);
    match (portable.kernel, tiling) {
        (None, _) => Selection { kernel: GemmKernel::Reference, reason: portable.reason },
        (Some(_), Some(tiling)) => Selection { kernel: GemmKernel::TensorCores(tiling), reason: format!("tensor-core kernel ({kernel})") },
        (Some(tile_m), None) => Selection { kernel: GemmKernel::Portable { tile_m }, reason: portable.reason },
    }
}

/// `selection`, saying so when the tensor-core kernel quantizes the activations itself.
fn with_fused_quantization(mut selection: Selection<GemmKernel>, activations: &ActivationQuant) -> Selection<GemmKernel> {
    if matches!(&selection.kernel, GemmKernel::TensorCores(tiling) if super::quantizes_as_it_loads(activations, tiling)) {
        selection.reason.push_str(", quantizing the activations as it loads them");
    }
    selection
}

/// Picks the kernel for `rows × K` activations of `dtype` times an FP8 weight.
pub fn fp8_gemm(weight: &Fp8Weight, device: &Device, dtype: DType, rows: usize) -> Selection<GemmKernel> {
    let refusal = fp8_refusal(weight);
    let (k, n) = (weight.in_features, weight.out_features);
    let (tensor_cores, kernel) = match (&weight.activations, fp8_scale_chunk(weight)) {
        // Float activations: e4m3 weights dequantized to f16 / bf16 in registers.
        (ActivationQuant::None, _) => (int_mma_choice(device, dtype, rows, k, n, refusal.clone().or_else(|| IntFragments::unsupported_fp8(weight))), "int_mma"),
        (_, Some(chunk)) if !chunk.is_multiple_of(byte_mma::K_BLOCK as usize) => {
            let why = format!("scale blocks {chunk} wide are not a multiple of {}", byte_mma::K_BLOCK);
            (Err(format!("no tensor-core kernel: {why}")), "byte_mma")
        }
        (_, chunk) => {
            let (e4m3, f32) = (ElemType::Float(FloatKind::E4M3), ElemType::Float(FloatKind::F32));
            let chunked = chunk.is_some_and(|chunk| chunk < k);
            (byte_mma_choice(device, rows, k, n, e4m3, f32, chunked, refusal.clone()), "byte_mma")
        }
    };
    let selection = with_fused_quantization(prefer_tensor_cores(device, dtype, HostRows::Product { rows, tiled_from: fp8_tiled_rows(weight), tiles: Some(TileProducts::Bytes) }, refusal, tensor_cores, kernel), &weight.activations);
    log_once(|| format!(
        "fp8 [{}x{}] {} acts={} rows={rows} {dtype:?}: {:?} ({})",
        weight.in_features, weight.out_features, fp8_scales(weight), weight.activations.describe(), selection.kernel, selection.reason
    ));
    selection
}

fn fp8_scales(weight: &Fp8Weight) -> String {
    match weight.block {
        Some([bn, bk]) => format!("block {bn}x{bk}"),
        None if weight.scales.dims()[0] > 1 => "per-channel".into(),
        None => "per-tensor".into(),
    }
}

/// Columns per scale chunk of an FP8 weight's kernel: the weight's block width and the
/// activations' group width (which must agree), or `None` when scales do not vary along K.
pub fn fp8_scale_chunk(weight: &Fp8Weight) -> Option<usize> {
    let (block, group) = fp8_scale_widths(weight);
    block.or(group)
}

/// Columns per weight-scale block and per activation-scale group, where scales vary along K.
fn fp8_scale_widths(weight: &Fp8Weight) -> (Option<usize>, Option<usize>) {
    let group = match weight.activations {
        ActivationQuant::DynamicPerGroup(group) => Some(group),
        _ => None,
    };
    (weight.block.map(|[_, bk]| bk), group)
}

fn fp8_refusal(weight: &Fp8Weight) -> Option<String> {
    if weight.codes.dtype() != DType::I32 || weight.scales.dtype() != DType::F32 {
        return Some("weight buffers are not i32 words with f32 scales".into());
    }
    if !weight.in_features.is_multiple_of(4) {
        return Some(format!("K = {} is not a multiple of 4", weight.in_features));
    }
    if let (Some(bk), Some(group)) = fp8_scale_widths(weight) {
        if bk != group {
            return Some(format!("activation groups of {group} do not match weight blocks {bk} wide"));
        }
    }
    match fp8_scale_chunk(weight) {
        Some(chunk) if chunk == 0 || !chunk.is_multiple_of(4) => Some(format!("scale blocks {chunk} wide are not a multiple of 4 columns")),
        _ => None,
    }
}

/// Picks the kernel for `rows × K` activations of `dtype` times a W8A8 int8 weight.
pub fn w8a8_gemm(weight: &W8A8Weight, device: &Device, dtype: DType, rows: usize) -> Selection<GemmKernel> {
    let on_host = !matches!(device.as_dispatch(), DispatchDevice::Cube(_));
    let refusal = if weight.codes.dtype() != DType::I32 || weight.scales.dtype() != DType::F32 {
        Some("weight buffers are not i32 words with f32 scales".into())
    } else if !weight.in_features.is_multiple_of(4) {
        Some(format!("K = {} is not a multiple of 4", weight.in_features))
    } else {
        match weight.activations {
            // The host kernel multiplies float activations by the int8 values directly.
            ActivationQuant::None if !on_host => Some("activations stay float; the reference multiplies by the dequantized weight".into()),
            ActivationQuant::DynamicPerGroup(_) => Some("per-group int8 activations have no kernel".into()),
            _ => None,
        }
    };
    let (int8, i32) = (ElemType::Int(IntKind::I8), ElemType::Int(IntKind::I32));
    let tensor_cores = byte_mma_choice(device, rows, weight.in_features, weight.out_features, int8, i32, false, refusal.clone());
    let selection = with_fused_quantization(prefer_tensor_cores(device, dtype, HostRows::Product { rows, tiled_from: w8a8_tiled_rows(weight), tiles: Some(TileProducts::Bytes) }, refusal, tensor_cores, "byte_mma"), &weight.activations);
    log_once(|| format!(
        "w8a8 [{}x{}] acts={} rows={rows} {dtype:?}: {:?} ({})",
        weight.in_features, weight.out_features, weight.activations.describe(), selection.kernel, selection.reason
    ));
    selection
}

/// A kernel for a float weight stored in f16 or bf16: kept as stored on the Flex device
/// (see `LoadContext::float_weight_dtype`), or in the compute dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseKernel {
    /// Burn's matmul, of the weight cast to the activations' dtype if it differs.
    Reference,
    /// The host kernel on the Flex device ([`super::host::half_gemm`]), converting the
    /// weight in registers.
    Host,
}

/// Picks the kernel for `rows × K` activations of `dtype` times a `[K, N]` float weight
/// stored in `weight_dtype` (the host kernels read f16 and bf16, in the activations'
/// dtype or not).
pub fn half_dense_gemm(weight_dtype: DType, device: &Device, dtype: DType, rows: usize, [k, n]: [usize; 2]) -> Selection<DenseKernel> {
    let selection = match device.as_dispatch() {
        DispatchDevice::Cube(_) => Selection { kernel: DenseKernel::Reference, reason: "Burn's matmul on CubeCL devices, which load float weights in the compute dtype".into() },
        _ => {
            let refusal = (!matches!(weight_dtype, DType::F16 | DType::BF16)).then(|| format!("weight in {weight_dtype:?}; the host kernel reads f16 or bf16"));
            let tiled_from = half_tiled_rows(k);
            let family = if weight_dtype == DType::F16 { TileProducts::F16Weights } else { TileProducts::Bf16Weights };
            let tiles = (tiled_from == usize::MAX).then_some(family);
            choose_host(dtype, refusal, HostRows::Product { rows, tiled_from, tiles }, DenseKernel::Host, DenseKernel::Reference)
        }
    };
    log_once(|| format!("float {weight_dtype:?} [{k}x{n}] rows={rows} {dtype:?}: {:?} ({})", selection.kernel, selection.reason));
    selection
}

/// A kernel for the attention of a batched step over the paged KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Gather each context into a padded tensor, then masked Burn-ops attention.
    Reference,
    /// The CubeCL kernel that reads the pool through the block tables (decode steps).
    PagedDecode,
    /// The host kernel on the Flex device ([`super::host::attention`]): every step,
    /// prefill and decode, read through the block tables.
    Host,
}

/// Largest head the decode kernel keeps in registers.
pub const MAX_KERNEL_HEAD_DIM: usize = 256;

/// Picks the attention path for a step; `decode_only` when every sequence brings one token.
pub fn paged_attention(device: &Device, dtype: DType, head_dim: usize, decode_only: bool) -> Selection<AttentionKernel> {
    let reference = |reason: &str| Selection { kernel: AttentionKernel::Reference, reason: reason.into() };
    let selection = if policy() == KernelPolicy::Reference {
        reference("kernels disabled (EMBER_KERNELS=reference)")
    } else if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        reference("the kernels take f32, f16 or bf16")
    } else if !matches!(device.as_dispatch(), DispatchDevice::Cube(_)) {
        Selection { kernel: AttentionKernel::Host, reason: "host kernel (Flex keeps the pools in host memory)".into() }
    } else if !decode_only {
        reference("the step has prefill tokens; the kernel takes one query per sequence")
    } else if head_dim > MAX_KERNEL_HEAD_DIM {
        reference("head_dim above 256 does not fit the kernel's registers")
    } else {
        Selection { kernel: AttentionKernel::PagedDecode, reason: "paged decode kernel".into() }
    };
    log_once(|| format!("attention head_dim={head_dim} decode_only={decode_only} {dtype:?}: {:?} ({})", selection.kernel, selection.reason));
    selection
}

/// Logs each distinct message once. Runs on every quantized matmul, so nothing is
/// formatted or locked unless debug logging is on for this target.
fn log_once(message: impl FnOnce() -> String) {
    if !tracing::enabled!(target: "ember_quant::kernels", tracing::Level::DEBUG) {
        return;
    }
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let message = message();
    let seen = SEEN.get_or_init(Default::default);
    let first = seen.lock().map(|mut set| set.insert(message.clone())).unwrap_or(false);
    if first {
        tracing::debug!(target: "ember_quant::kernels", "{message}");
    }
}
