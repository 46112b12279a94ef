//! The pre-norm transformer encoder shared by both towers (HF `CLIPEncoder`).
//!
//! Field names follow HF transformers (`self_attn.q_proj`, `layer_norm1`, `mlp.fc1`, ...), so a
//! module path here is the HF tensor name and weights map 1:1.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Bool, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops;

/// Non-linearity in the transformer MLPs (HF `hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, as in OpenAI's CLIP checkpoints.
    #[default]
    QuickGelu,
    /// Exact (erf) GELU, as in most later CLIP-style models.
    Gelu,
}

/// Shape of one tower's transformer; both towers build from this one config.
#[derive(Config, Debug)]
pub struct TransformerConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    #[config(default = "Activation::QuickGelu")]
    pub activation: Activation,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Causal self-attention (the text tower) or full attention (the image tower).
    #[config(default = false)]
    pub causal: bool,
}

/// LayerNorm epsilon when a config gives none (HF CLIP's).
pub(crate) fn default_layer_norm_eps() -> f64 {
    1e-5
}

/// A `Linear` initialised as HF CLIP does: normal weights, zero bias.
pub(crate) fn linear(d_in: usize, d_out: usize, std: f64, bias: bool, device: &Device) -> Linear {
    Linear {
        weight: normal(std).init([d_in, d_out], device),
        bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
    }
}

pub(crate) fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

pub(crate) fn layer_norm(width: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNormConfig::new(width).with_epsilon(eps).init(device)
}

impl TransformerConfig {
    /// Builds the encoder with HF CLIP's initialisation (`CLIPPreTrainedModel._init_weights`).
    pub fn init(&self, device: &Device) -> Encoder {
        Encoder {
            layers: (0..self.layers).map(|_| self.init_layer(device)).collect(),
            grad_checkpointing: false,
        }
    }

    fn init_layer(&self, device: &Device) -> EncoderLayer {
        let w = self.width;
        let attn_std = (w as f64).powf(-0.5);
        let in_proj_std = attn_std * ((2 * self.layers) as f64).powf(-0.5);
        let fc_std = ((2 * w) as f64).powf(-0.5);
        EncoderLayer {
            self_attn: Attention {
                q_proj: linear(w, w, in_proj_std, true, device),
                k_proj: linear(w, w, in_proj_std, true, device),
                v_proj: linear(w, w, in_proj_std, true, device),
                out_proj: linear(w, w, attn_std, true, device),
                num_heads: self.heads,
                causal: self.causal,
            },
            layer_norm1: layer_norm(w, self.layer_norm_eps, device),
            mlp: Mlp {
                fc1: linear(w, self.intermediate_size, fc_std, true, device),
                fc2: linear(self.intermediate_size, w, in_proj_std, true, device),
                activation: self.activation,
            },
            layer_norm2: layer_norm(w, self.layer_norm_eps, device),
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

/// A stack of pre-norm residual blocks.
#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
    /// Keep only each block's input for the backward pass, which runs the block again
    /// (open_clip's `set_grad_checkpointing`): activation memory of one block instead of all,
    /// for one more forward pass. Training only; no effect without autodiff.
    #[module(skip)]
    pub grad_checkpointing: bool,
}

impl Encoder {
    /// [`Encoder::forward`] over a padded sequence: keys where `key_padding` (`[batch, seq]`)
    /// is `true` are never attended (full attention otherwise, whatever `causal` says).
    pub fn forward_masked(&self, hidden: Tensor<3>, key_padding: &Tensor<2, Bool>) -> Tensor<3> {
        self.layers.iter().fold(hidden, |hidden, layer| {
            layer.forward_padded(hidden, Some(key_padding))
        })
    }

    /// `[batch, seq, width]` -> `[batch, seq, width]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.layers
            .iter()
            .fold(hidden, |hidden, layer| match self.grad_checkpointing {
                true => ops::checkpoint(layer, hidden, EncoderLayer::forward),
                false => layer.forward(hidden),
            })
    }
}

/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: Attention,
    pub layer_norm1: LayerNorm,
    pub mlp: Mlp,
    pub layer_norm2: LayerNorm,
    /// Both norms' epsilon, for the fused kernel (burn's `LayerNorm` keeps its own private).
    pub layer_norm_eps: f64,
}

impl EncoderLayer {
    /// `[batch, seq, width]` -> the same shape.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.forward_padded(hidden, None)
    }

    /// [`EncoderLayer::forward`], never attending keys where `key_padding` is `true`.
    fn forward_padded(
        &self,
        hidden: Tensor<3>,
        key_padding: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let normed = self.norm(&self.layer_norm1, hidden.clone());
        let attended = match key_padding {
            None => self.self_attn.forward(normed),
            Some(padding) => self
                .self_attn
                .attend(normed.clone(), normed, Some(padding.clone())),
        };
        let hidden = hidden + attended;
        hidden.clone() + self.mlp.forward(self.norm(&self.layer_norm2, hidden))
    }

    fn norm(&self, norm: &LayerNorm, hidden: Tensor<3>) -> Tensor<3> {
        ops::layer_norm(norm, self.layer_norm_eps, hidden)
    }
}

/// Multi-head self-attention with separate q/k/v projections (HF `CLIPAttention`).
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
    pub causal: bool,
}

impl Attention {
    /// `[batch, seq, width]` -> the same shape.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let context = ops::attention(self.packed_qkv(hidden), self.num_heads, self.causal);
        ops::linear(&self.out_proj, context)
    }

    /// Attention of `hidden`'s positions over `context`'s (cross-attention between modalities,
    /// or `hidden` itself over a padded sequence), never attending keys where `key_padding`
    /// (`[batch, context_len]`) is `true`; `[batch, len, width]` out.
    pub fn attend(
        &self,
        hidden: Tensor<3>,
        context: Tensor<3>,
        key_padding: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let query = ops::linear(&self.q_proj, hidden);
        let key = ops::linear(&self.k_proj, context.clone());
        let value = ops::linear(&self.v_proj, context);
        let context = ops::masked_attention(query, key, value, self.num_heads, key_padding);
        ops::linear(&self.out_proj, context)
    }

    /// The q, k and v projections as one GEMM: `[batch, seq, width]` -> `[batch, seq, 3 *
    /// width]`, each position q | k | v. The weights stay three HF-named parameters; their
    /// concatenation is cheap next to the GEMMs (and the backward passes) it saves.
    fn packed_qkv(&self, hidden: Tensor<3>) -> Tensor<3> {
        let projections = [&self.q_proj, &self.k_proj, &self.v_proj];
        let weight = Tensor::cat(projections.map(|p| p.weight.val()).to_vec(), 1);
        let bias = projections.map(|p| match &p.bias {
            Some(bias) => bias.val(),
            None => Tensor::zeros([p.weight.dims()[1]], &hidden.device()),
        });
        ops::linear_weights(hidden, weight, Some(Tensor::cat(bias.to_vec(), 0)))
    }
}

/// The position-wise feed-forward block (HF `CLIPMLP`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    /// `[batch, seq, width]` -> the same shape.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let hidden = ops::linear(&self.fc1, hidden);
        let hidden = match self.activation {
            Activation::QuickGelu => ops::quick_gelu(hidden),
            Activation::Gelu => gelu(hidden),
        };
        ops::linear(&self.fc2, hidden)
    }
}
