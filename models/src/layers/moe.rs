//! Mixtral's sparse mixture of experts: a router picks the top-k experts per token
//! (softmax over all experts, top-k, renormalised, as transformers does), each expert
//! runs on its tokens only, and outputs are summed with the routing weights.

use burn::tensor::{activation::softmax, DType, IndexingUpdateOp, Int, Tensor, TensorData};
use ember_quant::{LayerInfo, LayerKind, QLinear};

use super::mlp::{Mlp, MlpNames};
use crate::config::MoeConfig;
use crate::error::ModelError;
use crate::weights::Weights;

#[derive(Debug)]
pub struct SparseMoe {
    router: QLinear,
    experts: Vec<Mlp>,
    top_k: usize,
}

impl SparseMoe {
    /// The router and every expert's projections; `w` is scoped at the block
    /// (`block_sparse_moe` or `mlp`), where the router is `gate`.
    pub fn plan(w: &Weights, names: MlpNames, hidden: usize, intermediate: usize, moe: &MoeConfig) -> (LayerInfo, Vec<[LayerInfo; 3]>) {
        let router = w.layer("gate", hidden, moe.num_experts, false, LayerKind::Router);
        let experts = (0..moe.num_experts)
            .map(|e| Mlp::plan(&w.pp("experts").pp(e), names, hidden, intermediate, false, LayerKind::Expert { index: e }))
            .collect();
        (router, experts)
    }

    pub fn load(w: &Weights, router: &LayerInfo, experts: &[[LayerInfo; 3]], top_k: usize) -> Result<Self, ModelError> {
        Ok(Self {
            router: w.linear(router)?,
            experts: experts.iter().map(|plan| Mlp::load(w, plan)).collect::<Result<_, _>>()?,
            top_k,
        })
    }

    pub fn linears(&self) -> Vec<&QLinear> {
        std::iter::once(&self.router).chain(self.experts.iter().flat_map(Mlp::linears)).collect()
    }

    /// `x` is `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let tokens = x.reshape([b * s, h]);
        let dtype = tokens.dtype();
        let probs = softmax(self.router.forward(tokens.clone()).cast(DType::F32), 1);
        let (weights, experts) = probs.topk_with_indices(self.top_k, 1);
        let weights = weights.clone() / weights.sum_dim(1);

        // Routing is data-dependent: read the (small) choice back and group tokens per expert.
        let chosen: Vec<i64> = experts.try_into_vec_as::<i64>().expect("router choices read back from the device");
        let weights: Vec<f32> = weights.try_into_vec_as::<f32>().expect("routing weights read back from the device");
        let device = tokens.device();
        let mut out = Tensor::<2>::zeros([b * s, h], (&device, dtype));
        for (e, expert) in self.experts.iter().enumerate() {
            let (rows, scales): (Vec<i64>, Vec<f32>) = chosen
                .iter()
                .zip(&weights)
                .enumerate()
                .filter(|(_, (&c, _))| c == e as i64)
                .map(|(slot, (_, &w))| ((slot / self.top_k) as i64, w))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
            let scales = Tensor::<2>::from_data(TensorData::new(scales, [n, 1]), (&device, dtype));
            let y = expert.forward(tokens.clone().select(0, rows.clone())) * scales;
            out = out.select_assign(0, rows, y, IndexingUpdateOp::Add);
        }
        out.reshape([b, s, h])
    }
}
