//! The text tower (HF `CLIPTextTransformer`): token + position embedding, causal transformer,
//! final LayerNorm, features taken at the end-of-text token.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops;
use crate::transformer::{Activation, Encoder, TransformerConfig, layer_norm, normal};
use crate::vision::TowerOutput;

/// The text tower: a causal transformer (HF `CLIPTextConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
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
    /// Token whose position pools the sequence (`<|endoftext|>` in the CLIP vocabulary).
    /// `2` is HF's legacy value and means "pool at the largest id" (see `eot_index`).
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: u32,
}

fn default_eos_token_id() -> u32 {
    49407
}

impl TextConfig {
    pub(crate) fn transformer(&self) -> TransformerConfig {
        TransformerConfig::new(self.width, self.layers, self.heads, self.intermediate_size)
            .with_activation(self.activation)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_causal(true)
    }
}

#[derive(Module, Debug)]
pub struct TextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct TextTransformer {
    pub embeddings: TextEmbeddings,
    pub encoder: Encoder,
    pub final_layer_norm: LayerNorm,
    pub eos_token_id: u32,
    /// The final norm's epsilon, for the fused kernel (burn's `LayerNorm` keeps its own private).
    pub layer_norm_eps: f64,
}

impl TextConfig {
    pub fn init(&self, device: &Device) -> TextTransformer {
        TextTransformer {
            embeddings: TextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, self.width)
                    .with_initializer(normal(0.02))
                    .init(device),
                position_embedding: EmbeddingConfig::new(self.context_length, self.width)
                    .with_initializer(normal(0.01))
                    .init(device),
            },
            encoder: self.transformer().init(device),
            final_layer_norm: layer_norm(self.width, self.layer_norm_eps, device),
            eos_token_id: self.eos_token_id,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl TextEmbeddings {
    /// `[batch, seq]` token ids -> `[batch, seq, width]`; `seq` may be shorter than the context.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let seq = input_ids.dims()[1];
        let width = self.position_embedding.weight.dims()[1];
        let positions = self
            .position_embedding
            .weight
            .val()
            .slice([0..seq, 0..width])
            .unsqueeze_dim::<3>(0);
        self.token_embedding.forward(input_ids) + positions
    }
}

impl TextTransformer {
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> TowerOutput {
        let eot = eot_index(input_ids.clone(), self.eos_token_id);
        let hidden = self.encoder.forward(self.embeddings.forward(input_ids));
        let last_hidden_state =
            ops::layer_norm(&self.final_layer_norm, self.layer_norm_eps, hidden);
        let pooled = gather_rows(last_hidden_state.clone(), eot);
        TowerOutput {
            last_hidden_state,
            pooled,
        }
    }
}

/// Position `index[b]` of each sequence `b`: `[batch, seq, width]`, `[batch]` -> `[batch,
/// width]` (row `b * seq + index[b]` of the flattened states).
pub(crate) fn gather_rows(x: Tensor<3>, index: Tensor<1, Int>) -> Tensor<2> {
    let [batch, seq, width] = x.dims();
    let device = x.device();
    let rows = Tensor::<1, Int>::arange(0..batch as i64, &device).mul_scalar(seq as i64);
    let rows = rows.clone() + index.cast(rows.dtype());
    x.reshape([batch * seq, width]).select(0, rows)
}

/// `[batch, seq]`, `true` after each row's end-of-text token (see [`eot_index`]): the padding
/// that the causal mask keeps from the pooled token, but that attention from elsewhere (fusion)
/// must skip.
pub fn text_padding(input_ids: Tensor<2, Int>, eos_token_id: u32) -> Tensor<2, Bool> {
    let [batch, seq] = input_ids.dims();
    let device = input_ids.device();
    let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
        .reshape([1, seq])
        .expand([batch, seq]);
    let eot = eot_index(input_ids, eos_token_id)
        .cast(positions.dtype())
        .reshape([batch, 1])
        .expand([batch, seq]);
    positions.greater(eot)
}

/// HF's `eos_token_id` before transformers PR #24773. Configs that still carry it pool the text
/// at the largest token id rather than at the first `eos_token_id` (see [`eot_index`]).
pub const LEGACY_EOS_TOKEN_ID: u32 = 2;

/// The position whose features represent each row of `[batch, seq]` ids, as `[batch]`: the
/// first `eos_token_id`, exactly as HF's `CLIPTextTransformer` does.
///
/// Under the causal mask nothing after this token can influence it, so padding needs no
/// attention mask. A row without the token pools at position 0 (argmax of all-zeros).
/// Configs with HF's legacy `eos_token_id == 2` pool at the largest id instead (which is
/// `<|endoftext|>` in CLIP's vocabulary), as transformers still does for them.
pub fn eot_index(input_ids: Tensor<2, Int>, eos_token_id: u32) -> Tensor<1, Int> {
    let batch = input_ids.dims()[0];
    let scores = if eos_token_id == LEGACY_EOS_TOKEN_ID {
        input_ids
    } else {
        input_ids.equal_elem(eos_token_id as i64).int()
    };
    scores.argmax(1).reshape([batch])
}
