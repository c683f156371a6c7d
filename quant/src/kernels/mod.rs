//! Kernels (DESIGN.md §Kernels). Each op has the Burn-ops reference (in `crate::repr`, the
//! oracle for tests), a portable CubeCL kernel for every Cube runtime, host kernels for
//! the Flex device where they exist ([`host`]), and a selector that picks one per call
//! and can say why.

pub mod activation_quant;
pub mod byte_mma;
pub mod codegen;
mod copy_pipeline;
pub mod e4m3;
pub mod fp8_gemm;
pub mod host;
pub mod int_mma;
pub mod int_gemm;
pub mod int_gemm_tiled;
mod ops;
pub mod paged_attention;
pub mod select;
pub mod w8a8_gemm;

use std::sync::OnceLock;

use burn::backend::Dispatch;
use burn_dispatch::DispatchDevice;
use burn::tensor::{DType, Int, Tensor};

use crate::packing::int_tensor;
use crate::repr::{scale_from_absmax, ActivationGrid, ActivationQuant, ExpertStack, Fp8Weight, IntFragments, PackedIntWeight, W8A8Weight, ZeroPoints};

pub use ops::{
    byte_gemm_output_shape, byte_mma_output_shape, gemm_output_shape, int_mma_output_shape, quantized_activation_specs, same_shape, ActivationQuantLayout, ActivationScale, ByteMmaLayout, Fp8GemmLayout, ScaleStrides,
    GroupBuffer, IntMmaLayout, IntGemmLayout, IntGemmTiling, KernelOps, PagedAttentionLayout, W8A8GemmLayout, ZeroBuffer,
};
pub use select::{byte_mma_tiling, int_mma_tiling, mma_tiling, with_policy, INT_MMA_K_SLICES, WEIGHT_STAGES, AttentionKernel, DenseKernel, GemmKernel, IntGemmKernel, KernelPolicy, Selection};

/// A weight's fragment-ordered copy for the tensor-core W4A16 / W8A16 kernel, repacked
/// the first time that kernel is selected for it (`None` if the repack refused the
/// layout). Only layers that run on tensor cores pay its memory (as much again as the
/// packed weight).
pub type FragmentCache = OnceLock<Option<IntFragments>>;

/// `x · W` for an `Int4` / `Int8` weight through the kernel the selector picks;
/// `fragments` holds the weight's tensor-core copy once one is made.
pub fn int_weight_forward(weight: &PackedIntWeight, fragments: &FragmentCache, x: Tensor<2>) -> Tensor<2> {
    let rows = x.dims()[0];
    match select::int_gemm(weight, &x.device(), x.dtype(), rows).kernel {
        IntGemmKernel::Reference => weight.forward_reference(x),
        IntGemmKernel::Host => host::int_weight_gemm(weight, x.clone()).unwrap_or_else(|| weight.forward_reference(x)),
        IntGemmKernel::Cube(tiling) => int_weight_gemm(weight, x, tiling),
        IntGemmKernel::TensorCores(tiling) => match fragments.get_or_init(|| IntFragments::repack(weight).ok()) {
            Some(fragments) => int_mma_gemm(fragments, weight.ordered_input(x), tiling),
            // The selector checks the layout the repack takes; should they disagree, the
            // register kernel still gives the right answer.
            None => int_weight_gemm(weight, x, IntGemmTiling::Registers { tile_m: select::MAX_TILE_M }),
        },
    }
}

/// Whether the Flex device's element-wise host kernels may stand in for Burn's ops: not
/// under `EMBER_KERNELS=reference`, which leaves every step to the ops.
fn host_steps_enabled() -> bool {
    select::policy() != KernelPolicy::Reference
}

/// SwiGLU's activation `silu(gate) · up`: one pass on the Flex device
/// ([`host::swiglu`]), Burn's ops elsewhere (which the Cube backends fuse).
pub fn silu_and_mul<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if let Some(product) = host_steps_enabled().then(|| host::swiglu::silu_and_mul(&gate, &up)).flatten() {
        return product;
    }
    burn::tensor::activation::silu(gate) * up
}

