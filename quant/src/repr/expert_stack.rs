//! A mixture-of-experts projection with every expert's integer weight stacked into one set
//! of buffers, so one grouped kernel launch covers all selected experts. Expert `e` owns
//! words `[e·K/per_word, (e+1)·K/per_word)` and groups `[e·G, (e+1)·G)`; a fused
//! projection (Mixtral's gate and up) is its parts side by side along N.
//!
//! Each expert's own `PackedIntWeight` is a view into the stack, so the per-expert
//! reference path, inspection and weight comparisons keep working without a second copy.

use burn::tensor::{DType, Tensor};

use super::packed_int::{PackedIntWeight, ZeroPoints};
use crate::packing::per_word;

#[derive(Debug, Clone)]
pub struct ExpertStack {
    pub experts: usize,
    pub bits: u32,
    /// K of each expert.
    pub in_features: usize,
    /// N of each expert (the sum of its parts' widths).
    pub out_features: usize,
    pub group_size: usize,
    /// `[E·K/per_word, N]` i32 words.
    pub packed: Tensor<2, burn::tensor::Int>,
    /// `[E·G, N]` f32.
    pub scales: Tensor<2>,
    /// Midpoint, or `[E·G, N]` zero points / offsets.
    pub zeros: ZeroPoints,
    /// Width of each part along N (one entry for an unfused projection).
    pub parts: Vec<usize>,
}

impl ExpertStack {
    /// Stacks `experts[e]` = the parts of expert `e`, side by side along N. Every weight
    /// must share bits, K, group size, centring and part widths, and have contiguous groups
    /// (no act-order); otherwise the reason is returned.
    pub fn stack(experts: &[Vec<&PackedIntWeight>]) -> Result<Self, String> {
        let first = experts.first().and_then(|parts| parts.first()).ok_or("no experts")?;
        let parts: Vec<usize> = experts[0].iter().map(|w| w.out_features).collect();
        for (e, expert) in experts.iter().enumerate() {
            let widths: Vec<usize> = expert.iter().map(|w| w.out_features).collect();
            if widths != parts {
                return Err(format!("expert {e} has output widths {widths:?}, expert 0 {parts:?}"));
            }
            for w in expert {
                if w.bits != first.bits || w.in_features != first.in_features || w.group_size != first.group_size {
                    return Err(format!("expert {e} is int{} K={} g{}, expert 0 int{} K={} g{}", w.bits, w.in_features, w.group_size, first.bits, first.in_features, first.group_size));
                }
                if w.input_order.is_some() || !w.groups_contiguous {
                    return Err(format!("expert {e} is act-order; each expert would need its own activation order"));
                }
                if std::mem::discriminant(&w.zeros) != std::mem::discriminant(&first.zeros) {
                    return Err(format!("expert {e} centres its groups differently from expert 0"));
                }
            }
        }
        let missing = || "expert zero points are incomplete".to_string();
        let zeros = match &first.zeros {
            ZeroPoints::Midpoint => ZeroPoints::Midpoint,
            ZeroPoints::Integer(_) => ZeroPoints::Integer(side_by_side(experts, |w| match &w.zeros {
                ZeroPoints::Integer(z) => Some(z.clone()),
                _ => None,
            })
            .ok_or_else(missing)?),
            ZeroPoints::Float(_) => ZeroPoints::Float(side_by_side(experts, |w| match &w.zeros {
                ZeroPoints::Float(o) => Some(o.clone().cast(DType::F32)),
                _ => None,
            })
            .ok_or_else(missing)?),
        };
        let packed = side_by_side(experts, |w| Some(w.packed.clone())).ok_or_else(missing)?;
        let scales = side_by_side(experts, |w| Some(w.scales.clone().cast(DType::F32))).ok_or_else(missing)?;
        Ok(Self {
            experts: experts.len(),
            bits: first.bits,
            in_features: first.in_features,
            out_features: parts.iter().sum(),
            group_size: first.group_size,
            packed,
            scales,
            zeros,
            parts,
        })
    }

    pub fn groups(&self) -> usize {
        self.in_features / self.group_size
    }

    /// The Burn-ops reference of a grouped launch: `x` holds `rows_per_expert[e]` rows for
    /// each expert `e`, in expert order, each multiplied by its expert's parts.
    pub fn forward_reference(&self, x: Tensor<2>, rows_per_expert: &[usize]) -> Tensor<2> {
        let mut outputs = Vec::new();
        let mut first = 0;
        for (expert, &rows) in rows_per_expert.iter().enumerate().filter(|(_, &rows)| rows > 0) {
            let rows_of_expert = x.clone().narrow(0, first, rows);
            let parts = (0..self.parts.len()).map(|part| self.part(expert, part).forward_reference(rows_of_expert.clone())).collect();
            outputs.push(Tensor::cat(parts, 1));
            first += rows;
        }
        match outputs.is_empty() {
            true => Tensor::zeros([0, self.out_features], (&x.device(), x.dtype())),
            false => Tensor::cat(outputs, 0),
        }
    }

    /// Part `part` of expert `expert` as a weight of its own, sharing the stack's buffers.
    pub fn part(&self, expert: usize, part: usize) -> PackedIntWeight {
        let words = self.in_features / per_word(self.bits);
        let groups = self.groups();
        let col0: usize = self.parts[..part].iter().sum();
        let cols = col0..col0 + self.parts[part];
        let rows = |per: usize| expert * per..(expert + 1) * per;
        let view = |t: &Tensor<2>, per: usize| t.clone().slice([rows(per), cols.clone()]);
        PackedIntWeight {
            bits: self.bits,
            in_features: self.in_features,
            out_features: self.parts[part],
            group_size: self.group_size,
            packed: self.packed.clone().slice([rows(words), cols.clone()]),
            scales: view(&self.scales, groups),
            zeros: match &self.zeros {
                ZeroPoints::Midpoint => ZeroPoints::Midpoint,
                ZeroPoints::Integer(z) => ZeroPoints::Integer(z.clone().slice([rows(groups), cols.clone()])),
                ZeroPoints::Float(o) => ZeroPoints::Float(view(o, groups)),
            },
            group_index: PackedIntWeight::contiguous_groups(self.in_features, self.group_size, &self.packed.device()),
            groups_contiguous: true,
            input_order: None,
        }
    }
}

/// Each expert's parts concatenated along N, experts stacked along rows; `None` if `pick`
/// has nothing for some weight.
fn side_by_side<K: burn::tensor::kind::Basic>(
    experts: &[Vec<&PackedIntWeight>],
    pick: impl Fn(&PackedIntWeight) -> Option<Tensor<2, K>>,
) -> Option<Tensor<2, K>> {
    let rows = experts
        .iter()
        .map(|parts| parts.iter().map(|w| pick(w)).collect::<Option<Vec<_>>>().map(|parts| Tensor::cat(parts, 1)))
        .collect::<Option<Vec<_>>>()?;
    Some(Tensor::cat(rows, 0))
}
