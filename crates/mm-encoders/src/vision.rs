//! The image tower (HF `CLIPVisionTransformer`): conv patch embedding, class token, learned
//! position embedding, pre-LayerNorm, transformer, post-LayerNorm on the class token.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops;
use crate::patch_dropout::keep_patches;
use crate::transformer::{Activation, Encoder, TransformerConfig, layer_norm, normal};

/// The image tower: a ViT (HF `CLIPVisionConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default = "crate::transformer::default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per image side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub(crate) fn transformer(&self) -> TransformerConfig {
        TransformerConfig::new(self.width, self.layers, self.heads, self.intermediate_size)
            .with_activation(self.activation)
            .with_layer_norm_eps(self.layer_norm_eps)
    }
}

#[derive(Module, Debug)]
pub struct VisionEmbeddings {
    pub class_embedding: Param<Tensor<1>>,
    pub patch_embedding: Conv2d,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub embeddings: VisionEmbeddings,
    /// Spelled as in HF transformers (`pre_layrnorm`) so weight names match.
    pub pre_layrnorm: LayerNorm,
    pub encoder: Encoder,
    pub post_layernorm: LayerNorm,
    /// Both norms' epsilon, for the fused kernel (burn's `LayerNorm` keeps its own private).
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    pub fn init(&self, device: &Device) -> VisionTransformer {
        let w = self.width;
        let num_positions = self.grid_size() * self.grid_size() + 1;
        VisionTransformer {
            embeddings: VisionEmbeddings {
                class_embedding: normal((w as f64).powf(-0.5)).init([w], device),
                patch_embedding: Conv2dConfig::new([3, w], [self.patch_size, self.patch_size])
                    .with_stride([self.patch_size, self.patch_size])
                    .with_bias(false)
                    .with_initializer(normal(0.02))
                    .init(device),
                position_embedding: EmbeddingConfig::new(num_positions, w)
                    .with_initializer(normal(0.02))
                    .init(device),
            },
            pre_layrnorm: layer_norm(w, self.layer_norm_eps, device),
            encoder: self.transformer().init(device),
            post_layernorm: layer_norm(w, self.layer_norm_eps, device),
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl VisionEmbeddings {
    /// `[batch, 3, H, W]` pixels -> `[batch, 1 + patches, width]` tokens.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let batch = pixels.dims()[0];
        let patches = self.patch_embedding.forward(pixels); // [B, W, gh, gw]
        let [_, width, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, width, gh * gw]).swap_dims(1, 2);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, width])
            .expand([batch, 1, width]);
        let tokens = Tensor::cat(vec![class, patches], 1);
        let positions = self.position_embedding.weight.val().unsqueeze_dim::<3>(0);
        tokens + positions
    }
}

/// Outputs of a tower: every position, and the one vector that represents the input.
#[derive(Debug, Clone)]
pub struct TowerOutput {
    /// `[batch, seq, width]`
    pub last_hidden_state: Tensor<3>,
    /// `[batch, width]`, before the projection into the joint space.
    pub pooled: Tensor<2>,
}

impl VisionTransformer {
    /// Patch tokens per image (the class token not counted).
    pub fn num_patches(&self) -> usize {
        self.embeddings.position_embedding.weight.dims()[0] - 1
    }

    pub fn forward(&self, pixels: Tensor<4>) -> TowerOutput {
        self.forward_kept(pixels, None)
    }

    /// [`VisionTransformer::forward`] on the class token and only the patches at `kept`
    /// (`[batch, k]` indices among the patches, see [`crate::PatchDropout`]), or on all of them.
    pub fn forward_kept(&self, pixels: Tensor<4>, kept: Option<Tensor<2, Int>>) -> TowerOutput {
        let embeddings = self.embeddings.forward(pixels);
        let embeddings = match kept {
            Some(kept) => keep_patches(embeddings, kept),
            None => embeddings,
        };
        let hidden = ops::layer_norm(&self.pre_layrnorm, self.layer_norm_eps, embeddings);
        let last_hidden_state = self.encoder.forward(hidden);
        let [batch, _, width] = last_hidden_state.dims();
        let class_token = last_hidden_state
            .clone()
            .slice([0..batch, 0..1, 0..width])
            .reshape([batch, width]);
        TowerOutput {
            last_hidden_state,
            pooled: ops::layer_norm(&self.post_layernorm, self.layer_norm_eps, class_token),
        }
    }
}
