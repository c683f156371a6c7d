//! CUDA C++ for every kernel variant, generated through CubeCL's C++ compiler with no GPU,
//! driver or toolkit present (the text NVRTC would receive), so a kernel that stops
//! compiling fails CI on machines without a GPU.

use std::sync::Arc;

use cubecl::ir::{DeviceIdentity, ElemType, FloatKind, HardwareProperties, IntKind, MemoryDeviceProperties};
use cubecl::prelude::*;
use cubecl_cpp::shared::{CompilationOptions, CppCompiler};

use super::int_gemm::{self, zero_mode, CUBE_UNITS};
use super::select::{INT_MMA_K_SLICES, WEIGHT_STAGES};
use super::{activation_quant, byte_mma, fp8_gemm, int_mma, int_gemm_tiled, paged_attention, w8a8_gemm, IntGemmTiling, Staging};

/// One compiled variant: a readable name and its CUDA C++ source.
#[derive(Debug, Clone)]
pub struct GeneratedKernel {
    pub name: String,
    pub source: String,
}

/// An sm_80-class device as the compiler sees it, with nothing queried from hardware.
fn offline_properties() -> Arc<DeviceProperties> {
    let hardware = HardwareProperties {
        load_width: 128,
        vector_register_count: None,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 32,
        max_shared_memory_size: 48 * 1024,
        max_cube_count: (u32::MAX, u16::MAX as u32, u16::MAX as u32),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: None,
        num_tensor_cores: None,
        min_tensor_cores_dim: None,
        num_cpu_cores: None,
        last_level_cache_size: None,
        max_vector_size: VectorSize::MAX,
        cube_mma_reserved_shared_memory: 0,
    };
    Arc::new(DeviceProperties::new(
        Default::default(),
        MemoryDeviceProperties::new(u64::MAX, 256),
        hardware,
        cubecl::profile::TimingMethod::Device,
        DeviceIdentity { name: "offline".into(), fingerprint: "offline".into(), physical: None },
    ))
}

fn compile(kernel: impl CubeKernel) -> Result<String, String> {
    let mut compiler = CppCompiler::<cubecl_cpp::target::Cuda>::default();
    let definition = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kernel.define()))
        .map_err(|_| "the kernel panicked while expanding".to_string())?;
    cubecl::Compiler::compile(&mut compiler, definition, &CompilationOptions::default())
        .map(|compiled| compiled.to_string())
        .map_err(|e| format!("{e:?}"))
}

/// What the CUDA runtime tells the compiler about its target, without a device.
fn cuda_target() -> Arc<TargetProperties> {
    Arc::new(<cubecl::cuda::CudaRuntime as cubecl_runtime::runtime::Runtime>::target_properties())
}

fn generate(name: String, kernel: impl CubeKernel) -> Result<GeneratedKernel, (String, String)> {
    compile(kernel).map(|source| GeneratedKernel { name: name.clone(), source }).map_err(|e| (name, e))
}

/// One-dimensional cubes of `units`, unchecked bounds, 32-bit addressing.
fn settings(units: u32) -> KernelSettings {
    KernelSettings::new(*CubeDim::new_1d(units), ExecutionMode::Unchecked, AddressType::U32)
}

/// A buffer argument that is not written in place.
fn buffer() -> BufferCompilationArg {
    BufferCompilationArg { inplace: None }
}

const FLOATS: [(FloatKind, &str); 3] = [(FloatKind::F16, "f16"), (FloatKind::BF16, "bf16"), (FloatKind::F32, "f32")];

/// Every variant of the integer weight-only GEMM: bits × grouping × zero points × kernel
/// (the register kernel at each rows-per-unit, and the shared-memory tile kernel) ×
/// activation dtype × dense or mixture-of-experts.
pub fn int_weight_gemm_variants() -> Vec<Result<GeneratedKernel, (String, String)>> {
    let target = cuda_target();
    let properties = offline_properties();
    let zero_modes = [(zero_mode::MIDPOINT, "sym"), (zero_mode::INTEGER, "zp"), (zero_mode::FLOAT, "fzp")];
    let tilings = [1u32, 2, 4, 8].map(|tile_m| IntGemmTiling::Registers { tile_m }).into_iter().chain([IntGemmTiling::SharedMemory]);
    let mut variants = Vec::new();
    for bits in [4u32, 8] {
        for group_size in [128u32, 0] {
            for (zeros, zeros_name) in zero_modes {
                for tiling in tilings.clone() {
                    for (float, float_name) in FLOATS {
                        for grouped in [false, true] {
                            let moe = if grouped { "_moe" } else { "" };
                            let kernel_name = match tiling {
                                IntGemmTiling::Registers { tile_m } => format!("m{tile_m}"),
                                IntGemmTiling::SharedMemory => "smem".into(),
                            };
                            let name = format!("int{bits}_g{group_size}_{zeros_name}_{kernel_name}_{float_name}{moe}");
                            variants.push(generate_int_gemm(name, &properties, &target, bits, group_size, zeros, tiling, ElemType::Float(float), grouped));
                        }
                    }
                }
            }
        }
    }
    variants
}

