//! Kernels for the Flex device. Its tensors live in host memory, so these read the
//! quantized buffers in place as Rust slices and run on rayon's threads, where the
//! Burn-ops reference would dequantize the whole weight on every call. They are reached
//! directly rather than through [`super::KernelOps`], whose implementations must cover
//! every op, tensor-core ones included.
//!
//! Each product takes one of two paths by its rows ([`HostPath`]): below a threshold
//! ([`float_tiled_rows`], [`int_tiled_rows`], [`w8a8_tiled_rows`], [`fp8_tiled_rows`]) the fused kernels ([`int_gemm`], [`byte_gemm`]) decode each weight in registers and
//! write nothing but the output; from there `tiles` decodes the weight a cache-sized
//! tile at a time and multiplies each tile by every row with the `gemm` crate.
//!
//! [`attention`] runs a batched step's attention straight from the paged KV pools;
//! [`swiglu`], [`norm`] and [`rope`] take the element-wise and row-wise steps between the
//! products in one pass each.

pub mod attention;
pub mod byte_gemm;
pub mod half_gemm;
pub mod int_gemm;
pub mod norm;
pub mod rope;
pub mod swiglu;
mod byte_tiles;
mod floats;
#[cfg(target_arch = "x86_64")]
mod byte_rows;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod int8_rows;
#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod sliced;
mod paths;
mod tiles;

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_dispatch::{BackendTensor, DispatchTensorKind};
use rayon::prelude::*;

use crate::repr::{ActivationGrid, ActivationQuant, ExpertStack, Fp8Weight, PackedIntWeight, W8A8Weight, ZeroPoints};
use byte_gemm::{ByteValues, ByteWeightSlices, RowScales, WeightScales};
pub use paths::{amx_rows, byte_tiled_rows, float_tiled_rows, fp8_tiled_rows, half_tiled_rows, int_tiled_rows, w8a8_tiled_rows, HostPath, TileProducts, INT_TILED_ROWS};
use paths::{fp8_on_tiles, int_on_tiles, left_operand_on_tiles};
use half_gemm::{HalfFormat, HalfWeightSlices};
use int_gemm::{Centring, Grouping, IntWeightSlices};
use tiles::{ByteTiles, Summation};

/// A tensor's contiguous values on the Flex device (copied only when it is a strided view).
struct HostBuffer(burn_flex::FlexTensor);

impl HostBuffer {
    /// `None` when the tensor is not on the Flex device.
    fn of<const D: usize, K: burn::tensor::kind::Basic>(tensor: &Tensor<D, K>) -> Option<Self> {
        let flex = match tensor.clone().into_dispatch().kind {
            DispatchTensorKind::Flex(BackendTensor::Float(t) | BackendTensor::Int(t)) => t,
            _ => return None,
        };
        Some(Self(if flex.is_contiguous() { flex } else { flex.to_contiguous() }))
    }

    /// The values, if they are i32.
    fn i32s(&self) -> Option<&[i32]> {
        self.0.as_slice::<i32>()
    }

    /// The values, if they are f32.
    fn f32s(&self) -> Option<&[f32]> {
        self.0.as_slice::<f32>()
    }
}

/// A weight's buffers on the host, borrowed by [`IntWeightSlices`].
struct IntWeightBuffers {
    bits: u32,
    k: usize,
    n: usize,
    words: HostBuffer,
    scales: HostBuffer,
    zeros: Option<HostBuffer>,
    float_zeros: bool,
    group_index: Option<HostBuffer>,
    group_size: usize,
}

impl IntWeightBuffers {
    fn of_weight(weight: &PackedIntWeight) -> Option<Self> {
        let group_index = match weight.groups_contiguous {
            true => None,
            false => Some(HostBuffer::of(&weight.group_index)?),
        };
        let (zeros, float_zeros) = zero_buffer(&weight.zeros)?;
        let (bits, k, n, group_size) = (weight.bits, weight.in_features, weight.out_features, weight.group_size);
        Some(Self { bits, k, n, words: HostBuffer::of(&weight.packed)?, scales: HostBuffer::of(&weight.scales)?, zeros, float_zeros, group_index, group_size })
    }

