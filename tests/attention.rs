//! Paged attention against references: the CubeCL decode kernel on the CubeCL runtimes
//! CI has (wgpu on lavapipe, the CPU runtime), and the Flex host kernel.

use burn::tensor::{DType, Device, Tensor, TensorData};
use ember_quant::kernels;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kernels::to_f32;

/// Block ids `0..num_blocks` in random order, so sequences own scattered blocks.
fn shuffled_blocks(num_blocks: usize, rng: &mut StdRng) -> Vec<u32> {
    let mut blocks: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.random_range(0..=i));
    }
    blocks
}

/// Decode attention read through block tables against gathering each context and
/// running masked Burn-ops attention: grouped KV heads, shuffled blocks, contexts from
/// one token to several blocks, a sliding window, and half precision where supported.
fn paged_decode_on(device: Device) {
    use ember_quant::kernels::PagedAttentionLayout;
    use burn::tensor::activation::softmax;

    let mut rng = StdRng::seed_from_u64(5);
    let (heads, kv_heads, head_dim, block_size, num_blocks) = (8, 2, 64, 4, 24);
    let dtypes: Vec<DType> = [DType::F32, DType::F16, DType::BF16].into_iter().filter(|&d| device.supports_dtype(d)).collect();
    for dtype in dtypes {
        for window in [0usize, 5] {
            let contexts = [1usize, 4, 9, 17, 30];
            let batch = contexts.len();
            // A shuffled pool: sequences own scattered blocks.
            let blocks = shuffled_blocks(num_blocks, &mut rng);
            let width = contexts.iter().map(|c| c.div_ceil(block_size)).max().unwrap();
            let mut tables = Vec::new();
            let mut next = 0;
            for &c in &contexts {
                let own = c.div_ceil(block_size);
                tables.extend((0..width).map(|i| if i < own { blocks[next + i] as i32 } else { 0 }));
                next += own;
            }
            let random = |n: usize, rng: &mut StdRng| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
            let pool_shape = [num_blocks, kv_heads, block_size, head_dim];
            let pool = |rng: &mut StdRng| Tensor::<4>::from_data(TensorData::new(random(pool_shape.iter().product(), rng), pool_shape), (&device, dtype));
            let (keys, values) = (pool(&mut rng), pool(&mut rng));
            let q = Tensor::<3>::from_data(TensorData::new(random(batch * heads * head_dim, &mut rng), [batch, heads, head_dim]), (&device, dtype));
            let table_tensor = Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(tables.clone(), [batch, width]), (&device, DType::I32));
            let lens: Vec<i32> = contexts.iter().map(|&c| c as i32).collect();
            let lens = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(lens, [batch]), (&device, DType::I32));
            let layout = PagedAttentionLayout { window: window as u32 };
            let ours = to_f32(kernels::paged_decode_attention(q.clone(), keys.clone(), values.clone(), table_tensor, lens, layout).reshape([batch * heads * head_dim]));

            let mut expected = Vec::new();
            for (b, &context) in contexts.iter().enumerate() {
                let first = if window > 0 { context.saturating_sub(window) } else { 0 };
                // Each position as (block, offset): the pool seen as `[blocks * block_size, kv_heads, head_dim]`.
                let positions: Vec<i64> = (first..context).map(|p| (tables[b * width + p / block_size] as usize * block_size + p % block_size) as i64).collect();
                let n = positions.len();
                let index = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(positions, [n]), &device);
                let by_slot = |pool: &Tensor<4>| pool.clone().swap_dims(1, 2).reshape([num_blocks * block_size, kv_heads, head_dim]);
                let gather = |pool: &Tensor<4>| by_slot(pool).select(0, index.clone()).cast(DType::F32).swap_dims(0, 1).repeat_dim(0, heads / kv_heads);
                let k = regroup(gather(&keys), kv_heads, heads);
                let v = regroup(gather(&values), kv_heads, heads);
                let qb = q.clone().narrow(0, b, 1).cast(DType::F32).reshape([heads, 1, head_dim]);
                let scores = qb.matmul(k.swap_dims(1, 2)).mul_scalar((head_dim as f64).powf(-0.5));
                expected.extend(to_f32(softmax(scores, 2).matmul(v).reshape([heads * head_dim])));
            }
            let diff = ours.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let tolerance = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            assert!(diff < tolerance, "{dtype:?} window {window}: max diff {diff}");
        }
    }
}

