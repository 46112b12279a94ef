//! Cross-modal attention (co-attention, as ViLBERT / ALBEF's fusion layers): text tokens attend
//! to image tokens and image tokens to text tokens, each in a pre-norm residual block with an
//! MLP, then each side is pooled and the two are concatenated.

use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::{Bool, Device, Tensor};

use super::concat::concat;
use super::{Features, masked_mean};
use crate::ops;
use crate::transformer::{Activation, Attention, Mlp, layer_norm, linear};

/// LayerNorm epsilon of the fusion blocks (as the towers').
const EPS: f64 = 1e-5;

/// `x + attn(ln(x), ln(context))`, then `x + mlp(ln(x))`.
#[derive(Module, Debug)]
pub struct CrossAttentionBlock {
    pub cross_attn: Attention,
    pub layer_norm1: LayerNorm,
    pub layer_norm_context: LayerNorm,
    pub mlp: Mlp,
    pub layer_norm2: LayerNorm,
}

impl CrossAttentionBlock {
    pub fn new(width: usize, heads: usize, device: &Device) -> Self {
        let std = (width as f64).powf(-0.5);
        Self {
            cross_attn: Attention {
                q_proj: linear(width, width, std, true, device),
                k_proj: linear(width, width, std, true, device),
                v_proj: linear(width, width, std, true, device),
                out_proj: linear(width, width, std, true, device),
                num_heads: heads,
                causal: false,
            },
            layer_norm1: layer_norm(width, EPS, device),
            layer_norm_context: layer_norm(width, EPS, device),
            mlp: Mlp {
                fc1: linear(width, 4 * width, std, true, device),
                fc2: linear(
                    4 * width,
                    width,
                    (4.0 * width as f64).powf(-0.5),
                    true,
                    device,
                ),
                activation: Activation::Gelu,
            },
            layer_norm2: layer_norm(width, EPS, device),
        }
    }

    /// `tokens` `[batch, n, width]` attending to `context` `[batch, m, width]` (never to its
    /// padding) -> `[batch, n, width]`.
    pub fn forward(
        &self,
        tokens: Tensor<3>,
        context: Tensor<3>,
        context_padding: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let query = ops::layer_norm(&self.layer_norm1, EPS, tokens.clone());
        let context = ops::layer_norm(&self.layer_norm_context, EPS, context);
        let mask = context_padding.map(|padding| padding.unsqueeze_dim(1));
        let tokens = tokens + self.cross_attn.attend(query, context, mask);
        tokens.clone()
            + self
                .mlp
                .forward(ops::layer_norm(&self.layer_norm2, EPS, tokens))
    }
}

/// Both directions of cross-attention, pooled and concatenated: `[batch, 2 * width]`.
#[derive(Module, Debug)]
pub struct CoAttention {
    /// Text tokens attending to image tokens.
    pub text_to_image: CrossAttentionBlock,
    /// Image tokens attending to (unpadded) text tokens.
    pub image_to_text: CrossAttentionBlock,
}

impl CoAttention {
    pub fn new(width: usize, heads: usize, device: &Device) -> Self {
        Self {
            text_to_image: CrossAttentionBlock::new(width, heads, device),
            image_to_text: CrossAttentionBlock::new(width, heads, device),
        }
    }

    /// Image and text features (tokens of one width) -> `[batch, 2 * width]`: the mean of the
    /// attended image tokens, then of the attended non-padding text tokens.
    pub fn forward(&self, image: &Features, text: &Features) -> Tensor<2> {
        let text_tokens = self.text_to_image.forward(
            text.tokens.clone(),
            image.tokens.clone(),
            image.padding.clone(),
        );
        let image_tokens = self.image_to_text.forward(
            image.tokens.clone(),
            text.tokens.clone(),
            text.padding.clone(),
        );
        concat(
            masked_mean(image_tokens, image.padding.as_ref()),
            masked_mean(text_tokens, text.padding.as_ref()),
        )
    }
}