    /// A stack's buffers; its experts' groups are contiguous.
    fn of_stack(stack: &ExpertStack) -> Option<Self> {
        let (zeros, float_zeros) = zero_buffer(&stack.zeros)?;
        let (bits, k, n, group_size) = (stack.bits, stack.in_features, stack.out_features, stack.group_size);
        Some(Self { bits, k, n, words: HostBuffer::of(&stack.packed)?, scales: HostBuffer::of(&stack.scales)?, zeros, float_zeros, group_index: None, group_size })
    }

    /// The slices of expert `expert` (of a stack whose experts are `k` rows each; 0 for a
    /// single weight), or `None` if a buffer has another dtype than the kernel reads.
    fn slices(&self, expert: usize) -> Option<IntWeightSlices<'_>> {
        let word_rows = self.k * self.bits as usize / 32;
        let groups = self.k.div_ceil(self.group_size.max(1));
        let expert_part = |rows_per_expert: usize| expert * rows_per_expert * self.n..(expert + 1) * rows_per_expert * self.n;
        let centring = match (&self.zeros, self.float_zeros) {
            (None, _) => Centring::Midpoint,
            (Some(z), false) => Centring::Integer(z.i32s()?.get(expert_part(groups))?),
            (Some(z), true) => Centring::Float(z.f32s()?.get(expert_part(groups))?),
        };
        let grouping = match &self.group_index {
            Some(index) => Grouping::Indexed(index.i32s()?),
            None => Grouping::Contiguous(self.group_size),
        };
        Some(IntWeightSlices {
            bits: self.bits,
            k: self.k,
            n: self.n,
            words: self.words.i32s()?.get(expert_part(word_rows))?,
            scales: self.scales.f32s()?.get(expert_part(groups))?,
            centring,
            grouping,
        })
    }
}

/// Lanes of [`dot`]'s running sums: enough that the compiler keeps them in vector registers.
const DOT_LANES: usize = 16;

/// `a · b` in [`DOT_LANES`] independent running sums, which the compiler vectorizes (a
/// single running sum would have to stay in order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a_chunks, a_rest) = a.as_chunks::<DOT_LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<DOT_LANES>();
    let mut sums = [0f32; DOT_LANES];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for lane in 0..DOT_LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + rest
}

/// Whether this CPU has AVX2 with FMA and F16C (x86-64-v3's vector set), for which the
/// kernels' inner loops are compiled a second time (x86-64's baseline is SSE2: four f32
/// lanes, no byte-widening instructions).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    use std::arch::is_x86_feature_detected;
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Whether the W8A8 kernel's AVX-512 build may run: [`vector_isa`] allows AVX-512 and
/// the CPU has VNNI's byte dot product.
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    vector_isa() >= VectorIsa::Avx512 && cpu_has_vnni()
}

/// Whether the CPU has AVX-512's set with VNNI, whatever the cap.
#[cfg(target_arch = "x86_64")]
fn cpu_has_vnni() -> bool {
    detected_isa() >= VectorIsa::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// The instruction sets a host kernel may be compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VectorIsa {
    /// x86-64's baseline (SSE2), or another architecture.
    Baseline,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 F, BW, DQ and VL (x86-64-v4's set; sixteen f32 lanes) beside AVX2's:
    /// the integer kernel's loops, which the compiler vectorizes, and the 8-bit and
    /// 16-bit float register kernels run twice as wide; W8A8 takes its VNNI kernel where
    /// the CPU has VNNI too.
    Avx512,
    /// AVX-512 with AMX's tile unit and its int8 and bf16 products (x86 server cores
    /// since Sapphire Rapids), which W8A8 products with int8 activations, FP8 products
    /// with e4m3 activations and packed integer products (Int4 / Int8 weight-only, their
    /// float activations split exactly into bf16 terms) run on from [`amx_rows`] rows.
    Amx,
}

impl VectorIsa {
    /// The name [`VECTOR_ISA_ENV`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Amx => "amx",
        }
    }
}

