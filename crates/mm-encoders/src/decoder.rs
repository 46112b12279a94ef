//! CoCa's multimodal text decoder (open_clip's `MultimodalTransformer`): causal self-attention
//! blocks over the text tower's token states, each followed by a block cross-attending to the
//! image tower's pooled tokens, then a LayerNorm and an untied projection to the vocabulary.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops;
use crate::text::causal_mask;
use crate::transformer::{
    Activation, ContextKeys, EncoderLayer, KvCache, TransformerConfig, layer_norm, linear,
};

/// The decoder's shape (open_clip's `multimodal_cfg`; the MLP given by its width as in mm's
/// towers, where open_clip gives `mlp_ratio`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultimodalConfig {
    /// Longest text the decoder reads (its causal mask's size).
    pub context_length: usize,
    pub vocab_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default = "crate::transformer::default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

impl MultimodalConfig {
    fn transformer(&self) -> TransformerConfig {
        TransformerConfig::new(self.width, self.layers, self.heads, self.intermediate_size)
            .with_activation(self.activation)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_causal(true)
    }

    pub fn init(&self, device: &Device) -> MultimodalDecoder {
        let blocks = self.transformer();
        MultimodalDecoder {
            resblocks: (0..self.layers)
                .map(|_| blocks.init_layer(device))
                .collect(),
            cross_attn: (0..self.layers)
                .map(|_| blocks.init_cross_layer(device))
                .collect(),
            ln_final: layer_norm(self.width, self.layer_norm_eps, device),
            text_projection: linear(
                self.width,
                self.vocab_size,
                (self.width as f64).powf(-0.5),
                false,
                device,
            ),
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    /// Parameters of the decoder this config builds (checked against a built one in tests).
    pub fn num_params(&self) -> u64 {
        let (w, i, v) = (
            self.width as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let block = 2 * 2 * w + 4 * (w * w + w) + (w * i + i) + (i * w + w);
        // Each layer: a self-attention block and a cross-attention one with its `ln_1_kv`.
        self.layers as u64 * (2 * block + 2 * w) + 2 * w + w * v
    }
}

/// open_clip's parameter names: `resblocks.N`, `cross_attn.N`, `ln_final`, `text_projection`
/// (each block's own names are mm's, as in the towers).
#[derive(Module, Debug)]
pub struct MultimodalDecoder {
    pub resblocks: Vec<EncoderLayer>,
    pub cross_attn: Vec<EncoderLayer>,
    pub ln_final: LayerNorm,
    /// Bias-free, `[width, vocab]`.
    pub text_projection: Linear,
    pub layer_norm_eps: f64,
}

/// What cached decoding keeps between steps: every self-attention block's keys and values so
/// far, and every cross-attention block's projection of the image tokens.
#[derive(Clone, Debug)]
pub struct DecoderCache {
    pub(crate) text: Vec<KvCache>,
    image: Vec<ContextKeys>,
}

impl DecoderCache {
    /// Keeps rows `rows` in that order (beams reordered, finished rows dropped).
    pub fn select(&mut self, rows: &Tensor<1, Int>) {
        self.text.iter_mut().for_each(|cache| cache.select(rows));
        self.image.iter_mut().for_each(|keys| keys.select(rows));
    }
}

impl MultimodalDecoder {
    /// Next-token logits at every position: `image_tokens` `[batch, n, width]`, the text
    /// tower's token states `[batch, seq, width]` -> `[batch, seq, vocab]`.
    pub fn forward(&self, image_tokens: Tensor<3>, text_tokens: Tensor<3>) -> Tensor<3> {
        self.logits(self.hidden(image_tokens, text_tokens))
    }

    /// [`MultimodalDecoder::forward`]'s logits at some positions only, `[1, rows, vocab]`:
    /// `rows` index the `batch * seq` positions, row-major. Training needs the logits of the
    /// positions that are not padding alone, and the vocabulary projection (with its
    /// softmax) is most of a small decoder's cost.
    pub fn forward_at(
        &self,
        image_tokens: Tensor<3>,
        text_tokens: Tensor<3>,
        rows: Tensor<1, Int>,
    ) -> Tensor<3> {
        let hidden = self.hidden(image_tokens, text_tokens);
        let [batch, seq, width] = hidden.dims();
        let picked = hidden.reshape([batch * seq, width]).select(0, rows);
        self.logits(picked.unsqueeze_dim(0))
    }

    fn hidden(&self, image_tokens: Tensor<3>, text_tokens: Tensor<3>) -> Tensor<3> {
        self.resblocks
            .iter()
            .zip(&self.cross_attn)
            .fold(text_tokens, |hidden, (block, cross)| {
                cross.forward_cross(block.forward(hidden), image_tokens.clone())
            })
    }

    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let hidden = ops::layer_norm(&self.ln_final, self.layer_norm_eps, hidden);
        ops::linear(&self.text_projection, hidden)
    }

    /// A decoding run over these image tokens: their keys and values for every
    /// cross-attention block, no text yet.
    pub fn start(&self, image_tokens: Tensor<3>) -> DecoderCache {
        DecoderCache {
            text: vec![KvCache::default(); self.resblocks.len()],
            image: self
                .cross_attn
                .iter()
                .map(|cross| cross.cross_keys(image_tokens.clone()))
                .collect(),
        }
    }

    /// [`MultimodalDecoder::forward`] for new positions only (`[batch, new, width]`), the
    /// earlier ones read from `cache`, which they join.
    pub fn forward_cached(&self, text_tokens: Tensor<3>, cache: &mut DecoderCache) -> Tensor<3> {
        let [batch, new, _] = text_tokens.dims();
        let start = cache.text.first().map_or(0, KvCache::len);
        let mask = causal_mask(batch, start..start + new, &text_tokens.device());
        let layers = self.resblocks.iter().zip(&self.cross_attn);
        let caches = cache.text.iter_mut().zip(&cache.image);
        let hidden =
            layers
                .zip(caches)
                .fold(text_tokens, |hidden, ((block, cross), (kv, image))| {
                    cross.forward_cross_cached(block.forward_cached(hidden, kv, &mask), image)
                });
        self.logits(hidden)
    }
}
