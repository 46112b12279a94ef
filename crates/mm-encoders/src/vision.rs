//! The image tower (HF `CLIPVisionTransformer`): conv patch embedding, class token, learned
//! position embedding, pre-LayerNorm, transformer, post-LayerNorm on the class token.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops;
use crate::patch_dropout::keep_patches;
use crate::pooler::AttentionalPooler;
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
    /// Pool with learned queries (open_clip's `attentional_pool`, CoCa's image tower) instead
    /// of the class token: query 0 pools, the others are the tokens a decoder reads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attentional_pool: bool,
    #[serde(default = "default_attn_pooler_queries")]
    pub attn_pooler_queries: usize,
    #[serde(default = "default_attn_pooler_heads")]
    pub attn_pooler_heads: usize,
    /// A convolutional stem before the patch embedding (Xiao et al. 2021, "Early Convolutions
    /// Help Transformers See Better"): the output channels of 3x3 stride-2 convolutions, each
    /// followed by a ReLU; the patch embedding then cuts the stem's output into patches of
    /// `patch_size / 2^n` (the same grid). Its local, translation-equivariant features are what
    /// a small ViT trained from scratch otherwise needs far more samples to learn. Empty (HF's
    /// and open_clip's ViT): pixels go to the patch embedding directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv_stem: Vec<usize>,
}

fn default_attn_pooler_queries() -> usize {
    256
}

fn default_attn_pooler_heads() -> usize {
    8
}

impl VisionConfig {
    /// The side of the patches the patch embedding cuts from its input: `patch_size` pixels,
    /// or that divided by the stem's downsampling.
    pub fn embedding_patch(&self) -> usize {
        self.patch_size >> self.conv_stem.len()
    }

    /// Channels the patch embedding reads: RGB, or the stem's last convolution's.
    pub fn embedding_channels(&self) -> usize {
        self.conv_stem.last().copied().unwrap_or(3)
    }

    /// Patches per image side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub(crate) fn transformer(&self) -> TransformerConfig {
        TransformerConfig::new(self.width, self.layers, self.heads, self.intermediate_size)
            .with_activation(self.activation)
            .with_layer_norm_eps(self.layer_norm_eps)
    }

    /// Width of the pooled features: the tower's, or the joint space's (`embed_dim`) where
    /// an attentional pooler's queries live in it, as in open_clip.
    pub fn pool_dim(&self, embed_dim: usize) -> usize {
        match self.attentional_pool {
            true => embed_dim,
            false => self.width,
        }
    }
}

#[derive(Module, Debug)]
pub struct VisionEmbeddings {
    pub class_embedding: Param<Tensor<1>>,
    /// See [`VisionConfig::conv_stem`].
    pub conv_stem: Vec<Conv2d>,
    pub patch_embedding: Conv2d,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub embeddings: VisionEmbeddings,
    /// Spelled as in HF transformers (`pre_layrnorm`) so weight names match.
    pub pre_layrnorm: LayerNorm,
    pub encoder: Encoder,
    /// Pools instead of the class token where the config asks (see [`VisionConfig`]).
    pub attn_pool: Option<AttentionalPooler>,
    /// On the pooled features (every query's, with an attentional pooler).
    pub post_layernorm: LayerNorm,
    /// Both norms' epsilon, for the fused kernel (burn's `LayerNorm` keeps its own private).
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// The tower of a model whose joint space is `embed_dim` wide (where an attentional
    /// pooler's queries live).
    pub fn init(&self, embed_dim: usize, device: &Device) -> VisionTransformer {
        let w = self.width;
        let num_positions = self.grid_size() * self.grid_size() + 1;
        VisionTransformer {
            embeddings: VisionEmbeddings {
                class_embedding: normal((w as f64).powf(-0.5)).init([w], device),
                conv_stem: self.stem(device),
                patch_embedding: Conv2dConfig::new(
                    [self.embedding_channels(), w],
                    [self.embedding_patch(), self.embedding_patch()],
                )
                .with_stride([self.embedding_patch(), self.embedding_patch()])
                .with_bias(false)
                .with_initializer(normal(0.02))
                .init(device),
                position_embedding: EmbeddingConfig::new(num_positions, w)
                    .with_initializer(normal(0.02))
                    .init(device),
            },
            pre_layrnorm: layer_norm(w, self.layer_norm_eps, device),
            encoder: self.transformer().init(device),
            attn_pool: self.attentional_pool.then(|| {
                AttentionalPooler::init(
                    embed_dim,
                    w,
                    self.attn_pooler_heads,
                    self.attn_pooler_queries,
                    self.layer_norm_eps,
                    device,
                )
            }),
            post_layernorm: layer_norm(self.pool_dim(embed_dim), self.layer_norm_eps, device),
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl VisionConfig {
    /// The convolutions of [`VisionConfig::conv_stem`], He-initialised for their ReLUs.
    fn stem(&self, device: &Device) -> Vec<Conv2d> {
        let inputs = std::iter::once(3).chain(self.conv_stem.iter().copied());
        inputs
            .zip(&self.conv_stem)
            .map(|(input, &output)| {
                Conv2dConfig::new([input, output], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_initializer(normal((2.0 / (9 * input) as f64).sqrt()))
                    .init(device)
            })
            .collect()
    }
}

impl VisionEmbeddings {
    /// `[batch, 3, H, W]` pixels (f32, or any float dtype) -> `[batch, 1 + patches, width]`
    /// tokens in the dtype of the weights: the one place pixels enter a tower.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let pixels = crate::model::in_dtype(pixels, self.class_embedding.val().dtype());
        let batch = pixels.dims()[0];
        let stemmed = self
            .conv_stem
            .iter()
            .fold(pixels, |x, conv| relu(conv.forward(x)));
        let patches = crate::ops::patch_embedding(&self.patch_embedding, stemmed);
        let width = patches.dims()[2];
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
        if let Some(pool) = &self.attn_pool {
            // open_clip's CoCa: pool, norm every query, the first is the pooled features.
            let queries = pool.forward(last_hidden_state);
            let queries = ops::layer_norm(&self.post_layernorm, self.layer_norm_eps, queries);
            let [batch, _, width] = queries.dims();
            let pooled = queries.clone().slice([0..batch, 0..1, 0..width]);
            return TowerOutput {
                last_hidden_state: queries,
                pooled: pooled.reshape([batch, width]),
            };
        }
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
