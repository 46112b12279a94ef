//! The pre-norm transformer encoder shared by both towers (HF `CLIPEncoder`).
//!
//! Field names follow HF transformers (`self_attn.q_proj`, `layer_norm1`, `mlp.fc1`, ...), so a
//! module path here is the HF tensor name and weights map 1:1.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Bool, Device, Int, Tensor};
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

    /// A cross-attention block (see [`EncoderLayer`]) of this shape, never causal.
    pub fn init_cross_layer(&self, device: &Device) -> EncoderLayer {
        let mut layer = self.clone().with_causal(false).init_layer(device);
        layer.layer_norm_kv = Some(layer_norm(self.width, self.layer_norm_eps, device));
        layer
    }

    /// One block.
    pub fn init_layer(&self, device: &Device) -> EncoderLayer {
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
            layer_norm_kv: None,
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
    /// [`Encoder::forward`] under an attention mask (`[batch, seq, seq]`, or `[batch, 1, seq]`
    /// for key padding; `true` where a key is never attended), which replaces `causal`.
    pub fn forward_masked(&self, hidden: Tensor<3>, mask: &Tensor<3, Bool>) -> Tensor<3> {
        self.layers.iter().fold(hidden, |hidden, layer| {
            layer.forward_padded(hidden, Some(mask))
        })
    }

    /// The new positions `hidden` (`[batch, new, width]`) through every layer, each attending
    /// to its cached keys and values and the new ones (appended to `caches`, one per layer)
    /// under `mask` (`[batch, new, past + new]`): decoding costs one position per token.
    pub fn forward_cached(
        &self,
        hidden: Tensor<3>,
        caches: &mut [KvCache],
        mask: &Tensor<3, Bool>,
    ) -> Tensor<3> {
        self.layers
            .iter()
            .zip(caches)
            .fold(hidden, |hidden, (layer, cache)| {
                layer.forward_cached(hidden, cache, mask)
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

/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`. A cross-attention block (CoCa's decoder) is
/// the same block attending to another sequence normed by its own `layer_norm_kv`, as
/// open_clip builds both from one `ResidualAttentionBlock` (`ln_1_kv`).
#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: Attention,
    pub layer_norm1: LayerNorm,
    /// The attended sequence's norm, in cross-attention blocks only.
    pub layer_norm_kv: Option<LayerNorm>,
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

    /// [`EncoderLayer::forward`], never attending keys where `mask` is `true`.
    fn forward_padded(&self, hidden: Tensor<3>, mask: Option<&Tensor<3, Bool>>) -> Tensor<3> {
        let normed = self.norm(&self.layer_norm1, hidden.clone());
        let attended = match mask {
            None => self.self_attn.forward(normed),
            Some(mask) => self
                .self_attn
                .attend(normed.clone(), normed, Some(mask.clone())),
        };
        self.feed_forward(hidden + attended)
    }

    /// `x + mlp(ln2(x))`, the second half of every block.
    fn feed_forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        hidden.clone() + self.mlp.forward(self.norm(&self.layer_norm2, hidden))
    }

    /// [`Encoder::forward_cached`] for one layer.
    pub fn forward_cached(
        &self,
        hidden: Tensor<3>,
        cache: &mut KvCache,
        mask: &Tensor<3, Bool>,
    ) -> Tensor<3> {
        let normed = self.norm(&self.layer_norm1, hidden.clone());
        let attended = self.self_attn.attend_cached(normed, cache, mask.clone());
        self.feed_forward(hidden + attended)
    }

    /// A cross-attention block: `hidden` (`[batch, seq, width]`) attends to every position of
    /// `context` (`[batch, n, width]`, normed here by `layer_norm_kv`).
    pub fn forward_cross(&self, hidden: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let context = self.context_norm(context);
        let normed = self.norm(&self.layer_norm1, hidden.clone());
        self.feed_forward(hidden + self.self_attn.attend(normed, context, None))
    }

    /// [`EncoderLayer::forward_cross`] with the context's keys and values already projected
    /// ([`EncoderLayer::cross_keys`]), as cached decoding reuses them at every step.
    pub fn forward_cross_cached(&self, hidden: Tensor<3>, context: &ContextKeys) -> Tensor<3> {
        let normed = self.norm(&self.layer_norm1, hidden.clone());
        let (key, value) = (context.key.clone(), context.value.clone());
        let attended = self.self_attn.attend_projected(normed, key, value, None);
        self.feed_forward(hidden + attended)
    }

    /// `context`'s keys and values for [`EncoderLayer::forward_cross_cached`].
    pub fn cross_keys(&self, context: Tensor<3>) -> ContextKeys {
        let context = self.context_norm(context);
        ContextKeys {
            key: ops::linear(&self.self_attn.k_proj, context.clone()),
            value: ops::linear(&self.self_attn.v_proj, context),
        }
    }

    fn context_norm(&self, context: Tensor<3>) -> Tensor<3> {
        match &self.layer_norm_kv {
            Some(norm) => self.norm(norm, context),
            None => context,
        }
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
        mask: Option<Tensor<3, Bool>>,
    ) -> Tensor<3> {
        let key = ops::linear(&self.k_proj, context.clone());
        let value = ops::linear(&self.v_proj, context);
        self.attend_projected(hidden, key, value, mask)
    }

    /// [`Attention::attend`] over keys and values already projected (`[batch, n, width]`).
    pub fn attend_projected(
        &self,
        hidden: Tensor<3>,
        key: Tensor<3>,
        value: Tensor<3>,
        mask: Option<Tensor<3, Bool>>,
    ) -> Tensor<3> {
        let query = ops::linear(&self.q_proj, hidden);
        let context = ops::masked_attention(query, key, value, self.num_heads, mask);
        ops::linear(&self.out_proj, context)
    }

    /// Self-attention of new positions (`[batch, new, width]`) over `cache` and themselves,
    /// under `mask` (`[batch, new, past + new]`); their keys and values join the cache.
    pub fn attend_cached(
        &self,
        hidden: Tensor<3>,
        cache: &mut KvCache,
        mask: Tensor<3, Bool>,
    ) -> Tensor<3> {
        let width = self.q_proj.weight.dims()[1];
        let qkv = self.packed_qkv(hidden);
        let [batch, new, _] = qkv.dims();
        let part = |i: usize| {
            qkv.clone()
                .slice([0..batch, 0..new, i * width..(i + 1) * width])
        };
        let (query, key, value) = (part(0), part(1), part(2));
        let (key, value) = cache.append(key, value);
        let context = ops::masked_attention(query, key, value, self.num_heads, Some(mask));
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
            None => Tensor::zeros([p.weight.dims()[1]], (&hidden.device(), hidden.dtype())),
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

/// One attention layer's keys and values so far (`[batch, len, width]` each), for decoding
/// one position at a time; empty before the first step.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    entries: Option<(Tensor<3>, Tensor<3>)>,
}

impl KvCache {
    /// Appends the new positions' keys and values; returns all of them.
    fn append(&mut self, key: Tensor<3>, value: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let joined = match self.entries.take() {
            Some((keys, values)) => (
                Tensor::cat(vec![keys, key], 1),
                Tensor::cat(vec![values, value], 1),
            ),
            None => (key, value),
        };
        self.entries = Some(joined.clone());
        joined
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |(keys, _)| keys.dims()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps rows `rows` (`[new_batch]` indices, repeats allowed) in that order: beams
    /// reordered, finished rows dropped.
    pub fn select(&mut self, rows: &Tensor<1, Int>) {
        if let Some((keys, values)) = self.entries.take() {
            self.entries = Some((keys.select(0, rows.clone()), values.select(0, rows.clone())));
        }
    }
}

/// A cross-attention layer's keys and values of the attended sequence (`[batch, n, width]`),
/// projected once per decoding run.
#[derive(Clone, Debug)]
pub struct ContextKeys {
    key: Tensor<3>,
    value: Tensor<3>,
}

impl ContextKeys {
    /// Keeps rows `rows` in that order (see [`KvCache::select`]).
    pub fn select(&mut self, rows: &Tensor<1, Int>) {
        self.key = self.key.clone().select(0, rows.clone());
        self.value = self.value.clone().select(0, rows.clone());
    }
}