/// The environment variable that caps the vector set from the start (`baseline`, `avx2`,
/// `avx512` or `amx`), as [`limit_vector_isa`] does later.
pub const VECTOR_ISA_ENV: &str = "EMBER_VECTOR_ISA";

/// The widest set [`vector_isa`] may return, as a `VectorIsa` discriminant, or
/// [`LIMIT_UNREAD`] until [`VECTOR_ISA_ENV`] has been read.
static VECTOR_ISA_LIMIT: AtomicU8 = AtomicU8::new(LIMIT_UNREAD);
const LIMIT_UNREAD: u8 = u8::MAX;

/// The widest vector set this CPU has, within the limit of [`limit_vector_isa`].
pub fn vector_isa() -> VectorIsa {
    let mut limit = VECTOR_ISA_LIMIT.load(Ordering::Relaxed);
    if limit == LIMIT_UNREAD {
        limit = limit_from_env() as u8;
        // A limit set meanwhile wins.
        limit = match VECTOR_ISA_LIMIT.compare_exchange(LIMIT_UNREAD, limit, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => limit,
            Err(set) => set,
        };
    }
    let widest = detected_isa();
    [VectorIsa::Amx, VectorIsa::Avx512, VectorIsa::Avx2].into_iter().find(|&isa| isa <= widest && isa as u8 <= limit).unwrap_or(VectorIsa::Baseline)
}

/// The cap [`VECTOR_ISA_ENV`] names, or none (an unknown name is logged and ignored).
fn limit_from_env() -> VectorIsa {
    let name = std::env::var(VECTOR_ISA_ENV).unwrap_or_default();
    if name.trim().is_empty() {
        return VectorIsa::Amx;
    }
    let known = [VectorIsa::Baseline, VectorIsa::Avx2, VectorIsa::Avx512, VectorIsa::Amx];
    known.into_iter().find(|isa| isa.name().eq_ignore_ascii_case(name.trim())).unwrap_or_else(|| {
        tracing::warn!("{VECTOR_ISA_ENV}={name:?} is not one of baseline, avx2, avx512, amx; using the widest the CPU has");
        VectorIsa::Amx
    })
}

/// Caps the vector set the host kernels use from now on, process-wide (to compare them,
/// or to keep a CPU that slows its clock for AVX-512 on AVX2); results agree up to
/// summation order.
pub fn limit_vector_isa(limit: VectorIsa) {
    VECTOR_ISA_LIMIT.store(limit as u8, Ordering::Relaxed);
}

/// Where the CPU has AVX-512 but not AMX, runs the tile kernels' instructions in
/// software from now on, process-wide, so that [`VectorIsa::Amx`] becomes the widest set
/// and those kernels can be checked ([`limit_vector_isa`] still caps it); thousands of
/// times slower than the unit. Returns whether the tile unit, real or emulated, is there.
pub fn emulate_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    if detected_isa() == VectorIsa::Avx512 {
        amx::emulated::enable();
    }
    detected_isa() == VectorIsa::Amx
}