/// `[kv_heads * group, n, d]` repeated as whole blocks → each kv head repeated `group`
/// times in place, so query head `h` meets kv head `h / group`.
fn regroup(x: Tensor<3>, kv_heads: usize, heads: usize) -> Tensor<3> {
    let [_, n, d] = x.dims();
    let group = heads / kv_heads;
    x.reshape([group, kv_heads, n, d]).swap_dims(0, 1).reshape([heads, n, d])
}

#[test]
fn paged_decode_attention_on_wgpu() {
    paged_decode_on(Device::wgpu(Default::default()));
}

#[test]
fn paged_decode_attention_on_cubecl_cpu() {
    paged_decode_on(Device::cpu());
}

/// The Flex host attention kernel over a shuffled paged pool against attention computed
/// naively in f64: prefills longer than a key chunk, a chunked prefill, decodes and a
/// one-token prompt in one step; query groups of 4, 1, 80 (more rows than one work item
/// takes) and 3 with a head size not a multiple of the kernel's lanes; with and without a sliding window; f32, f16 and bf16 pools. Then decodes
/// of one and of two sequences with long contexts, too few items for the threads, so
/// their keys are split and the parts merged.
#[test]
fn host_paged_attention_matches_naive_attention() {
    // (start, queries) per sequence.
    let mixed = [(0usize, 150usize), (3, 1), (130, 70), (0, 1), (200, 1), (40, 9)];
    for (heads, kv_heads, dim) in [(8usize, 2usize, 64usize), (3, 3, 32), (80, 1, 16), (6, 2, 24)] {
        host_attention_against_naive(&mixed, heads, kv_heads, dim, &[None, Some(37)]);
    }
    host_attention_against_naive(&[(1500, 1)], 4, 1, 32, &[None, Some(700)]);
    host_attention_against_naive(&[(1100, 1), (2000, 2)], 2, 1, 16, &[None]);
}

