//! Element-wise product: `image ⊙ text`, feature by feature agreement in the joint space (the
//! summands of CLIP's cosine similarity, before they are summed).

use burn::tensor::Tensor;

/// `a ⊙ b` (one shape).
pub fn product<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    a * b
}