/// Rotary embeddings ("rotate half") on `[tokens, heads, head_dim]` rows with `[tokens,
/// head_dim]` tables, in one pass on the Flex device ([`host::rope`]); `None` where the
/// caller's Burn ops must run.
pub fn rotate_half_rows(x: &Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Option<Tensor<3>> {
    host_steps_enabled().then(|| host::rope::rotate_half(x, cos, sin)).flatten()
}

/// RMSNorm over the last dimension, as transformers computes it (in f32, the normalized
/// row rounded to `x`'s dtype before the weight scales it): one pass per row on the Flex
/// device ([`host::norm`]), Burn's ops elsewhere.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    if let Some(normalized) = host_steps_enabled().then(|| host::norm::rms_norm(&x, weight, eps)).flatten() {
        return normalized;
    }
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let inverse_rms = x.clone().square().mean_dim(D - 1).add_scalar(eps).sqrt().recip();
    (x * inverse_rms).cast(dtype) * weight.clone().unsqueeze::<D>()
}

/// `x · W` for a float weight stored transposed (`weight_t`, `[in, out]`): the matmul
/// when the weight is in `x`'s dtype and not a 16-bit float, otherwise (f16 or bf16
/// weights: kept as stored on the Flex device, or computed in) the kernel the selector
/// picks.
pub fn dense_forward(weight_t: &Tensor<2>, x: Tensor<2>) -> Tensor<2> {
    let half_weight = matches!(weight_t.dtype(), DType::F16 | DType::BF16);
    if weight_t.dtype() == x.dtype() && !half_weight {
        return x.matmul(weight_t.clone());
    }
    // Burn's cast leaves a tensor already in the dtype as it is.
    let reference = |x: Tensor<2>| {
        let dtype = x.dtype();
        x.matmul(weight_t.clone().cast(dtype))
    };
    match select::half_dense_gemm(weight_t.dtype(), &x.device(), x.dtype(), x.dims()[0], weight_t.dims()).kernel {
        DenseKernel::Reference => reference(x),
        // The transpose of the transposed view is the stored `[out, in]` layout, read in place.
        DenseKernel::Host => host::half_weight_gemm(&weight_t.clone().transpose(), x.clone()).unwrap_or_else(|| reference(x)),
    }
}

/// `x · Wᵀ` for an `Fp8` weight through the kernel the selector picks; `fragments` holds
/// the weight's tensor-core copy for the weight-only path once one is made.
pub fn fp8_forward(weight: &Fp8Weight, fragments: &FragmentCache, x: Tensor<2>) -> Tensor<2> {
    let rows = x.dims()[0];
    match select::fp8_gemm(weight, &x.device(), x.dtype(), rows).kernel {
        GemmKernel::Reference => weight.forward_reference(x),
        GemmKernel::Host => host::fp8_gemm(weight, x.clone()).unwrap_or_else(|| weight.forward_reference(x)),
        GemmKernel::Portable { tile_m } => fp8_gemm(weight, x, tile_m),
        GemmKernel::TensorCores(tiling) => match weight.activations {
            ActivationQuant::None => match fragments.get_or_init(|| IntFragments::repack_fp8(weight).ok()) {
                Some(fragments) => int_mma_gemm(fragments, x, tiling),
                None => fp8_gemm(weight, x, select::MAX_TILE_M),
            },
            _ => fp8_mma_gemm(weight, x, tiling),
        },
    }
}