#[allow(clippy::too_many_arguments)]
fn generate_int_gemm(
    name: String,
    properties: &Arc<DeviceProperties>,
    target: &Arc<TargetProperties>,
    bits: u32,
    group_size: u32,
    zeros: u32,
    tiling: IntGemmTiling,
    float: ElemType,
    grouped: bool,
) -> Result<GeneratedKernel, (String, String)> {
    let (properties, target) = (properties.clone(), target.clone());
    let [x, packed, scales, zero_points, offsets, group_index, tiles, out] = std::array::from_fn(|_| buffer());
    match tiling {
        IntGemmTiling::Registers { tile_m } => generate(
            name,
            int_gemm::int_weight_gemm::IntWeightGemm::new(
                settings(CUBE_UNITS),
                properties,
                target,
                x,
                packed,
                scales,
                zero_points,
                offsets,
                group_index,
                tiles,
                out,
                (),
                (),
                (),
                (),
                bits,
                group_size,
                zeros,
                tile_m,
                grouped,
                float,
            ),
        ),
        IntGemmTiling::SharedMemory => generate(
            name,
            int_gemm_tiled::int_weight_gemm_tiled::IntWeightGemmTiled::new(
                KernelSettings::new(*CubeDim::new_2d(int_gemm_tiled::CUBE_SIDE, int_gemm_tiled::CUBE_SIDE), ExecutionMode::Unchecked, AddressType::U32),
                properties,
                target,
                x,
                packed,
                scales,
                zero_points,
                offsets,
                group_index,
                tiles,
                out,
                (),
                (),
                (),
                (),
                bits,
                group_size,
                zeros,
                grouped,
                float,
            ),
        ),
    }
}

/// Every variant of the paged decode attention: head size × activation dtype.
pub fn paged_decode_attention_variants() -> Vec<Result<GeneratedKernel, (String, String)>> {
    let target = cuda_target();
    let properties = offline_properties();
    let mut variants = Vec::new();
    for head_dim in [64u32, 128, 256] {
        for (float, float_name) in FLOATS {
            let name = format!("paged_decode_d{head_dim}_{float_name}");
            let kernel = paged_attention::paged_decode_attention::PagedDecodeAttention::new(
                settings(paged_attention::CUBE_UNITS),
                properties.clone(),
                target.clone(),
                buffer(),
                buffer(),
                buffer(),
                buffer(),
                buffer(),
                buffer(),
                (),
                (),
                (),
                (),
                (),
                (),
                (),
                head_dim,
                ElemType::Float(float),
            );
            variants.push(generate(name, kernel));
        }
    }
    variants
}

/// Every variant of the activation quantizer: grid × dynamic or static scale × input dtype.
pub fn quantize_activations_variants() -> Vec<Result<GeneratedKernel, (String, String)>> {
    let target = cuda_target();
    let properties = offline_properties();
    let mut variants = Vec::new();
    for (grid, grid_name) in [(activation_quant::grid::INT8, "int8"), (activation_quant::grid::E4M3, "e4m3")] {
        for (dynamic, scale_name) in [(true, "dynamic"), (false, "static")] {
            for (float, float_name) in FLOATS {
                let kernel = activation_quant::quantize_activations::QuantizeActivations::new(
                    settings(activation_quant::CUBE_UNITS),
                    properties.clone(),
                    target.clone(),
                    buffer(),
                    buffer(),
                    buffer(),
                    buffer(),
                    (),
                    (),
                    (),
                    (),
                    grid,
                    dynamic,
                    ElemType::Float(float),
                );
                variants.push(generate(format!("quantize_{grid_name}_{scale_name}_{float_name}"), kernel));
            }
        }
    }
    variants
}

/// Every variant of the int8 W8A8 GEMM: rows per unit × output dtype.
pub fn w8a8_gemm_variants() -> Vec<Result<GeneratedKernel, (String, String)>> {
    let target = cuda_target();
    let properties = offline_properties();
    let mut variants = Vec::new();
    for tile_m in [1u32, 2, 4, 8] {
        for (float, float_name) in FLOATS {
            let kernel = w8a8_gemm::w8a8_gemm::W8a8Gemm::new(
                settings(CUBE_UNITS),
                properties.clone(),
                target.clone(),
                buffer(),
                buffer(),
                buffer(),
                buffer(),
                buffer(),
                (),
                (),
                (),
                (),
                tile_m,
                ElemType::Float(float),
            );
            variants.push(generate(format!("w8a8_m{tile_m}_{float_name}"), kernel));
        }
    }
    variants
}