fn detected_isa() -> VectorIsa {
    #[cfg(target_arch = "x86_64")]
    {
        if !avx2() {
            return VectorIsa::Baseline;
        }
        use std::arch::is_x86_feature_detected;
        let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512dq") && is_x86_feature_detected!("avx512vl");
        match (avx512, avx512 && amx::available()) {
            (true, true) => VectorIsa::Amx,
            (true, false) => VectorIsa::Avx512,
            (false, _) => VectorIsa::Avx2,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    VectorIsa::Baseline
}

/// The sum of a vector's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
}

/// The zero-point buffer, and whether it holds float offsets.
fn zero_buffer(zeros: &ZeroPoints) -> Option<(Option<HostBuffer>, bool)> {
    Some(match zeros {
        ZeroPoints::Midpoint => (None, false),
        ZeroPoints::Integer(z) => (Some(HostBuffer::of(z)?), false),
        ZeroPoints::Float(z) => (Some(HostBuffer::of(z)?), true),
    })
}

/// `[m, n]` f32, row-major, computed by `block` for blocks of `width` output columns in
/// parallel: `block(cols, out)` fills `out`, `[m, cols.len()]`. The blocks are written into
/// one buffer allocated here, so the worker threads allocate nothing (their allocator
/// arenas would otherwise keep the slack).
fn by_column_blocks(m: usize, n: usize, width: usize, block: impl Fn(Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let mut staged = vec![0f32; m * n.div_ceil(width) * width];
    staged.par_chunks_mut(m * width).enumerate().for_each(|(index, out)| {
        let cols = index * width..((index + 1) * width).min(n);
        block(cols.clone(), &mut out[..m * cols.len()]);
    });
    if m == 1 {
        staged.truncate(n);
        return staged;
    }
    // Rows in parallel, each gathering its columns from every block: a prefill's output
    // (117 MB at 2048 rows of 14336 columns) took a third as long as its products to
    // copy on one thread.
    let mut values = vec![0f32; m * n];
    values.par_chunks_mut(n * ASSEMBLED_ROWS).enumerate().for_each(|(chunk, rows)| {
        for (offset, row) in rows.chunks_mut(n).enumerate() {
            let r = chunk * ASSEMBLED_ROWS + offset;
            for (index, block_out) in staged.chunks(m * width).enumerate() {
                let cols = index * width..((index + 1) * width).min(n);
                row[cols.clone()].copy_from_slice(&block_out[r * cols.len()..][..cols.len()]);
            }
        }
    });
    values
}

/// Output rows per task of [`by_column_blocks`]' assembly.
const ASSEMBLED_ROWS: usize = 16;

/// Asks the CPU to bring `values` into its caches, while the current run is computed.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn prefetch<E>(values: &[E]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(values);
        let start = values.as_ptr().cast::<i8>();
        for offset in (0..bytes).step_by(64) {
            // SAFETY: prefetching never faults, and the address lies within `values`.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.add(offset)) };
        }
    }
}

/// Asks the CPU for the cache line holding `ahead[index]` when that element starts one,
/// and if `ahead` has it. Kernels that stream one channel after another call this at each
/// step with `ahead` the next channel, so its first lines are on their way when the
/// current one ends: the stream prefetchers stop at page boundaries, and a channel of
/// a few KiB is only a page or two.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn prefetch_line<E>(ahead: &[E], index: usize) {
    #[cfg(target_arch = "x86_64")]
    if (index * std::mem::size_of::<E>()).is_multiple_of(64) && index < ahead.len() {
        // SAFETY: prefetching never faults, and the address lies within `ahead`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ahead.as_ptr().add(index).cast()) };
    }
}

/// Channel `n + 1` of a `[N, k]` weight's `values` if it is in the task's `channels`, or
/// nothing: what [`prefetch_line`] asks for while channel `n` is read.
#[inline(always)]
pub(super) fn next_channel<'a, T>(values: &'a [T], k: usize, n: usize, channels: &Range<usize>) -> &'a [T] {
    match n + 1 < channels.end {
        true => values.get((n + 1) * k..(n + 2) * k).unwrap_or(&[]),
        false => &[],
    }
}

/// `dst (+)= lhs · rhs` for `[m, k] · [k, n]` f32 operands through the `gemm` crate, on
/// the calling thread: `dst` and `lhs` row-major with row strides `dst_row` and
/// `lhs_row`, `rhs`'s element `(i, j)` at `i * rhs_row + j * rhs_column`.
///
/// # Safety
/// Every element those strides address for the `m × k`, `k × n` and `m × n` shapes must
/// lie inside the respective slice, starting from its first element.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(m: usize, n: usize, k: usize, dst: &mut [f32], dst_row: usize, accumulate: bool, lhs: &[f32], lhs_row: usize, rhs: &[f32], rhs_row: usize, rhs_column: usize) {
    // SAFETY: the caller guarantees every addressed element is in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            lhs_row as isize,
            rhs.as_ptr(),
            rhs_column as isize,
            rhs_row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `x`'s values as f32, row-major: read in place when `x` holds f32 on the Flex device,
