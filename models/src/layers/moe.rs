//! Mixtral's sparse mixture of experts: a router picks the top-k experts per token
//! (softmax over all experts, top-k, renormalised, as transformers does), each expert
//! runs on its tokens only, and outputs are summed with the routing weights.
//!
//! When every expert is an integer weight-only layer of one layout, the experts' gate and
//! up projections are stacked side by side into one [`ExpertStack`] and the down
//! projections into another. A forward step then sorts the token slots by expert and runs
//! two grouped kernel launches covering every selected expert, reading each expert's
//! weights once. Otherwise (and on devices without the kernel) each expert runs on its own
//! tokens through its `QLinear`s.

use burn::tensor::{activation::softmax, DType, IndexingUpdateOp, Int, Tensor, TensorData};
use ember_quant::kernels::{self, FragmentCache, IntGemmKernel};
use ember_quant::linear::LinearRepr;
use ember_quant::repr::{ExpertStack, PackedIntWeight};
use ember_quant::{LayerInfo, LayerKind, QLinear};

use super::mlp::{Mlp, MlpNames};
use crate::config::MoeConfig;
use crate::error::ModelError;
use crate::weights::Weights;

#[derive(Debug)]
pub struct SparseMoe {
    router: QLinear,
    experts: Vec<Mlp>,
    /// Gate|up and down projections of every expert, when they could be stacked.
    stacks: Option<[ExpertStack; 2]>,
    /// The stacks' tensor-core copies, made when that kernel is first selected.
    stack_fragments: [FragmentCache; 2],
    top_k: usize,
}

/// Which experts the router chose for each token, read back to the host.
struct Routing {
    /// `expert[slot]` for slot `token · top_k + j`.
    expert: Vec<usize>,
    /// Renormalised routing weight of each slot.
    weight: Vec<f32>,
    /// Slots routed to each expert.
    rows_per_expert: Vec<usize>,
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
        let experts: Vec<Mlp> = experts.iter().map(|plan| Mlp::load(w, plan)).collect::<Result<_, _>>()?;
        let (experts, stacks) = stack_experts(experts);
        Ok(Self { router: w.linear(router)?, experts, stacks, stack_fragments: Default::default(), top_k })
    }

    pub fn linears(&self) -> Vec<&QLinear> {
        std::iter::once(&self.router).chain(self.experts.iter().flat_map(Mlp::linears)).collect()
    }

    /// Whether the experts are stacked for grouped launches.
    pub fn is_stacked(&self) -> bool {
        self.stacks.is_some()
    }

    /// `x` is `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let tokens = x.reshape([b * s, h]);
        let routing = self.route(tokens.clone());
        let out = match self.grouped_kernel(&tokens, &routing) {
            Some((stacks, tilings)) => self.forward_grouped(stacks, tokens, &routing, tilings),
            None => self.forward_per_expert(tokens, &routing),
        };
        out.reshape([b, s, h])
    }

    fn route(&self, tokens: Tensor<2>) -> Routing {
        let probs = softmax(self.router.forward(tokens).cast(DType::F32), 1);
        let (weights, experts) = probs.topk_with_indices(self.top_k, 1);
        let weights = weights.clone() / weights.sum_dim(1);
        // Routing is data-dependent: read the (small) choice back to group tokens per expert.
        let expert: Vec<i64> = experts.try_into_vec_as::<i64>().expect("router choices read back from the device");
        let weight: Vec<f32> = weights.try_into_vec_as::<f32>().expect("routing weights read back from the device");
        let expert: Vec<usize> = expert.into_iter().map(|e| e as usize).collect();
        let mut rows_per_expert = vec![0usize; self.experts.len()];
        expert.iter().for_each(|&e| rows_per_expert[e] += 1);
        Routing { expert, weight, rows_per_expert }
    }

    /// The stacks and each one's kernel, when the grouped kernels run on this device.
    fn grouped_kernel(&self, tokens: &Tensor<2>, routing: &Routing) -> Option<(&[ExpertStack; 2], [IntGemmKernel; 2])> {
        let stacks = self.stacks.as_ref()?;
        let max_rows = routing.rows_per_expert.iter().copied().max().unwrap_or(0);
        let kernel = |stack| match kernels::select::grouped_int_gemm(stack, &tokens.device(), tokens.dtype(), max_rows).kernel {
            IntGemmKernel::Reference => None,
            kernel => Some(kernel),
        };
        Some((stacks, [kernel(&stacks[0])?, kernel(&stacks[1])?]))
    }

    /// Two grouped launches: token slots sorted by expert, gate|up, SwiGLU, down; then
    /// each token's slots are weighted and summed.
    fn forward_grouped(&self, [gate_up, down]: &[ExpertStack; 2], tokens: Tensor<2>, routing: &Routing, [gate_up_kernel, down_kernel]: [IntGemmKernel; 2]) -> Tensor<2> {
        let [t, h] = tokens.dims();
        let device = tokens.device();
        let dtype = tokens.dtype();
        let slots = routing.expert.len();
        let mut order: Vec<usize> = (0..slots).collect();
        order.sort_by_key(|&slot| routing.expert[slot]);
        let mut position = vec![0i64; slots];
        for (sorted, &slot) in order.iter().enumerate() {
            position[slot] = sorted as i64;
        }
        let index = |values: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(values, [slots]), &device);
        let token_of_sorted = index(order.iter().map(|&slot| (slot / self.top_k) as i64).collect());

        let x = tokens.select(0, token_of_sorted);
        let [gate_up_fragments, down_fragments] = &self.stack_fragments;
        let gate_up_out = kernels::grouped_int_forward(gate_up, gate_up_fragments, x, &routing.rows_per_expert, gate_up_kernel);
        let intermediate = gate_up.parts[0];
        let gate = gate_up_out.clone().narrow(1, 0, intermediate);
        let up = gate_up_out.narrow(1, intermediate, intermediate);
        let y = kernels::grouped_int_forward(down, down_fragments, kernels::silu_and_mul(gate, up), &routing.rows_per_expert, down_kernel);

        let y = y.select(0, index(position)).reshape([t, self.top_k, h]);
        let weights = Tensor::<3>::from_data(TensorData::new(routing.weight.clone(), [t, self.top_k, 1]), (&device, dtype));
        (y * weights).sum_dim(1).reshape([t, h])
    }

    fn forward_per_expert(&self, tokens: Tensor<2>, routing: &Routing) -> Tensor<2> {
        let [t, h] = tokens.dims();
        let device = tokens.device();
        let dtype = tokens.dtype();
        let mut out = Tensor::<2>::zeros([t, h], (&device, dtype));
        for (e, expert) in self.experts.iter().enumerate() {
            let (rows, scales): (Vec<i64>, Vec<f32>) = routing
                .expert
                .iter()
                .zip(&routing.weight)
                .enumerate()
                .filter(|(_, (&c, _))| c == e)
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
        out
    }
}

