//! The text tower (HF `CLIPTextTransformer`): token + position embedding, causal transformer,
//! final LayerNorm, features taken at the end-of-text token.

use std::ops::Range;

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::ops;
use crate::transformer::{Activation, Encoder, KvCache, TransformerConfig, layer_norm, normal};
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
    /// Append a learned class token and pool there (open_clip's `embed_cls`, CoCa's text
    /// tower), so the pooled features need not come from the token a decoder predicts from.
    /// Keys after padding are then masked (open_clip's rule, see [`class_token_mask`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embed_cls: bool,
    /// The id texts are padded with (open_clip's `pad_id`; 0 in its tokenizer): with
    /// `embed_cls`, the mask and the caption loss skip it.
    #[serde(default)]
    pub pad_id: u32,
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

    /// Learned positions: the context, and the class token's after it.
    pub fn num_positions(&self) -> usize {
        self.context_length + self.embed_cls as usize
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
    /// The appended class token (`[width]`, open_clip's `cls_emb`), where the config asks.
    pub cls_emb: Option<Param<Tensor<1>>>,
    pub encoder: Encoder,
    pub final_layer_norm: LayerNorm,
    pub eos_token_id: u32,
    pub pad_id: u32,
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
                position_embedding: EmbeddingConfig::new(self.num_positions(), self.width)
                    .with_initializer(normal(0.01))
                    .init(device),
            },
            cls_emb: self
                .embed_cls
                .then(|| normal(0.01).init([self.width], device)),
            encoder: self.transformer().init(device),
            final_layer_norm: layer_norm(self.width, self.layer_norm_eps, device),
            eos_token_id: self.eos_token_id,
            pad_id: self.pad_id,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl TextEmbeddings {
    /// `[batch, seq]` token ids -> `[batch, seq, width]`; `seq` may be shorter than the context.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_at(input_ids, 0)
    }

    /// [`TextEmbeddings::forward`] of ids at positions `start..` (decoding a continuation).
    pub fn forward_at(&self, input_ids: Tensor<2, Int>, start: usize) -> Tensor<3> {
        let tokens = self.token_embedding.forward(input_ids);
        self.add_positions(tokens, start)
    }

    /// `embedded` (`[batch, seq, width]`) plus the position embeddings of `start..start + seq`.
    fn add_positions(&self, embedded: Tensor<3>, start: usize) -> Tensor<3> {
        let seq = embedded.dims()[1];
        let width = self.position_embedding.weight.dims()[1];
        let positions = self
            .position_embedding
            .weight
            .val()
            .slice([start..start + seq, 0..width])
            .unsqueeze_dim::<3>(0);
        embedded + positions
    }
}

impl TextTransformer {
    /// Pooled features and every position's: the final LayerNorm'd states, pooled at the end
    /// token; with a class token, the states before the final norm (open_clip's `tokens`, what
    /// CoCa's decoder reads) and the class token's, normed.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> TowerOutput {
        if let Some(cls) = &self.cls_emb {
            return self.forward_class_token(input_ids, cls.val());
        }
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

impl TextTransformer {
    /// open_clip's `TextTransformer.forward` with `embed_cls`: the class token appended after
    /// the ids, causal attention with the keys after padding masked.
    fn forward_class_token(&self, input_ids: Tensor<2, Int>, cls: Tensor<1>) -> TowerOutput {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let rows = id_rows(&input_ids);
        let tokens = self.embeddings.token_embedding.forward(input_ids);
        let width = tokens.dims()[2];
        let cls = cls.reshape([1, 1, width]).expand([batch, 1, width]);
        let hidden = self
            .embeddings
            .add_positions(Tensor::cat(vec![tokens, cls], 1), 0);
        let mask = class_token_mask(&rows, self.pad_id, 0..seq + 1, &device);
        let hidden = self.encoder.forward_masked(hidden, &mask);
        let class = hidden.clone().slice([0..batch, seq..seq + 1, 0..width]);
        let pooled = ops::layer_norm(&self.final_layer_norm, self.layer_norm_eps, class);
        TowerOutput {
            last_hidden_state: hidden.slice([0..batch, 0..seq, 0..width]),
            pooled: pooled.reshape([batch, width]),
        }
    }

    /// The un-normed states of new ids (`[batch, new]`, at positions `start..`) through the
    /// transformer, attending to the cached positions before them: CoCa's decoding, one
    /// position per token. `rows` are each row's ids so far, these included.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<2, Int>,
        rows: &[Vec<u32>],
        caches: &mut [KvCache],
    ) -> Tensor<3> {
        let device = input_ids.device();
        let new = input_ids.dims()[1];
        let start = caches.first().map_or(0, KvCache::len);
        let hidden = self.embeddings.forward_at(input_ids, start);
        let mask = match self.cls_emb {
            Some(_) => class_token_mask(rows, self.pad_id, start..start + new, &device),
            None => causal_mask(rows.len(), start..start + new, &device),
        };
        self.encoder.forward_cached(hidden, caches, &mask)
    }
}

/// Each row of `[batch, seq]` ids on the host.
pub(crate) fn id_rows(input_ids: &Tensor<2, Int>) -> Vec<Vec<u32>> {
    let seq = input_ids.dims()[1];
    let ids = input_ids
        .to_data()
        .try_into_vec_as::<i64>()
        .unwrap_or_default();
    ids.chunks(seq.max(1))
        .map(|row| row.iter().map(|&id| id as u32).collect())
        .collect()
}

/// open_clip's CoCa text mask for queries at `queries` over keys `0..queries.end` (`true` =
/// not attended, `[batch, queries.len(), queries.end]`): causal, and key `k > 0` only if the
/// token before it is not padding. That is open_clip's legacy (default) placement of the class
/// token's column, which the released CoCa weights were trained with: keys shifted by one, so
/// the first padding position is still attended and position 0 always is. The class token is
/// the position after the ids (`rows[b].len()`), its key valid if the last id is not padding.
pub fn class_token_mask(
    rows: &[Vec<u32>],
    pad_id: u32,
    queries: Range<usize>,
    device: &Device,
) -> Tensor<3, Bool> {
    let keys = queries.end;
    let mut blocked = Vec::with_capacity(rows.len() * queries.len() * keys);
    for row in rows {
        for query in queries.clone() {
            blocked.extend((0..keys).map(|key| {
                key > query || (key > 0 && row.get(key - 1).is_none_or(|&id| id == pad_id))
            }));
        }
    }
    mask_tensor(blocked, [rows.len(), queries.len(), keys], device)
}

/// Causal mask for queries at `queries` over keys `0..queries.end` (`[batch, n, keys]`).
pub fn causal_mask(batch: usize, queries: Range<usize>, device: &Device) -> Tensor<3, Bool> {
    let keys = queries.end;
    let mut blocked = Vec::with_capacity(batch * queries.len() * keys);
    for _ in 0..batch {
        for query in queries.clone() {
            blocked.extend((0..keys).map(|key| key > query));
        }
    }
    mask_tensor(blocked, [batch, queries.len(), keys], device)
}

fn mask_tensor(blocked: Vec<bool>, shape: [usize; 3], device: &Device) -> Tensor<3, Bool> {
    Tensor::from_data(TensorData::new(blocked, shape), device)
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