/// converted otherwise (copying out a prefill's activations took as long as the
/// product's own quantization of them).
fn f32_values(x: &Tensor<2>) -> Option<F32Values> {
    let on_host = HostBuffer::of(x).and_then(|buffer| match x.dtype() {
        DType::F32 => buffer.f32s().is_some().then_some(F32Values::InPlace(buffer)),
        DType::BF16 => buffer.0.as_slice::<half::bf16>().map(|values| F32Values::Converted(floats::widened(values))),
        DType::F16 => buffer.0.as_slice::<half::f16>().map(|values| F32Values::Converted(floats::widened(values))),
        _ => None,
    });
    on_host.or_else(|| x.clone().into_data().try_into_vec_as::<f32>().ok().map(F32Values::Converted))
}

/// Activations as [`f32_values`] finds them.
enum F32Values {
    InPlace(HostBuffer),
    Converted(Vec<f32>),
}

impl std::ops::Deref for F32Values {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            // Checked to hold f32 when made.
            Self::InPlace(buffer) => buffer.f32s().unwrap_or_default(),
            Self::Converted(values) => values,
        }
    }
}

/// `[m, n]` f32 values as a tensor in `like`'s dtype, on its device.
fn output(values: Vec<f32>, m: usize, n: usize, like: &Tensor<2>) -> Tensor<2> {
    let (device, dtype) = (like.device(), like.dtype());
    let data = match dtype {
        DType::BF16 => TensorData::new(floats::narrowed::<half::bf16>(&values), [m, n]),
        DType::F16 => TensorData::new(floats::narrowed::<half::f16>(&values), [m, n]),
        _ => return Tensor::<2>::from_data(TensorData::new(values, [m, n]), (&device, DType::F32)).cast(dtype),
    };
    Tensor::<2>::from_data(data, (&device, dtype))
}

/// `x · W` on the Flex device by the path suited to its rows, or `None` if `weight` or
/// `x` is not on it, a buffer has another dtype than i32 words with f32 scales (the
/// selector checks both), or `x` does not have K columns (the reference then reports the
/// mismatch).
pub fn int_weight_gemm(weight: &PackedIntWeight, x: Tensor<2>) -> Option<Tensor<2>> {
    let rows = x.dims()[0];
    let tiled_rows = int_tiled_rows(weight.bits, weight.in_features, weight.group_size, weight.groups_contiguous);
    int_weight_gemm_by(weight, x, HostPath::for_rows(rows, tiled_rows))
}

/// [`int_weight_gemm`] by `path`.
pub fn int_weight_gemm_by(weight: &PackedIntWeight, x: Tensor<2>, path: HostPath) -> Option<Tensor<2>> {
    let x = weight.ordered_input(x);
    let buffers = IntWeightBuffers::of_weight(weight)?;
    product(&buffers.slices(0)?, x, path)
}

/// `x · W` for one weight's slices (`None` if `x` does not have K columns).
fn product(weight: &IntWeightSlices, x: Tensor<2>, path: HostPath) -> Option<Tensor<2>> {
    let [m, k] = x.dims();
    if k != weight.k {
        return None;
    }
    let values = f32_values(&x)?;
    #[cfg(target_arch = "x86_64")]
    if let (HostPath::Fused, Grouping::Contiguous(group_size)) = (path, weight.grouping) {
        if m >= amx::packed::MIN_ROWS && int_on_tiles(weight.bits, k, group_size, true) {
            // SAFETY: `int_on_tiles` checked that `vector_isa` reports AMX, and the groups.
            let product = unsafe { amx::packed::gemm(weight, group_size, &values, m, amx::terms::terms(x.dtype())) };
            return Some(output(product, m, weight.n, &x));
        }
    }
    let product = match path {
        HostPath::Fused => int_gemm::int_gemm(weight, &values, m),
        HostPath::Tiled => tiles::tiled_gemm(weight, &values, m, Summation::Floats),
    };
    Some(output(product, m, weight.n, &x))
}