/// Every variant of the FP8 GEMM: quantized or weight-only input × rows per unit × dtype.
pub fn fp8_gemm_variants() -> Vec<Result<GeneratedKernel, (String, String)>> {
    let target = cuda_target();
    let properties = offline_properties();
    let mut variants = Vec::new();
    for (quantized_input, input_name) in [(true, "w8a8"), (false, "weight_only")] {
        for tile_m in [1u32, 2, 4, 8] {
            for (float, float_name) in FLOATS {
                let kernel = fp8_gemm::fp8_gemm::Fp8Gemm::new(
                    settings(CUBE_UNITS),
                    properties.clone(),
                    target.clone(),
                    buffer(),
                    buffer(),
                    buffer(),
                    buffer(),
                    buffer(),
                    buffer(),
                    (),
                    (),
                    (),
                    (),
                    (),
                    (),
                    (),
                    (),
                    (),
                    quantized_input,
                    tile_m,
                    ElemType::Float(float),
                );
                variants.push(generate(format!("fp8_{input_name}_m{tile_m}_{float_name}"), kernel));
            }
        }
    }
    variants
}

/// The tensor-core kernels' tag for how a variant loads its operands: `unstaged`,
/// `weights_staged` or `all_staged`.
fn staging_tag(staging: Staging) -> &'static str {
    match staging {
        Staging::Direct => "unstaged",
        Staging::Weights { .. } => "weights_staged",
        Staging::Operands { .. } => "all_staged",
    }
}

/// Every variant of the tensor-core W4A16 / W8A16 kernel as it runs on CUDA (the `mma`
/// instruction, four warps per cube): bits × group size × zero points × tiling (16 rows
/// per warp unstaged, four column blocks per cube; 16, 32 and 64 rows with the weights
/// staged and four warps slicing one column block's K, as at decode; 16 rows with the
/// weights staged, four column blocks; 64 rows with both operands staged three K blocks
/// deep, four column blocks) × activation dtype × dense or mixture-of-experts, with f32
/// partial products; and dense writing its output in the activation dtype (one K split)
/// at the decode tiling of 16 rows and at 64 rows with both operands staged.
pub fn int_mma_gemm_variants() -> Vec<Result<GeneratedKernel, (String, String)>> {
    let target = cuda_target();
    let properties = offline_properties();
    let zero_modes = [(zero_mode::MIDPOINT, "sym"), (zero_mode::INTEGER, "zp"), (zero_mode::FLOAT, "fzp")];
    let halves = [(FloatKind::F16, "f16", false), (FloatKind::BF16, "bf16", true)];
    let mut variants = Vec::new();
    // (bits, e4m3, group size, zero modes): 4- and 8-bit integers with every zero mode,
    // and weight-only FP8 (128-row scale blocks or one scale per column, no zero points).
    let integer = |bits, group| (bits, false, group, &zero_modes[..]);
    let layouts = [integer(4, 128), integer(4, 32), integer(4, 0), integer(8, 128), integer(8, 0), (8, true, 128, &zero_modes[..1]), (8, true, 0, &zero_modes[..1])];
    for (bits, e4m3, group_size, zero_modes) in layouts {
        for &(zeros, zeros_name) in zero_modes {
            let weights = Staging::Weights { stages: WEIGHT_STAGES };
            let sliced = (1u32, INT_MMA_K_SLICES);
            let tilings = [(1u32, (4, 1), Staging::Direct), (1, sliced, weights), (2, sliced, weights), (4, sliced, weights), (1, (4, 1), weights), (4, (4, 1), Staging::Operands { stages: 3 })];
            for (m_tiles, (warps, k_slices), staging) in tilings {
                // Dense and grouped with split partials; dense writing its output directly
                // (one K split) at the decode and the prefill tilings.
                let direct_output = (k_slices > 1 && m_tiles == 1) || staging.stages_activations();
                let outputs: &[(bool, bool)] = if direct_output { &[(false, false), (true, false), (false, true)] } else { &[(false, false), (true, false)] };
                for (float, float_name, bf16) in halves {
                    for &(grouped, direct) in outputs {
                        let [x, x_pieces, words, scales, zero_points, offsets, tiles, partials, out] = std::array::from_fn(|_| buffer());
                        let kernel = int_mma::int_mma_gemm::IntMmaGemm::new(
                            KernelSettings::new(*CubeDim::new_2d(int_mma::LANES, warps * k_slices), ExecutionMode::Unchecked, AddressType::U32),
                            properties.clone(),
                            target.clone(),
                            x,
                            x_pieces,
                            words,
                            scales,
                            zero_points,
                            offsets,
                            tiles,
                            partials,
                            out,
                            (),
                            (),
                            (),
                            (),
                            (),
                            bits,
                            e4m3,
                            group_size,
                            zeros,
                            bf16,
                            m_tiles,
                            warps,
                            k_slices,
                            staging.ring_stages(),
                            staging.stages_activations(),
                            true,
                            !(bits == 8 && bf16),
                            grouped,
                            direct,
                            ElemType::Float(float),
                        );
                        let moe = if grouped { "_moe" } else { "" };
                        let output = if direct { "_direct" } else { "" };
                        let values = if e4m3 { "e4m3".to_string() } else { format!("w{bits}") };
                        let staging = staging_tag(staging);
                        let slices = if k_slices > 1 { format!("_k{k_slices}") } else { String::new() };
                        variants.push(generate(format!("int_mma_{values}_g{group_size}_{zeros_name}_m{}{slices}_{staging}{output}_{float_name}{moe}", m_tiles * 16), kernel));
                    }
                }
            }
        }
    }
    variants
}

