//! Concatenation: `[image; text]`, the head learns every interaction from there.

use burn::tensor::Tensor;

/// `[a; b]` along the feature (last) dimension.
pub fn concat<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    Tensor::cat(vec![a, b], D - 1)
}