/// `x · W` for a float weight `[n, k]` (nn.Linear's layout) stored in f16 or bf16, with
/// the output in `x`'s dtype, by the path suited to `x`'s rows; `None` if the weight is
/// not on the Flex device, not f16 or bf16, or `x` does not have `k` columns.
pub fn half_weight_gemm(weight: &Tensor<2>, x: Tensor<2>) -> Option<Tensor<2>> {
    let rows = x.dims()[0];
    let tiled_rows = half_tiled_rows(weight.dims()[1]);
    half_weight_gemm_by(weight, x, HostPath::for_rows(rows, tiled_rows))
}

/// [`half_weight_gemm`] by `path`.
pub fn half_weight_gemm_by(weight: &Tensor<2>, x: Tensor<2>, path: HostPath) -> Option<Tensor<2>> {
    let ([m, k], [n, weight_k]) = (x.dims(), weight.dims());
    if k != weight_k {
        return None;
    }
    let buffer = HostBuffer::of(weight)?;
    let (values, format): (&[u16], HalfFormat) = match weight.dtype() {
        DType::F16 => (bytemuck::cast_slice(buffer.0.as_slice::<half::f16>()?), HalfFormat::F16),
        DType::BF16 => (bytemuck::cast_slice(buffer.0.as_slice::<half::bf16>()?), HalfFormat::BF16),
        _ => return None,
    };
    let slices = HalfWeightSlices { k, n, values, format };
    let activations = f32_values(&x)?;
    #[cfg(target_arch = "x86_64")]
    if path == HostPath::Fused && m >= amx::half::min_rows(format) && left_operand_on_tiles(k) {
        // SAFETY: `left_operand_on_tiles` checked that `vector_isa` reports AMX, and the layout.
        let product = unsafe { amx::half::gemm(&slices, &activations, m, amx::terms::terms(x.dtype())) };
        return Some(output(product, m, n, &x));
    }
    let product = match path {
        HostPath::Fused => half_gemm::half_gemm(&slices, &activations, m),
        HostPath::Tiled => tiles::tiled_gemm(&slices, &activations, m, Summation::Floats),
    };
    Some(output(product, m, n, &x))
}

/// A mixture-of-experts projection on the Flex device: `x` holds `rows_per_expert[e]`
/// rows for each expert `e`, in expert order; each expert's rows take the path suited to
/// their count. `None` as for [`int_weight_gemm`].
pub fn grouped_int_weight_gemm(stack: &ExpertStack, x: Tensor<2>, rows_per_expert: &[usize]) -> Option<Tensor<2>> {
    let [m, _] = x.dims();
    let n = stack.out_features;
    let buffers = IntWeightBuffers::of_stack(stack)?;
    let tiled_rows = int_tiled_rows(stack.bits, stack.in_features, stack.group_size, true);
    let mut outputs = Vec::new();
    let mut first = 0;
    for (expert, &rows) in rows_per_expert.iter().enumerate().filter(|(_, &rows)| rows > 0) {
        let expert_x = x.clone().narrow(0, first, rows);
        outputs.push(product(&buffers.slices(expert)?, expert_x, HostPath::for_rows(rows, tiled_rows))?);
        first += rows;
    }
    match (first == m, outputs.is_empty()) {
        (false, _) => None,
        (true, true) => Some(Tensor::zeros([0, n], (&x.device(), x.dtype()))),
        (true, false) => Some(Tensor::cat(outputs, 0)),
    }
}

/// An 8-bit weight's buffers on the host.
struct ByteWeightBuffers {
    k: usize,
    n: usize,
    words: HostBuffer,
    scales: HostBuffer,
    scale_layout: WeightScales,
}