/// `x · Wᵀ` for a `W8A8` int8 weight through the kernel the selector picks.
pub fn w8a8_forward(weight: &W8A8Weight, x: Tensor<2>) -> Tensor<2> {
    let rows = x.dims()[0];
    match select::w8a8_gemm(weight, &x.device(), x.dtype(), rows).kernel {
        GemmKernel::Reference => weight.forward_reference(x),
        GemmKernel::Host => host::w8a8_gemm(weight, x.clone()).unwrap_or_else(|| weight.forward_reference(x)),
        GemmKernel::Portable { tile_m } => w8a8_gemm(weight, x, tile_m),
        GemmKernel::TensorCores(tiling) => w8a8_mma_gemm(weight, x, tiling),
    }
}

/// Activations quantized by the kernel: bytes packed four per i32 word along K, `[M, K/4]`,
/// and f32 scales `[M, 1]` (per token), `[M, K/group]` (per group) or `[1, 1]`.
pub struct ActivationCodes {
    pub codes: Tensor<2, Int>,
    pub scales: Tensor<2>,
}

/// Quantizes `x` `[M, K]` per `mode` onto `grid` with the CubeCL kernel (a Cube device;
/// K and any group a multiple of 4); `None` when `mode` is `None`. Per-tensor dynamic
/// scales are reduced with Burn ops and applied as a static scale.
pub fn quantize_activations(x: Tensor<2>, mode: &ActivationQuant, grid: ActivationGrid) -> Option<ActivationCodes> {
    let scale = tensor_scale(&x, mode, grid);
    quantize_with(x, mode, grid, scale)
}

/// [`quantize_activations`] with `mode`'s one scale for every value already found
/// ([`tensor_scale`]).
fn quantize_with(x: Tensor<2>, mode: &ActivationQuant, grid: ActivationGrid, tensor_scale: Option<Tensor<2>>) -> Option<ActivationCodes> {
    let (scale, group) = match (mode, tensor_scale) {
        (ActivationQuant::None, _) => return None,
        (_, Some(scale)) => (ActivationScale::Static(scale.reshape([1]).into_dispatch()), 0),
        (&ActivationQuant::DynamicPerGroup(group), None) => (ActivationScale::Dynamic, group as u32),
        (_, None) => (ActivationScale::Dynamic, 0),
    };
    let layout = ActivationQuantLayout { grid, group };
    let (codes, scales) = <Dispatch as KernelOps>::quantize_activations(x.into_dispatch(), scale, layout);
    Some(ActivationCodes { codes: Tensor::from_dispatch(codes), scales: Tensor::from_dispatch(scales) })
}

/// The one f32 scale (`[1, 1]`) for every value of `x` under `mode`: the static scale,
/// or the per-tensor maximum's; `None` for per-token and per-group scales (and `None`).
fn tensor_scale(x: &Tensor<2>, mode: &ActivationQuant, grid: ActivationGrid) -> Option<Tensor<2>> {
    match mode {
        ActivationQuant::Static(scale) => Some(scale.clone().cast(DType::F32).reshape([1, 1])),
        ActivationQuant::DynamicPerTensor => {
            let absmax = x.clone().cast(DType::F32).abs().max_dim(1).max_dim(0);
            Some(scale_from_absmax(absmax, grid).reshape([1, 1]))
        }
        _ => None,
    }
}

/// Whether `byte_mma` under `tiling` quantizes activations with `mode` itself as it loads
/// them: one scale for every value (static or per tensor), and activations that load
/// directly.
pub fn quantizes_as_it_loads(mode: &ActivationQuant, tiling: &MmaTiling) -> bool {
    !tiling.staging.stages_activations() && matches!(mode, ActivationQuant::Static(_) | ActivationQuant::DynamicPerTensor)
}

/// Activations as `byte_mma` takes them: codes and scales from the quantization kernel,
/// or float activations with one scale for every value, which the GEMM quantizes as it
/// loads them (no launch and no codes written between the two).
enum ByteActivations {
    Codes(ActivationCodes),
    Float { x: Tensor<2>, scale: Tensor<2> },
}

