//! The one door from model code to mm-kernels. Modules pass `[batch, seq, width]` tensors;
//! here they become `[batch * seq, width]` rows, so that every projection is one 2-D GEMM (and
//! its backward two more) instead of `batch` small ones whose weight gradients autodiff would
//! have to sum. Each op runs a fused Flex kernel or burn's composite op, chosen by the tensor's
//! device and dtype inside mm-kernels: a new kernel changes this file and nothing above it.

use burn::nn::Linear;
use burn::tensor::Tensor;

pub use mm_kernels::{
    MatmulPrecision, MatmulPrecisionGuard, checkpoint, fused_on, layer_norm, masked_attention,
    quick_gelu, set_matmul_precision, with_matmul_precision,
};

/// `[batch, seq, d_in]` -> `[batch * seq, d_in]` rows, and the `[batch, seq]` to restore.
fn rows(x: Tensor<3>) -> (Tensor<2>, [usize; 2]) {
    let [batch, seq, width] = x.dims();
    (x.reshape([batch * seq, width]), [batch, seq])
}

fn unrows(x: Tensor<2>, [batch, seq]: [usize; 2]) -> Tensor<3> {
    let width = x.dims()[1];
    x.reshape([batch, seq, width])
}

/// `layer` at every position.
pub fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let (x, shape) = rows(x);
    unrows(mm_kernels::linear_layer(layer, x), shape)
}

/// `layer` on `[rows, d_in]` rows (pooled features).
pub fn linear_rows(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    mm_kernels::linear_layer(layer, x)
}

/// `x · weight + bias` at every position (`weight` `[d_in, d_out]`, burn's layout).
pub fn linear_weights(x: Tensor<3>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let (x, shape) = rows(x);
    unrows(mm_kernels::linear(x, weight, bias), shape)
}

/// Multi-head self-attention on packed `q | k | v` features `[batch, seq, 3 * width]`; returns
/// the heads' context `[batch, seq, width]`.
pub fn attention(qkv: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let (qkv, shape) = rows(qkv);
    unrows(mm_kernels::attention(qkv, shape[1], heads, causal), shape)
}
