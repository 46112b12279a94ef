//! The classifier head on a fused (or single-modality) vector.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::ops;
use crate::transformer::{layer_norm, linear};

const EPS: f64 = 1e-5;

/// `fc2(gelu(fc1(layer_norm(x))))`: `[batch, in]` -> `[batch, classes]` logits. The norm puts
/// every operator's output (sums, products, concatenations of unit vectors) on one scale.
#[derive(Module, Debug)]
pub struct Head {
    pub layer_norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Head {
    pub fn new(input: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self {
            layer_norm: layer_norm(input, EPS, device),
            fc1: linear(input, hidden, (input as f64).powf(-0.5), true, device),
            fc2: linear(hidden, classes, (hidden as f64).powf(-0.5), true, device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = ops::layer_norm(&self.layer_norm, EPS, x);
        ops::linear_rows(&self.fc2, gelu(ops::linear_rows(&self.fc1, x)))
    }
}