/// The integer weight of a bias-free Int4/Int8 layer.
fn int_weight(linear: &QLinear) -> Option<&PackedIntWeight> {
    match linear.repr() {
        LinearRepr::Int4(w) | LinearRepr::Int8(w) if !linear.has_bias() => Some(w),
        _ => None,
    }
}

/// Stacks the experts' integer weights when they share one layout, rebuilding each expert's
/// projections as views of the stacks; otherwise returns the experts unchanged.
fn stack_experts(experts: Vec<Mlp>) -> (Vec<Mlp>, Option<[ExpertStack; 2]>) {
    let weights: Option<Vec<[&PackedIntWeight; 3]>> = experts
        .iter()
        .map(|mlp| {
            let [gate, up, down] = mlp.linears().try_into().ok()?;
            Some([int_weight(gate)?, int_weight(up)?, int_weight(down)?])
        })
        .collect();
    let Some(weights) = weights else {
        return (experts, None);
    };
    let gate_up: Vec<Vec<&PackedIntWeight>> = weights.iter().map(|&[g, u, _]| vec![g, u]).collect();
    let down: Vec<Vec<&PackedIntWeight>> = weights.iter().map(|&[_, _, d]| vec![d]).collect();
    let stacks = match (ExpertStack::stack(&gate_up), ExpertStack::stack(&down)) {
        (Ok(gate_up), Ok(down)) => [gate_up, down],
        (Err(reason), _) | (_, Err(reason)) => {
            tracing::debug!("experts run one by one: {reason}");
            return (experts, None);
        }
    };
    let experts = experts
        .into_iter()
        .enumerate()
        .map(|(e, mlp)| {
            let [gate, up, down] = mlp.into_parts();
            let view = |linear: QLinear, stack: &ExpertStack, part: usize| {
                let weight = stack.part(e, part);
                let repr = if weight.bits == 4 { LinearRepr::Int4(weight) } else { LinearRepr::Int8(weight) };
                QLinear::new(linear.in_features(), linear.out_features(), repr, None).described(linear.name(), linear.scheme())
            };
            Mlp::from_parts(view(gate, &stacks[0], 0), view(up, &stacks[0], 1), view(down, &stacks[1], 0))
        })
        .collect();
    (experts, Some(stacks))
}