impl ByteWeightBuffers {
    /// The buffers of a `[n, k]` weight, or `None` if they are not on the Flex device or
    /// the activations `x` do not have `k` columns.
    fn new(codes: &Tensor<2, Int>, scales: &Tensor<2>, [n, k]: [usize; 2], scale_layout: WeightScales, x: &Tensor<2>) -> Option<Self> {
        if x.dims()[1] != k {
            return None;
        }
        Some(Self { k, n, words: HostBuffer::of(codes)?, scales: HostBuffer::of(scales)?, scale_layout })
    }

    /// `None` unless the buffers hold `[n, k]` bytes and as many scales as their layout reads.
    fn slices(&self) -> Option<ByteWeightSlices<'_>> {
        let words = self.words.i32s()?;
        // Bytes in memory order are K order: byte j of word w is column 4w + j.
        let bytes: &[u8] = words_as_bytes(words);
        let scales = self.scales.f32s()?;
        let expected_scales = match self.scale_layout {
            WeightScales::PerTensor => 1,
            WeightScales::PerChannel => self.n,
            WeightScales::Block { bn, bk } => self.n.div_ceil(bn.max(1)) * self.k.div_ceil(bk.max(1)),
        };
        (bytes.len() == self.n * self.k && scales.len() == expected_scales).then_some(ByteWeightSlices { k: self.k, n: self.n, bytes, scales, scale_layout: self.scale_layout })
    }
}

