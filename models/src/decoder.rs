//! The decoder stack every supported architecture shares: embedding, N pre-norm layers
//! (attention + feed-forward, each with a residual), final norm, LM head. Architectures
//! differ only in their feed-forward block and tensor names, which they pass in.

use burn::tensor::{DType, Device, Int, Tensor};
use ember_quant::kernels;
use ember_quant::{CheckpointError, ComputeDtype, LayerInfo, LayerKind, QLinear, WeightSpec};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::{Attention, KvCache, Mlp, MlpNames, PagedKvCache, RmsNorm, Rope, SequenceChunk, SparseMoe, StepLayout, StepPositions};
use crate::weights::Weights;

/// A decoder layer's feed-forward block.
// One per decoder layer, both variants large: boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(SparseMoe),
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Dense(mlp) => mlp.forward(x),
            Self::Moe(moe) => moe.forward(x),
        }
    }

    fn load(w: &Weights, plan: &FfnPlan) -> Result<Self, ModelError> {
        Ok(match plan {
            FfnPlan::Dense(mlp) => Self::Dense(Mlp::load(w, mlp)?),
            FfnPlan::Moe { router, experts, top_k } => Self::Moe(SparseMoe::load(w, router, experts, *top_k)?),
        })
    }
}

/// The linear layers of one feed-forward block, as an architecture names them.
#[derive(Debug, Clone)]
pub enum FfnPlan {
    Dense([LayerInfo; 3]),
    Moe { router: LayerInfo, experts: Vec<[LayerInfo; 3]>, top_k: usize },
}

impl FfnPlan {
    pub fn layers(&self) -> Vec<LayerInfo> {
        match self {
            Self::Dense(mlp) => mlp.to_vec(),
            Self::Moe { router, experts, .. } => std::iter::once(router.clone()).chain(experts.iter().flatten().cloned()).collect(),
        }
    }

    /// The dense SwiGLU block of Llama-family models (`mlp.{gate,up,down}_proj`).
    pub fn dense(w: &Weights, c: &ModelConfig) -> Self {
        Self::Dense(Mlp::plan(&w.pp("mlp"), MlpNames::HF, c.hidden_size, c.intermediate_size, c.mlp_bias, LayerKind::Linear))
    }
}

/// Plans the feed-forward block of a layer (`w` scoped at `model.layers.N`).
pub type FfnPlanner = fn(&Weights, &ModelConfig) -> Result<FfnPlan, ModelError>;

#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    ffn: FeedForward,
}

impl DecoderLayer {
    /// `w` is scoped at `model.layers.N`; `ffn` is the architecture's plan for this layer.
    pub fn load(w: &Weights, c: &ModelConfig, ffn: &FfnPlan) -> Result<Self, ModelError> {
        Ok(Self {
            input_layernorm: RmsNorm::load(&w.pp("input_layernorm"), c.hidden_size, c.rms_norm_eps)?,
            self_attn: Attention::load(&w.pp("self_attn"), c)?,
            post_attention_layernorm: RmsNorm::load(&w.pp("post_attention_layernorm"), c.hidden_size, c.rms_norm_eps)?,
            ffn: FeedForward::load(w, ffn)?,
        })
    }
}

/// A whole causal language model.
#[derive(Debug)]
pub struct DecoderModel {
    config: ModelConfig,
    device: Device,
    dtype: ComputeDtype,
    embed_tokens: Tensor<2>,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: QLinear,
    rope: Rope,
    ffn: FfnPlanner,
}