fn host_attention_against_naive(sequences: &[(usize, usize)], heads: usize, kv_heads: usize, dim: usize, windows: &[Option<usize>]) {
    use ember_quant::kernels::host::attention::{paged_attention, QuerySpan};
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(17);
    let block_size = 16;
    {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for &window in windows {
                let num_blocks = sequences.iter().map(|&(start, len)| (start + len).div_ceil(block_size)).sum::<usize>() + 3;
                let blocks = shuffled_blocks(num_blocks, &mut rng);
                let (mut spans, mut next_block, mut rows) = (Vec::new(), 0, 0);
                for &(start, len) in sequences {
                    let owned = (start + len).div_ceil(block_size);
                    spans.push(QuerySpan { rows: rows..rows + len, start, block_table: blocks[next_block..next_block + owned].to_vec() });
                    next_block += owned;
                    rows += len;
                }
                let tokens = rows;
                let random = |n: usize, rng: &mut StdRng| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<f32>>();
                let pool_shape = [num_blocks, kv_heads, block_size, dim];
                let pool = |rng: &mut StdRng| Tensor::<4>::from_data(TensorData::new(random(pool_shape.iter().product(), rng), pool_shape), (&device, dtype));
                let (keys, values) = (pool(&mut rng), pool(&mut rng));
                let q = Tensor::<3>::from_data(TensorData::new(random(tokens * heads * dim, &mut rng), [tokens, heads, dim]), (&device, dtype));
                let ours = to_f32(paged_attention(&q, &keys, &values, &spans, window).expect("host kernel"));

                // The values as stored (rounded to `dtype`).
                let (q, keys, values) = (to_f32(q), to_f32(keys), to_f32(values));
                let mut expected = vec![0f64; tokens * heads * dim];
                for span in &spans {
                    for (i, row) in span.rows.clone().enumerate() {
                        let position = span.start + i;
                        let first = window.map_or(0, |w| (position + 1).saturating_sub(w));
                        for h in 0..heads {
                            let kv = h / (heads / kv_heads);
                            let query = &q[(row * heads + h) * dim..][..dim];
                            let at = |pool: &[f32], p: usize| {
                                let block = span.block_table[p / block_size] as usize;
                                pool[((block * kv_heads + kv) * block_size + p % block_size) * dim..][..dim].to_vec()
                            };
                            let scores: Vec<f64> = (first..=position)
                                .map(|p| at(&keys, p).iter().zip(query).map(|(&k, &q)| k as f64 * q as f64).sum::<f64>() / (dim as f64).sqrt())
                                .collect();
                            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                            let total: f64 = weights.iter().sum();
                            let out = &mut expected[(row * heads + h) * dim..][..dim];
                            for (p, w) in (first..=position).zip(&weights) {
                                for (o, &v) in out.iter_mut().zip(&at(&values, p)) {
                                    *o += w / total * v as f64;
                                }
                            }
                        }
                    }
                }
                let diff = ours.iter().zip(&expected).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
                // f32: summation order only; f16/bf16: the output's rounding.
                let tolerance = match dtype {
                    DType::F32 => 1e-5,
                    DType::F16 => 4e-3,
                    _ => 2e-2,
                };
                assert!(diff < tolerance, "heads {heads}/{kv_heads} dim {dim} {dtype:?} window {window:?}: max diff {diff}");
            }
        }
    }
}

/// Spans that do not fit the pool or the queries get `None` (the caller's error), not a
/// panic; so do tensors off the Flex device.
#[test]
fn host_paged_attention_refuses_what_does_not_fit() {
    use ember_quant::kernels::host::attention::{paged_attention, QuerySpan};
    let device = Device::flex();
    let (block_size, blocks, heads, dim) = (4, 3, 2, 8);
    let pool = Tensor::<4>::zeros([blocks, heads, block_size, dim], &device);
    let q = Tensor::<3>::zeros([5, heads, dim], &device);
    let window = None;
    let span = |rows: std::ops::Range<usize>, start: usize, table: &[u32]| QuerySpan { rows, start, block_table: table.to_vec() };
    assert!(paged_attention(&q, &pool, &pool, &[span(0..5, 0, &[0, 1])], window).is_some());
    for (spans, what) in [
        (vec![span(0..5, 0, &[0])], "table shorter than the context"),
        (vec![span(0..5, 0, &[0, 3])], "block outside the pool"),
        (vec![span(0..6, 0, &[0, 1])], "rows past the queries"),
        (vec![span(0..3, 0, &[0]), span(2..5, 0, &[1])], "overlapping rows"),
        (vec![span(0..0, 0, &[0])], "no rows"),
    ] {
        assert!(paged_attention(&q, &pool, &pool, &spans, window).is_none(), "{what}");
    }
    assert!(paged_attention(&q, &pool, &pool, &[span(0..5, 0, &[0, 1])], Some(0)).is_none(), "window 0");
    let odd_heads = Tensor::<3>::zeros([5, 3, dim], &device);
    assert!(paged_attention(&odd_heads, &pool, &pool, &[span(0..5, 0, &[0, 1])], window).is_none(), "3 heads over 2 kv heads");
    let wgpu = Device::wgpu(Default::default());
    let (q, pool) = (q.to_device(&wgpu), pool.to_device(&wgpu));
    assert!(paged_attention(&q, &pool, &pool, &[span(0..5, 0, &[0, 1])], window).is_none(), "wgpu tensors");
}
