//! Multi-head attention with grouped KV heads, rotary embeddings, a causal (optionally
//! sliding-window) mask, and softmax in f32.

use burn::tensor::{activation::softmax, Bool, DType, Device, Tensor, TensorData};
use ember_quant::kernels::{self, host, PagedAttentionLayout};
use ember_quant::{LayerInfo, LayerKind, QLinear};

use super::kv_cache::LayerCache;
use super::paged_kv::{GatheredStep, PagedLayer, StepAttention, StepLayout};
use super::rope::RopeTables;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::Weights;

#[derive(Debug)]
pub struct Attention {
    q_proj: QLinear,
    k_proj: QLinear,
    v_proj: QLinear,
    o_proj: QLinear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// Where this step's queries sit, for the mask.
#[derive(Debug, Clone, Copy)]
pub struct StepPositions {
    /// Positions already in the cache before this step.
    pub start: usize,
    /// Tokens in this step.
    pub len: usize,
    pub sliding_window: Option<usize>,
}

impl Attention {
    /// The four projections, scoped at `self_attn`.
    pub fn plan(w: &Weights, c: &ModelConfig) -> [LayerInfo; 4] {
        let (h, q, kv) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        [
            w.layer("q_proj", h, q, c.qkv_bias, LayerKind::Linear),
            w.layer("k_proj", h, kv, c.qkv_bias, LayerKind::Linear),
            w.layer("v_proj", h, kv, c.qkv_bias, LayerKind::Linear),
            w.layer("o_proj", q, h, c.o_bias, LayerKind::Linear),
        ]
    }

    pub fn load(w: &Weights, c: &ModelConfig) -> Result<Self, ModelError> {
        let [q, k, v, o] = Self::plan(w, c);
        Ok(Self {
            q_proj: w.linear(&q)?,
            k_proj: w.linear(&k)?,
            v_proj: w.linear(&v)?,
            o_proj: w.linear(&o)?,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
    }

    pub fn linears(&self) -> Vec<&QLinear> {
        vec![&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
    }

    /// `x` is `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>, rope: &RopeTables, cache: &mut LayerCache, step: StepPositions) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), self.num_heads));
        let k = rope.apply(heads(self.k_proj.forward(x.clone()), self.num_kv_heads));
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (k, v) = cache.append(k, v);
        let mask = attention_mask(step, &q.device());
        let out = self.attend(q, k, v, mask).swap_dims(1, 2).reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// A batched step over a paged cache: `x` is `[1, tokens, hidden]` with the
    /// sequences' tokens one after another, `rope` holds each token's position.
    pub fn forward_paged(&self, x: Tensor<3>, rope: &RopeTables, cache: &mut PagedLayer, layout: &StepLayout) -> Result<Tensor<3>, ModelError> {
        let tokens = layout.tokens();
        let (d, heads, kv_heads) = (self.head_dim, self.num_heads, self.num_kv_heads);
        let rotate = |t: Tensor<3>, n: usize| rope.apply_rows(t.reshape([tokens, n, d]));
        let q = rotate(self.q_proj.forward(x.clone()), heads);
        let k = rotate(self.k_proj.forward(x.clone()), kv_heads);
        let v = self.v_proj.forward(x).reshape([tokens, kv_heads, d]);
        cache.write(layout.write_rows.clone(), k, v);
        let out = match &layout.attention {
            StepAttention::Gathered(step) => self.attend_gathered(q, cache, step),
            StepAttention::PagedDecode { block_tables, context_lens } => {
                let (key_pool, value_pool) = cache.pools();
                let kernel_layout = PagedAttentionLayout { window: layout.sliding_window.unwrap_or(0) as u32 };
                kernels::paged_decode_attention(q, key_pool, value_pool, block_tables.clone(), context_lens.clone(), kernel_layout)
            }
            StepAttention::Host(spans) => {
                let (key_pool, value_pool) = cache.pools();
                host::attention::paged_attention(&q, &key_pool, &value_pool, spans, layout.sliding_window)
                    .ok_or_else(|| ModelError::InvalidStep("the host attention kernel cannot read this step's pools (not f32, f16 or bf16 on the Flex device)".into()))?
            }
        };
        Ok(self.o_proj.forward(out.reshape([1, tokens, heads * d])))
    }

    /// Attention over contexts gathered from the pool into a padded, masked batch;
    /// returns `[tokens, heads, head_dim]`.
    fn attend_gathered(&self, q: Tensor<3>, cache: &PagedLayer, step: &GatheredStep) -> Tensor<3> {
        let (d, heads) = (self.head_dim, self.num_heads);
        let (k, v) = cache.read(step.read_rows.clone(), step.batch, step.max_context);
        let (batch, max_query) = (step.batch, step.max_query);
        let q = match &step.query_rows {
            Some(rows) => q.select(0, rows.clone()),
            None => q,
        };
        let q = q.reshape([batch, max_query, heads, d]).swap_dims(1, 2);
        let out = self.attend(q, k, v, step.mask.clone()).swap_dims(1, 2).reshape([batch * max_query, heads, d]);
        match &step.token_rows {
            Some(rows) => out.select(0, rows.clone()),
            None => out,
        }
    }

    /// Scaled dot-product attention with softmax in f32: `q` is `[b, heads, queries, d]`,
    /// `k`/`v` are `[b, kv_heads, keys, d]`, `mask` is `true` where a key is hidden.
    fn attend(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Option<Tensor<4, Bool>>) -> Tensor<4> {
        let group = self.num_heads / self.num_kv_heads;
        let (k, v) = (repeat_kv(k, group), repeat_kv(v, group));
        let dtype = q.dtype();
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale).cast(DType::F32);
        if let Some(mask) = mask {
            scores = scores.mask_fill(mask, f32::NEG_INFINITY);
        }
        softmax(scores, 3).cast(dtype).matmul(v)
    }
}

/// `[b, kv_heads, t, d]` → `[b, kv_heads * group, t, d]`, query head `i` reading kv head `i / group`.
fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2).repeat_dim(2, group).reshape([b, h * group, t, d])
}

/// `true` where a query may not see a key: the future, and keys beyond the window.
/// `None` when nothing is masked (one new token, no window in reach).
fn attention_mask(step: StepPositions, device: &Device) -> Option<Tensor<4, Bool>> {
    let total = step.start + step.len;
    let blocked = |query: usize, key: usize| key > query || step.sliding_window.is_some_and(|w| query - key >= w);
    let values: Vec<bool> = (step.start..total).flat_map(|q| (0..total).map(move |k| blocked(q, k))).collect();
    if !values.iter().any(|&m| m) {
        return None;
    }
    Some(Tensor::from_data(TensorData::new(values, [1, 1, step.len, total]), device))
}