impl ByteActivations {
    /// `x` quantized for `byte_mma` under `tiling`: one scale for every value, with the
    /// activations loaded directly, is left to the GEMM; otherwise the quantization kernel runs. `None` for
    /// float activations (`mode` `None`).
    fn new(x: Tensor<2>, mode: &ActivationQuant, grid: ActivationGrid, tiling: MmaTiling) -> Option<Self> {
        match tensor_scale(&x, mode, grid) {
            Some(scale) if quantizes_as_it_loads(mode, &tiling) => Some(Self::Float { x, scale }),
            scale => quantize_with(x, mode, grid, scale).map(Self::Codes),
        }
    }

    /// `[M, groups]` or `[1, 1]`.
    fn scales(&self) -> &Tensor<2> {
        match self {
            Self::Codes(codes) => &codes.scales,
            Self::Float { scale, .. } => scale,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Self::Codes(codes) => codes.codes.dims()[0],
            Self::Float { x, .. } => x.dims()[0],
        }
    }
}

/// The portable W8A8 int8 kernel on a Cube device: activations quantized per token (or
/// with their static scale) by [`quantize_activations`], then the integer GEMM.
pub fn w8a8_gemm(weight: &W8A8Weight, x: Tensor<2>, tile_m: u32) -> Tensor<2> {
    let out_dtype = x.dtype();
    let Some(a) = quantize_activations(x.clone(), &weight.activations, ActivationGrid::Int8) else {
        // Weight-only W8A8 has no integer GEMM to run; the selector never sends it here.
        return weight.forward_reference(x);
    };
    let layout = W8A8GemmLayout { tile_m, per_token: a.scales.dims()[0] > 1, out_dtype };
    Tensor::from_dispatch(<Dispatch as KernelOps>::w8a8_gemm(
        a.codes.into_dispatch(),
        a.scales.into_dispatch(),
        weight.codes.clone().into_dispatch(),
        weight.scales.clone().into_dispatch(),
        layout,
    ))
}

/// The portable FP8 kernel on a Cube device: weight-only when the layer keeps float
/// activations, otherwise activations quantized to e4m3 by [`quantize_activations`].
pub fn fp8_gemm(weight: &Fp8Weight, x: Tensor<2>, tile_m: u32) -> Tensor<2> {
    let out_dtype = x.dtype();
    match quantize_activations(x.clone(), &weight.activations, ActivationGrid::E4M3) {
        None => {
            let layout = Fp8GemmLayout { tile_m, scales: fp8_scale_strides(weight, None), out_dtype };
            Tensor::from_dispatch(<Dispatch as KernelOps>::fp8_weight_only_gemm(
                x.into_dispatch(),
                weight.codes.clone().into_dispatch(),
                weight.scales.clone().into_dispatch(),
                layout,
            ))
        }
        Some(a) => {
            let layout = Fp8GemmLayout { tile_m, scales: fp8_scale_strides(weight, Some(&a.scales)), out_dtype };
            Tensor::from_dispatch(<Dispatch as KernelOps>::fp8_gemm(
                a.codes.into_dispatch(),
                a.scales.into_dispatch(),
                weight.codes.clone().into_dispatch(),
                weight.scales.clone().into_dispatch(),
                layout,
            ))
        }
    }
}

/// The strides of `weight`'s scales and of the activation scales `a_scales` (`[M, groups]`
/// or `[1, 1]`; none for weight-only).
fn fp8_scale_strides(weight: &Fp8Weight, a_scales: Option<&Tensor<2>>) -> ScaleStrides {
    let chunk = select::fp8_scale_chunk(weight).unwrap_or(weight.in_features).max(4) as u32;
    let [scale_rows, scale_cols] = weight.scales.dims();
    let (w_col_div, w_row, w_chunk) = match weight.block {
        Some([bn, _]) => (bn as u32, scale_cols as u32, 1),
        None => (1, (scale_rows > 1) as u32, 0),
    };
    let (a_row, a_chunk) = match a_scales.map(|s| s.dims()) {
        Some([a_rows, a_cols]) => (if a_rows > 1 { a_cols as u32 } else { 0 }, (a_cols > 1) as u32),
        None => (0, 0),
    };
    ScaleStrides { chunk, a_row, a_chunk, w_col_div, w_row, w_chunk }
}

