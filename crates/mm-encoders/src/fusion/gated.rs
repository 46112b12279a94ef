//! The gated multimodal unit (Arevalo et al. 2017, "Gated Multimodal Units for Information
//! Fusion"): each modality is transformed, and a gate computed from both decides, feature by
//! feature and input by input, how much of each to keep.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::ops;
use crate::transformer::linear;

/// `z ⊙ tanh(W_a a) + (1 - z) ⊙ tanh(W_b b)`, `z = sigmoid(W_z [a; b])`.
#[derive(Module, Debug)]
pub struct GatedUnit {
    pub image: Linear,
    pub text: Linear,
    pub gate: Linear,
}

impl GatedUnit {
    pub fn new(width: usize, device: &Device) -> Self {
        let std = (width as f64).powf(-0.5);
        Self {
            image: linear(width, width, std, true, device),
            text: linear(width, width, std, true, device),
            gate: linear(
                2 * width,
                width,
                (2.0 * width as f64).powf(-0.5),
                true,
                device,
            ),
        }
    }

    /// The gate `z`, `[batch, width]`, for pooled `[batch, width]` inputs.
    pub fn gate(&self, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
        sigmoid(ops::linear_rows(&self.gate, Tensor::cat(vec![a, b], 1)))
    }

    /// `[batch, width]` twice -> `[batch, width]`.
    pub fn forward(&self, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
        let z = self.gate(a.clone(), b.clone());
        let (ha, hb) = (
            ops::linear_rows(&self.image, a).tanh(),
            ops::linear_rows(&self.text, b).tanh(),
        );
        z.clone() * ha + z.neg().add_scalar(1.0) * hb
    }
}
