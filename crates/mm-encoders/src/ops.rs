//! The one door from model code to mm-kernels. Modules pass `[batch, seq, width]` tensors;
//! here they become `[batch * seq, width]` rows, so that every projection is one 2-D GEMM (and
//! its backward two more) instead of `batch` small ones whose weight gradients autodiff would
//! have to sum. Each op runs a fused Flex kernel or burn's composite op, chosen by the tensor's
//! device and dtype inside mm-kernels: a new kernel changes this file and nothing above it.

use burn::nn::Linear;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
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

/// A ViT's patch embedding: `conv` (a `p x p` convolution of stride `p`) over `x`
/// `[batch, channels, H, W]`, as `[batch, patches, width]` (patches row by row). Computed as one
/// GEMM of the unfolded patches `[batch * patches, channels * p * p]` by the flattened kernel,
/// so it runs on the same GEMMs (and in the same precision, bf16 included) as every other
/// projection instead of a convolution's im2col; its input gradient is skipped, as pixels need
/// none. Any other convolution runs as one.
pub fn patch_embedding(conv: &Conv2d, x: Tensor<4>) -> Tensor<3> {
    let [batch, channels, height, width] = x.dims();
    let [out, _, p, q] = conv.weight.dims();
    let is_patches = conv.stride == [p, q]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Valid);
    if !is_patches {
        let embedded = conv.forward(x);
        let [_, out, gh, gw] = embedded.dims();
        return embedded.reshape([batch, out, gh * gw]).swap_dims(1, 2);
    }
    let (gh, gw) = (height / p, width / q);
    // A convolution without padding ignores the pixels past the last whole patch.
    let x = match (gh * p, gw * q) == (height, width) {
        true => x,
        false => x.slice([0..batch, 0..channels, 0..gh * p, 0..gw * q]),
    };
    let patches = x
        .reshape([batch, channels, gh, p, gw, q])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([batch * gh * gw, channels * p * q]);
    let kernel = conv
        .weight
        .val()
        .reshape([out, channels * p * q])
        .transpose();
    let bias = conv.bias.as_ref().map(|bias| bias.val());
    mm_kernels::linear(patches, kernel, bias).reshape([batch, gh * gw, out])
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