/// How a tensor-core launch covers its output: row tiles of 16 per warp, warps per cube
/// side by side along N (`byte_mma` cubes staging both operands hold two such rows of
/// warps), warps slicing each column block's K range (`int_mma` loading its activations
/// directly; otherwise 1), K splits, which operands stream through shared memory, and
/// whether the `mma` instruction runs or its emulation (runtimes without tensor cores,
/// for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmaTiling {
    pub m_tiles: u32,
    pub warps: u32,
    pub k_slices: u32,
    pub splits: u32,
    pub staging: Staging,
    pub tensor_cores: bool,
}

/// Which operands a tensor-core kernel streams through its shared-memory copy ring, and
/// how many K blocks deep (`cp.async` on CUDA: the copy of block `kb + stages − 1` is in
/// flight while block `kb` is multiplied). A depth below 2 counts as 2, since one slot
/// could not be refilled while it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Staging {
    /// Every lane loads its fragments straight from global memory, one K block at a time.
    Direct,
    /// The weights go through the ring and the activations load directly: decode shapes,
    /// whose cost is the weight stream, so what matters is how many blocks of it each
    /// warp keeps in flight.
    Weights { stages: u32 },
    /// Both operands go through the ring, so the rows and columns the warps of a cube
    /// share are fetched from global memory once per cube.
    Operands { stages: u32 },
}

impl Staging {
    /// The K blocks the copy ring holds: 0 for direct loads, otherwise at least 2.
    pub fn ring_stages(&self) -> u32 {
        match *self {
            Staging::Direct => 0,
            Staging::Weights { stages } | Staging::Operands { stages } => stages.max(2),
        }
    }

    /// Whether the activations go through the ring (the weights do whenever anything does).
    pub fn stages_activations(&self) -> bool {
        matches!(self, Staging::Operands { .. })
    }
}

impl MmaTiling {
    /// `byte_mma`'s warp tiling: 16 columns per warp in one row of warps when the
    /// activations load directly; when they are staged, two rows of warps of 32 columns
    /// each, so each staged byte feeds more products.
    fn byte_warp_tiling(&self) -> byte_mma::WarpTiling {
        let staged_activations = self.staging.stages_activations();
        let (n_subtiles, warps_m) = if staged_activations { (4, 2) } else { (2, 1) };
        byte_mma::WarpTiling { m_tiles: self.m_tiles, n_subtiles, warps_m, warps_n: self.warps, stages: self.staging.ring_stages(), staged_activations }
    }
}

/// `x · Wᵀ` for a `W8A8` int8 weight on tensor cores (or their emulation): activations
/// quantized per token (or with their static scale), then the int8 `mma` GEMM. A K that
/// is not a multiple of 64 runs the portable kernel instead ([`select::w8a8_gemm`] never
/// picks this one for it).
pub fn w8a8_mma_gemm(weight: &W8A8Weight, x: Tensor<2>, tiling: MmaTiling) -> Tensor<2> {
    if !weight.in_features.is_multiple_of(byte_mma::K_BLOCK as usize) {
        return w8a8_gemm(weight, x, select::MAX_TILE_M);
    }
    let out_dtype = x.dtype();
    let Some(a) = ByteActivations::new(x.clone(), &weight.activations, ActivationGrid::Int8, tiling) else {
        // Weight-only W8A8 has no integer GEMM to run; the selector never sends it here.
        return weight.forward_reference(x);
    };
    let per_token = a.scales().dims()[0] > 1;
    let strides = ScaleStrides { chunk: weight.in_features as u32, a_row: per_token as u32, a_chunk: 0, w_col_div: 1, w_row: 1, w_chunk: 0 };
    byte_mma(a, &weight.codes, &weight.scales, strides, false, tiling, out_dtype)
}

