//! The runtime linear layer every model uses. Formats are many, representations few:
//! each format's scheme lands in one [`LinearRepr`], and `forward` dispatches on it.

use std::fmt::Debug;

use burn::tensor::Tensor;

/// Forward pass of a representation registered from outside Ember.
pub trait LinearForward: Send + Sync + Debug {
    /// `x` is `[rows, in_features]`; returns `[rows, out_features]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;
}

/// The closed set of weight representations the kernels know, plus an escape hatch.
#[derive(Debug)]
pub enum LinearRepr {
    /// A float weight stored transposed, `[in_features, out_features]`, so forward is `x · W`.
    Dense { weight_t: Tensor<2> },
    /// A representation provided by a registered extension method.
    Custom(Box<dyn LinearForward>),
}

#[derive(Debug)]
pub struct QLinear {
    in_features: usize,
    out_features: usize,
    repr: LinearRepr,
    bias: Option<Tensor<1>>,
}

impl QLinear {
    pub fn new(in_features: usize, out_features: usize, repr: LinearRepr, bias: Option<Tensor<1>>) -> Self {
        Self { in_features, out_features, repr, bias }
    }

    /// A float linear from a weight in nn.Linear layout `[out, in]`.
    pub fn dense(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let [out_features, in_features] = weight.dims();
        Self::new(in_features, out_features, LinearRepr::Dense { weight_t: weight.transpose() }, bias)
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn repr(&self) -> &LinearRepr {
        &self.repr
    }

    /// Applies the layer over the last dimension of `x` (any rank ≥ 1).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let flat: Tensor<2> = x.reshape([rows, self.in_features]);
        let mut y = match &self.repr {
            LinearRepr::Dense { weight_t } => flat.matmul(weight_t.clone()),
            LinearRepr::Custom(op) => op.forward(flat),
        };
        if let Some(bias) = &self.bias {
            y = y + bias.clone().unsqueeze_dim(0);
        }
        let mut out_dims = dims;
        out_dims[D - 1] = self.out_features;
        y.reshape(out_dims)
    }
}