impl DecoderModel {
    /// Loads a model whose tensors follow the Llama naming (`model.embed_tokens`,
    /// `model.layers.N.…`, `model.norm`, `lm_head`). `on_layer` is told each finished layer.
    pub fn load(
        w: &Weights,
        config: ModelConfig,
        ffn: FfnPlanner,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let c = &config;
        let model = w.pp("model");
        let embed_tokens = model.pp("embed_tokens").float_weight("weight", [c.vocab_size, c.hidden_size])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let lw = model.pp("layers").pp(i);
            layers.push(DecoderLayer::load(&lw, c, &ffn(&lw, c)?)?);
            on_layer(i + 1, c.num_layers);
        }
        let norm = RmsNorm::load(&model.pp("norm"), c.hidden_size, c.rms_norm_eps)?;
        let lm_head = match c.tie_word_embeddings {
            true => QLinear::dense(embed_tokens.clone(), None).described("lm_head", "float (tied to embed_tokens)"),
            false => w.linear(&Self::lm_head_plan(w, c))?,
        };
        let ctx = w.ctx();
        Ok(Self {
            rope: Rope::new(c),
            device: ctx.device.clone(),
            dtype: ctx.dtype,
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            ffn,
        })
    }

    /// Reads every weight again from `w`, one decoder layer at a time, replacing each
    /// layer as soon as its successor is built: shapes and schemes are those `w`'s method
    /// gives (for a weight sync, [`ember_quant::online::Requantize`] keeps the current
    /// ones), and peak memory is the model plus one layer. A forward pass never sees a
    /// mix of old and new weights: this takes `&mut self`, so no step can run meanwhile.
    /// KV caches live outside the model and are kept.
    ///
    /// Every tensor is checked for presence, shape and dtype before anything is replaced;
    /// values that cannot be quantized (NaN) are only found when their layer is reached,
    /// and then the layers before it already hold new weights: reload again.
    pub fn reload(&mut self, w: &Weights, on_layer: &mut dyn FnMut(usize, usize)) -> Result<(), ModelError> {
        self.check_source(w)?;
        let c = &self.config;
        let model = w.pp("model");
        self.embed_tokens = model.pp("embed_tokens").float_weight("weight", [c.vocab_size, c.hidden_size])?;
        for i in 0..c.num_layers {
            let lw = model.pp("layers").pp(i);
            self.layers[i] = DecoderLayer::load(&lw, c, &(self.ffn)(&lw, c)?)?;
            on_layer(i + 1, c.num_layers);
        }
        self.norm = RmsNorm::load(&model.pp("norm"), c.hidden_size, c.rms_norm_eps)?;
        self.lm_head = match c.tie_word_embeddings {
            true => QLinear::dense(self.embed_tokens.clone(), None).described("lm_head", "float (tied to embed_tokens)"),
            false => w.linear(&Self::lm_head_plan(w, c))?,
        };
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> ComputeDtype {
        self.dtype
    }

    /// Every linear layer, in checkpoint order, with its module path and scheme.
    pub fn linears(&self) -> Vec<&QLinear> {
        let mut all = Vec::new();
        for layer in &self.layers {
            all.extend(layer.self_attn.linears());
            match &layer.ffn {
                FeedForward::Dense(mlp) => all.extend(mlp.linears()),
                FeedForward::Moe(moe) => all.extend(moe.linears()),
            }
        }
        all.push(&self.lm_head);
        all
    }

    /// How many mixture-of-experts blocks hold their experts stacked for grouped launches.
    pub fn stacked_moe_blocks(&self) -> usize {
        self.layers.iter().filter(|layer| matches!(&layer.ffn, FeedForward::Moe(moe) if moe.is_stacked())).count()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Runs `tokens` (`[batch, seq]`) after whatever `cache` holds and returns f32 logits
    /// `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        let [b, s] = tokens.dims();
        let c = &self.config;
        let step = StepPositions { start: cache.len(), len: s, sliding_window: c.sliding_window };
        let rope = self.rope.tables(step.start, s, &self.device, self.dtype);
        let mut x: Tensor<3> = self.embed(tokens.reshape([b * s])).reshape([b, s, c.hidden_size]);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn.forward(layer.input_layernorm.forward(x.clone()), &rope, cache.layer(i), step);
            x = x + h;
            let h = layer.ffn.forward(layer.post_attention_layernorm.forward(x.clone()));
            x = x + h;
        }
        cache.advance(s);
        self.lm_head.forward(self.norm.forward(x)).cast(DType::F32)
    }

    /// The embeddings of `ids`, in the compute dtype (the table may be kept in its
    /// checkpoint's f16 or bf16).
    fn embed(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        self.embed_tokens.clone().select(0, ids).cast(self.dtype.burn())
    }

    /// A paged KV pool sized for this model.
    pub fn new_paged_cache(&self, num_blocks: usize, block_size: usize) -> PagedKvCache {
        PagedKvCache::new(&self.config, &self.device, self.dtype, num_blocks, block_size)
    }

    /// One batched step over a paged cache: each chunk's tokens are appended to its
    /// sequence, and the f32 logits of each chunk's last token come back, `[chunks, vocab]`.
    /// Every sequence may be at a different position and bring any number of tokens, so
    /// prefills (whole or chunked) and decodes share a step.
    pub fn forward_paged(&self, chunks: &[SequenceChunk], cache: &mut PagedKvCache) -> Result<Tensor<2>, ModelError> {
        let c = &self.config;
        let vocab = c.vocab_size;
        for chunk in chunks {
            if let Some(bad) = chunk.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::InvalidStep(format!("token id {bad} is outside the vocabulary (size {vocab})")));
            }
        }
        // One choice per step: every layer's attention takes the same path.
        let decode_only = StepLayout::is_decode_only(chunks);
        let kernel = kernels::select::paged_attention(&self.device, self.dtype.burn(), c.head_dim, decode_only).kernel;
        let layout = StepLayout::new(chunks, cache, c.sliding_window, kernel, &self.device)
            .map_err(ModelError::InvalidStep)?;
        let ids: Vec<i64> = chunks.iter().flat_map(|chunk| chunk.tokens.iter().map(|&t| t as i64)).collect();
        let tokens = layout.tokens();
        let ids = Tensor::<1, Int>::from_data(burn::tensor::TensorData::new(ids, [tokens]), &self.device);
        let rope = self.rope.tables_at(layout.positions.iter().copied(), &self.device, self.dtype);
        let mut x: Tensor<3> = self.embed(ids).unsqueeze_dim(0);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn.forward_paged(layer.input_layernorm.forward(x.clone()), &rope, cache.layer(i), &layout)?;
            x = x + h;
            let h = layer.ffn.forward(layer.post_attention_layernorm.forward(x.clone()));
            x = x + h;
        }
        let last: Tensor<2> = x.squeeze_dim::<2>(0).select(0, layout.last_rows.clone());
        Ok(self.lm_head.forward(self.norm.forward(last)).cast(DType::F32))
    }

    /// Convenience for one sequence of token ids: logits `[seq, vocab]`.
    pub fn forward_ids(&self, ids: &[u32], cache: &mut KvCache) -> Tensor<2> {
        let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(data, [1, ids.len()]), &self.device);
        self.forward(tokens, cache).squeeze_dim(0)
    }

    /// Every tensor a load through `w` reads exists with the expected shape and dtype.
    fn check_source(&self, w: &Weights) -> Result<(), ModelError> {
        let c = &self.config;
        let source = w.source();
        let mut specs = vec![WeightSpec::float("model.embed_tokens.weight", [c.vocab_size, c.hidden_size]), WeightSpec::float("model.norm.weight", [c.hidden_size])];
        for i in 0..c.num_layers {
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                specs.push(WeightSpec::float(format!("model.layers.{i}.{norm}.weight"), [c.hidden_size]));
            }
        }
        for layer in Self::plan(w, c, self.ffn)? {
            let scheme = ember_quant::resolve_scheme(w.method(), &layer, source)?;
            specs.extend(scheme.weights().into_iter().filter(|s| !s.optional));
            if layer.bias {
                specs.push(WeightSpec::float(format!("{}.bias", layer.prefix), [layer.out_features]));
            }
        }
        for spec in specs {
            if let Some(meta) = source.meta(&spec.name) {
                spec.check(meta.dtype, &meta.shape)?;
            } else if source.contains(&spec.name) == Some(false) {
                return Err(CheckpointError::MissingTensor { name: spec.name, location: source.describe() }.into());
            }
        }
        Ok(())
    }

    fn lm_head_plan(w: &Weights, c: &ModelConfig) -> LayerInfo {
        w.layer("lm_head", c.hidden_size, c.vocab_size, false, LayerKind::LmHead)
    }

    /// Every linear layer the model would load, without reading any weight (for
    /// inspection and checks): per decoder layer the attention then feed-forward layers,
    /// then lm_head unless tied.
    pub fn plan(w: &Weights, c: &ModelConfig, ffn: FfnPlanner) -> Result<Vec<LayerInfo>, ModelError> {
        let mut layers = Vec::new();
        for i in 0..c.num_layers {
            let lw = w.pp("model").pp("layers").pp(i);
            layers.extend(Attention::plan(&lw.pp("self_attn"), c));
            layers.extend(ffn(&lw, c)?.layers());
        }
        if !c.tie_word_embeddings {
            layers.push(Self::lm_head_plan(w, c));
        }
        Ok(layers)
    }
}