/// `x · Wᵀ` for an `Fp8` weight with e4m3 activations on tensor cores (or their
/// emulation). K and any scale block or activation group must be multiples of 64, or the
/// portable kernel runs instead ([`select::fp8_gemm`] never picks this one for them).
pub fn fp8_mma_gemm(weight: &Fp8Weight, x: Tensor<2>, tiling: MmaTiling) -> Tensor<2> {
    let whole_blocks = |columns: usize| columns.is_multiple_of(byte_mma::K_BLOCK as usize);
    if !whole_blocks(weight.in_features) || !select::fp8_scale_chunk(weight).is_none_or(whole_blocks) {
        return fp8_gemm(weight, x, select::MAX_TILE_M);
    }
    let out_dtype = x.dtype();
    let Some(a) = ByteActivations::new(x.clone(), &weight.activations, ActivationGrid::E4M3, tiling) else {
        // Weight-only FP8 has float activations; the selector never sends it here.
        return weight.forward_reference(x);
    };
    let strides = fp8_scale_strides(weight, Some(a.scales()));
    byte_mma(a, &weight.codes, &weight.scales, strides, true, tiling, out_dtype)
}

/// The 8-bit tensor-core GEMM of activations `a` and weight codes, partial products
/// summed when K is split.
fn byte_mma(a: ByteActivations, w_codes: &Tensor<2, Int>, w_scales: &Tensor<2>, scales: ScaleStrides, fp8: bool, tiling: MmaTiling, out_dtype: DType) -> Tensor<2> {
    assert_eq!(tiling.k_slices, 1, "byte_mma gives each column block one warp (k_slices 1)");
    let [n, k_words] = w_codes.dims();
    let m = a.rows();
    let k_blocks = (k_words * 4 / byte_mma::K_BLOCK as usize).max(1) as u32;
    let layout = ByteMmaLayout {
        fp8,
        tiling: tiling.byte_warp_tiling(),
        splits: tiling.splits.clamp(1, k_blocks),
        tensor_cores: tiling.tensor_cores,
        scales,
        out_dtype,
    };
    let (w_codes, w_scales) = (w_codes.clone().into_dispatch(), w_scales.clone().into_dispatch());
    let output: Tensor<2> = Tensor::from_dispatch(match a {
        ByteActivations::Codes(a) => <Dispatch as KernelOps>::byte_mma_gemm(a.codes.into_dispatch(), a.scales.into_dispatch(), w_codes, w_scales, layout),
        ByteActivations::Float { x, scale } => <Dispatch as KernelOps>::byte_mma_gemm_quantizing(x.into_dispatch(), scale.into_dispatch(), w_codes, w_scales, layout),
    });
    join_splits(output, layout.splits, m, n, out_dtype)
}

/// A portable CubeCL kernel on a Cube device (panics on Flex, which the selector never
/// sends here).
pub fn int_weight_gemm(weight: &PackedIntWeight, x: Tensor<2>, tiling: IntGemmTiling) -> Tensor<2> {
    let x = weight.ordered_input(x);
    let zeros = zero_buffer(&weight.zeros);
    // The kernel's contiguous path takes one group per packed word.
    let per_word = crate::packing::per_word(weight.bits);
    let groups = match weight.groups_contiguous && weight.group_size.is_multiple_of(per_word) {
        true => GroupBuffer::Contiguous,
        false => GroupBuffer::Indexed(weight.group_index.clone().into_dispatch()),
    };
    let layout = IntGemmLayout { bits: weight.bits, group_size: weight.group_size as u32, tiling };
    Tensor::from_dispatch(<Dispatch as KernelOps>::int_weight_gemm(
        x.into_dispatch(),
        weight.packed.clone().into_dispatch(),
        weight.scales.clone().into_dispatch(),
        zeros,
        groups,
        layout,
    ))
}