/// Every variant of the tensor-core 8-bit GEMM as it runs on CUDA (the `mma` instruction):
/// int8 or e4m3 × warp tiling (activations loaded directly at 16 rows per warp unstaged,
/// and at 16, 32 and 64 with the weights staged as at decode, each from codes or
/// quantizing float activations; both operands staged at 32 and 64 rows per warp, from
/// codes) × scales per K chunk or per row (e4m3 only: int8 scales never change along K) ×
/// output dtype × direct output or K-split partials.
pub fn byte_mma_gemm_variants() -> Vec<Result<GeneratedKernel, (String, String)>> {
    let target = cuda_target();
    let properties = offline_properties();
    let direct_activations = |m_tiles, stages| byte_mma::WarpTiling { m_tiles, n_subtiles: 2, warps_m: 1, warps_n: 4, stages, staged_activations: false };
    let all_staged = |m_tiles| byte_mma::WarpTiling { m_tiles, n_subtiles: 4, warps_m: 2, warps_n: 2, stages: 3, staged_activations: true };
    let tilings = [
        ("m16_unstaged", direct_activations(1, 0)),
        ("m16_weights_staged", direct_activations(1, WEIGHT_STAGES)),
        ("m32_weights_staged", direct_activations(2, WEIGHT_STAGES)),
        ("m64_weights_staged", direct_activations(4, WEIGHT_STAGES)),
        ("m32_all_staged", all_staged(2)),
        ("m64_all_staged", all_staged(4)),
    ];
    let mut variants = Vec::new();
    for (fp8, operand, accumulator) in [(false, "int8", ElemType::Int(IntKind::I32)), (true, "e4m3", ElemType::Float(FloatKind::F32))] {
        let loads = tilings.into_iter().flat_map(|tiling| [(tiling, false), (tiling, true)]).filter(|((_, tiling), quantize)| !quantize || !tiling.staged_activations);
        for ((tiling_name, tiling), quantize) in loads {
            for chunked in [false, true].into_iter().filter(|&chunked| fp8 || !chunked) {
                for (float, float_name) in FLOATS {
                    for direct in [true, false] {
                        let [a_codes, x, a_scales, w_codes, w_scales, partials, out] = std::array::from_fn(|_| buffer());
                        let kernel = byte_mma::byte_mma_gemm::ByteMmaGemm::new(
                            KernelSettings::new(*CubeDim::new_2d(byte_mma::LANES, tiling.warps()), ExecutionMode::Unchecked, AddressType::U32),
                            properties.clone(),
                            target.clone(),
                            a_codes,
                            x,
                            a_scales,
                            w_codes,
                            w_scales,
                            partials,
                            out,
                            (),
                            (),
                            (),
                            (),
                            (),
                            (),
                            (),
                            (),
                            (),
                            (),
                            fp8,
                            tiling,
                            chunked,
                            quantize,
                            true,
                            direct,
                            [ElemType::Float(float), accumulator],
                        );
                        let output = if direct { "direct" } else { "split" };
                        let scales = if chunked { "_chunked" } else { "" };
                        let input = if quantize { "_quantizing" } else { "" };
                        variants.push(generate(format!("byte_mma_{operand}_{tiling_name}{input}{scales}_{output}_{float_name}"), kernel));
                    }
                }
            }
        }
    }
    variants
}
