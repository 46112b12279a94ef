//! Weighted sum: `α·image + (1-α)·text`, both in one space.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// `α·a + (1-α)·b`. A learned α is `sigmoid` of a parameter (so it stays in (0, 1)),
/// starting at the configured value; a fixed one is a constant.
#[derive(Module, Debug)]
pub struct WeightedSum {
    /// `logit(α)` when α is learned.
    pub alpha_logit: Option<Param<Tensor<1>>>,
    /// α when it is fixed.
    pub fixed_alpha: f64,
}

impl WeightedSum {
    /// `alpha` in (0, 1) (checked by the config).
    pub fn new(alpha: f64, learned: bool, device: &Device) -> Self {
        let logit = (alpha / (1.0 - alpha)).ln();
        Self {
            alpha_logit: learned
                .then(|| Param::from_tensor(Tensor::from_floats([logit as f32], device))),
            fixed_alpha: alpha,
        }
    }

    /// The weight of the first input, `[1]`.
    pub fn alpha(&self, device: &Device) -> Tensor<1> {
        match &self.alpha_logit {
            Some(logit) => burn::tensor::activation::sigmoid(logit.val()),
            None => Tensor::from_floats([self.fixed_alpha as f32], device),
        }
    }

    /// `α·a + (1-α)·b` for `a`, `b` of one shape.
    pub fn forward<const D: usize>(&self, a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
        let alpha = self.alpha(&a.device()).cast(a.dtype()).reshape([1; D]);
        let beta = alpha.clone().neg().add_scalar(1.0);
        a * alpha + b * beta
    }
}