/// `x · W` through the tensor-core W4A16 / W8A16 kernel (or, with `tiling.tensor_cores`
/// off, its emulation) on a Cube device, for f16 / bf16 activations in `weight`'s stored row order.
/// With K split, the f32 partial products of the splits are summed here.
pub fn int_mma_gemm(weight: &IntFragments, x: Tensor<2>, tiling: MmaTiling) -> Tensor<2> {
    let [m, _] = x.dims();
    let n = weight.out_features;
    let dtype = x.dtype();
    let layout = int_mma_layout(weight, &x, tiling);
    let output: Tensor<2> = Tensor::from_dispatch(<Dispatch as KernelOps>::int_mma_gemm(
        x.into_dispatch(),
        weight.words.clone().into_dispatch(),
        weight.scales.clone().into_dispatch(),
        zero_buffer(&weight.zeros),
        layout,
    ));
    join_splits(output, layout.splits, m, n, dtype)
}

/// One grouped launch of the tensor-core W4A16 / W8A16 kernel (or its emulation) for a
/// mixture-of-experts projection: `x` holds `rows_per_expert[e]` rows for each expert `e`,
/// in expert order, and `stack` the experts' fragments ([`IntFragments::repack_stack`]).
pub fn grouped_int_mma_gemm(stack: &IntFragments, x: Tensor<2>, rows_per_expert: &[usize], tiling: MmaTiling) -> Tensor<2> {
    let [m, _] = x.dims();
    let n = stack.out_features;
    let dtype = x.dtype();
    let layout = int_mma_layout(stack, &x, tiling);
    let tiles = tile_map(rows_per_expert, (int_mma::M_TILE * tiling.m_tiles) as usize, &x.device());
    let output: Tensor<2> = Tensor::from_dispatch(<Dispatch as KernelOps>::grouped_int_mma_gemm(
        x.into_dispatch(),
        stack.words.clone().into_dispatch(),
        stack.scales.clone().into_dispatch(),
        zero_buffer(&stack.zeros),
        tiles.into_dispatch(),
        layout,
    ));
    join_splits(output, layout.splits, m, n, dtype)
}

fn int_mma_layout(weight: &IntFragments, x: &Tensor<2>, tiling: MmaTiling) -> IntMmaLayout {
    let wgpu = matches!(x.device().as_dispatch(), DispatchDevice::Cube(cubecl::Device::Wgpu(_)));
    // The magic-number dequantization, except on wgpu and where bf16 cannot hold `128 + q`.
    let bf16_bytes = weight.bits == 8 && x.dtype() == DType::BF16;
    let bit_dequant = !(wgpu || bf16_bytes);
    let group_size = if weight.group_size >= weight.in_features { 0 } else { weight.group_size as u32 };
    let splits = tiling.splits.clamp(1, (weight.in_features as u32 / int_mma::K_BLOCK).max(1));
    let MmaTiling { m_tiles, warps, k_slices, staging, tensor_cores, .. } = tiling;
    IntMmaLayout { bits: weight.bits, e4m3: weight.e4m3, group_size, m_tiles, warps, k_slices, splits, staging, tensor_cores, bit_dequant, dtype: x.dtype() }
}

/// A tensor-core launch's `[m, n]` result in `dtype`: its output itself with one K split,
/// otherwise its `[splits · m, n]` f32 partial products summed over the splits.
fn join_splits(output: Tensor<2>, splits: u32, m: usize, n: usize, dtype: DType) -> Tensor<2> {
    match splits {
        1 => output,
        _ => output.reshape([splits as usize, m, n]).sum_dim(0).reshape([m, n]).cast(dtype),
    }
}