/// The bytes of little-endian words, in memory order.
fn words_as_bytes(words: &[i32]) -> &[u8] {
    #[cfg(target_endian = "big")]
    compile_error!("the host kernels read packed words as little-endian bytes");
    // SAFETY: any initialized i32 memory is valid as u8, with alignment 1 and four times the length.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

/// How `mode` scales activations, reading a static scale back from the device.
fn row_scales(mode: &ActivationQuant) -> Option<Option<RowScales>> {
    Some(match mode {
        ActivationQuant::None => None,
        ActivationQuant::DynamicPerToken => Some(RowScales::PerRow),
        ActivationQuant::DynamicPerTensor => Some(RowScales::PerTensor),
        &ActivationQuant::DynamicPerGroup(group) => Some(RowScales::PerGroup(group)),
        ActivationQuant::Static(scale) => Some(RowScales::Static(*scale.clone().into_data().try_into_vec_as::<f32>().ok()?.first()?)),
    })
}

/// Activations for a float-activation product: `x` itself, or rounded onto `grid` and
/// scaled back.
fn float_activations(x: &Tensor<2>, mode: &ActivationQuant, grid: ActivationGrid) -> Option<F32Values> {
    let [m, k] = x.dims();
    let values = f32_values(x)?;
    Some(match row_scales(mode)? {
        None => values,
        Some(scales) => F32Values::Converted(byte_gemm::quantize(&values, m, k, scales, grid).dequantize()),
    })
}

/// `x · Wᵀ` for an FP8 weight on the Flex device, or `None` if a buffer is not on it or
/// has another dtype than i32 words with f32 scales (the selector checks both), or `x`
/// does not have K columns (the reference then reports the mismatch).
pub fn fp8_gemm(weight: &Fp8Weight, x: Tensor<2>) -> Option<Tensor<2>> {
    let rows = x.dims()[0];
    fp8_gemm_by(weight, x, HostPath::for_rows(rows, fp8_tiled_rows(weight)))
}

/// [`fp8_gemm`] by `path`.
pub fn fp8_gemm_by(weight: &Fp8Weight, x: Tensor<2>, path: HostPath) -> Option<Tensor<2>> {
    let ([m, _], n) = (x.dims(), weight.out_features);
    let scale_layout = match weight.block {
        Some([bn, bk]) => WeightScales::Block { bn, bk },
        None if weight.scales.dims()[0] > 1 => WeightScales::PerChannel,
        None => WeightScales::PerTensor,
    };
    let buffers = ByteWeightBuffers::new(&weight.codes, &weight.scales, [n, weight.in_features], scale_layout, &x)?;
    let slices = buffers.slices()?;
    #[cfg(target_arch = "x86_64")]
    if path == HostPath::Fused && m >= amx::byte_weights::MIN_ROWS && fp8_on_tiles(weight) {
        let (values, terms) = (f32_values(&x)?, amx::terms::terms(x.dtype()));
        // SAFETY (both): `fp8_on_tiles` checked that `vector_isa` reports AMX, the scale
        // chunks, and K for float activations.
        let product = match row_scales(&weight.activations)? {
            Some(scales) => unsafe { byte_gemm::e4m3_codes_gemm(&slices, &byte_gemm::quantize(&values, m, weight.in_features, scales, ActivationGrid::E4M3), m) },
            None => unsafe { amx::byte_weights::float_gemm(&slices, amx::byte_weights::WeightBytes::E4m3, &values, m, terms) },
        };
        return Some(output(product, m, n, &x));
    }
    let activations = float_activations(&x, &weight.activations, ActivationGrid::E4M3)?;
    let product = match path {
        HostPath::Fused => byte_gemm::e4m3_gemm(&slices, &activations, m),
        HostPath::Tiled => tiles::tiled_gemm(&ByteTiles { weight: &slices, values: ByteValues::E4m3 }, &activations, m, Summation::Floats),
    };
    Some(output(product, m, n, &x))
}

/// `x · Wᵀ` for a W8A8 int8 weight on the Flex device: activations quantized to int8 per
/// row or tensor (or kept float), `None` as for [`fp8_gemm`] and for per-group scales.
pub fn w8a8_gemm(weight: &W8A8Weight, x: Tensor<2>) -> Option<Tensor<2>> {
    let rows = x.dims()[0];
    w8a8_gemm_by(weight, x, HostPath::for_rows(rows, w8a8_tiled_rows(weight)))
}

/// [`w8a8_gemm`] by `path`.
pub fn w8a8_gemm_by(weight: &W8A8Weight, x: Tensor<2>, path: HostPath) -> Option<Tensor<2>> {
    let ([m, k], n) = (x.dims(), weight.out_features);
    let buffers = ByteWeightBuffers::new(&weight.codes, &weight.scales, [n, weight.in_features], WeightScales::PerChannel, &x)?;
    let slices = buffers.slices()?;
    let values = f32_values(&x)?;
    let product = match (row_scales(&weight.activations)?, path) {
        (Some(RowScales::PerGroup(_)), _) => return None,
        #[cfg(target_arch = "x86_64")]
        (None, HostPath::Fused) if left_operand_on_tiles(k) && m >= amx::byte_weights::MIN_ROWS => {
            let (bytes, terms) = (amx::byte_weights::WeightBytes::Int8, amx::terms::terms(x.dtype()));
            // SAFETY: `left_operand_on_tiles` checked that `vector_isa` reports AMX, and K;
            // the channel scales span K.
            unsafe { amx::byte_weights::float_gemm(&slices, bytes, &values, m, terms) }
        }
        (None, HostPath::Fused) => byte_gemm::int8_weight_only_gemm(&slices, &values, m),
        (None, HostPath::Tiled) => tiles::tiled_gemm(&ByteTiles { weight: &slices, values: ByteValues::Int8 }, &values, m, Summation::Floats),
        (Some(scales), path) => {
            let codes = byte_gemm::quantize(&values, m, k, scales, ActivationGrid::Int8);
            match path {
                HostPath::Fused => byte_gemm::int8_gemm(&slices, &codes.values, &codes.scales, m),
                HostPath::Tiled => {
                    let summation = Summation::Integers { row_scales: &codes.scales, channel_scales: slices.scales };
                    tiles::tiled_gemm(&ByteTiles { weight: &slices, values: ByteValues::Int8Codes }, &codes.values, m, summation)
                }
            }
        }
    };
    Some(output(product, m, n, &x))
}