/// The grouped kernels' tile map: for each expert's rows in `tile_rows` chunks, the
/// expert, the first row and the end row (u32 triples).
fn tile_map(rows_per_expert: &[usize], tile_rows: usize, device: &burn::tensor::Device) -> Tensor<1, Int> {
    let mut tiles = Vec::new();
    let mut start = 0usize;
    for (expert, &rows) in rows_per_expert.iter().enumerate() {
        let end = start + rows;
        for first in (start..end).step_by(tile_rows) {
            tiles.extend([expert, first, (first + tile_rows).min(end)].map(|v| v as i32));
        }
        start = end;
    }
    let len = tiles.len();
    int_tensor(tiles, [len], device)
}

/// A mixture-of-experts projection through `kernel` (chosen by
/// [`select::grouped_int_gemm`]): `x` holds `rows_per_expert[e]` rows for each expert `e`,
/// in expert order; `fragments` holds the stack's tensor-core copy once one is made.
pub fn grouped_int_forward(stack: &ExpertStack, fragments: &FragmentCache, x: Tensor<2>, rows_per_expert: &[usize], kernel: IntGemmKernel) -> Tensor<2> {
    match kernel {
        IntGemmKernel::Reference => stack.forward_reference(x, rows_per_expert),
        IntGemmKernel::Host => host::grouped_int_weight_gemm(stack, x.clone(), rows_per_expert).unwrap_or_else(|| stack.forward_reference(x, rows_per_expert)),
        IntGemmKernel::Cube(tiling) => grouped_int_weight_gemm(stack, x, rows_per_expert, tiling),
        IntGemmKernel::TensorCores(tiling) => match fragments.get_or_init(|| IntFragments::repack_stack(stack).ok()) {
            Some(fragments) => grouped_int_mma_gemm(fragments, x, rows_per_expert, tiling),
            None => grouped_int_weight_gemm(stack, x, rows_per_expert, IntGemmTiling::Registers { tile_m: select::MAX_TILE_M }),
        },
    }
}

/// One grouped launch for a mixture-of-experts projection: `x` holds `rows_per_expert[e]`
/// rows for each expert `e`, in expert order; returns `[rows, N]` in the same order.
pub fn grouped_int_weight_gemm(stack: &ExpertStack, x: Tensor<2>, rows_per_expert: &[usize], tiling: IntGemmTiling) -> Tensor<2> {
    let tiles = tile_map(rows_per_expert, tiling.rows_per_tile() as usize, &x.device());
    let layout = IntGemmLayout { bits: stack.bits, group_size: stack.group_size as u32, tiling };
    Tensor::from_dispatch(<Dispatch as KernelOps>::grouped_int_weight_gemm(
        x.into_dispatch(),
        stack.packed.clone().into_dispatch(),
        stack.scales.clone().into_dispatch(),
        zero_buffer(&stack.zeros),
        tiles.into_dispatch(),
        layout,
    ))
}

fn zero_buffer(zeros: &ZeroPoints) -> ZeroBuffer<Dispatch> {
    match zeros {
        ZeroPoints::Midpoint => ZeroBuffer::Midpoint,
        ZeroPoints::Integer(z) => ZeroBuffer::Integer(z.clone().into_dispatch()),
        ZeroPoints::Float(o) => ZeroBuffer::Float(o.clone().into_dispatch()),
    }
}

/// Decode attention on the paged pools through the CubeCL kernel (a Cube device; see
/// [`paged_attention`]). `q` is `[batch, heads, head_dim]`, the pools `[blocks, kv_heads,
/// block_size, head_dim]`.
pub fn paged_decode_attention(
    q: Tensor<3>,
    key_pool: Tensor<4>,
    value_pool: Tensor<4>,
    block_tables: Tensor<2, burn::tensor::Int>,
    context_lens: Tensor<1, burn::tensor::Int>,
    layout: PagedAttentionLayout,
) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as KernelOps>::paged_decode_attention(
        q.into_dispatch(),
        key_pool.into_dispatch(),
        value_pool.into_dispatch(),
        block_tables.into_dispatch(),
        context_lens.into_dispatch(),
        layout,
    ))
}
