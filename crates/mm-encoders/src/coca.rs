//! CoCa (Yu et al. 2022) as open_clip builds it: CLIP's two towers, the image tower pooling with
//! learned queries and the text tower with an appended class token, plus a caption decoder
//! that cross-attends to the image queries. One model both retrieves (the towers' features)
//! and describes (the decoder's next-token logits).

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::ConfigError;
use crate::decoder::{DecoderCache, MultimodalDecoder};
use crate::model::{ClipConfig, ClipModel, in_dtype};
use crate::transformer::KvCache;

/// open_clip's `CoCa`: `clip` holds `visual`, `text` and `logit_scale` (with mm's tower names:
/// every CLIP command reads a CoCa checkpoint's towers), `text_decoder` the decoder.
#[derive(Module, Debug)]
pub struct CocaModel {
    pub clip: ClipModel,
    pub text_decoder: MultimodalDecoder,
}

/// What one training step needs from the model ([`CocaModel::forward`]).
#[derive(Debug, Clone)]
pub struct CocaOutput {
    /// `[batch, embed_dim]`, not normalised.
    pub image_features: Tensor<2>,
    /// `[batch, embed_dim]`, not normalised.
    pub text_features: Tensor<2>,
    /// `[batch, seq - 1, vocab]`: at position `i`, the prediction of token `i + 1`.
    pub logits: Tensor<3>,
}

impl ClipConfig {
    /// A randomly initialised CoCa; the config must have a `[multimodal]` decoder.
    pub fn init_coca(&self, device: &Device) -> Result<CocaModel, ConfigError> {
        let decoder = self.multimodal.as_ref().ok_or_else(|| {
            ConfigError::new(
                "model",
                "multimodal",
                "a CoCa needs a [multimodal] decoder (see the coca-tiny preset)",
            )
        })?;
        Ok(self.init_with(device, None, |model| CocaModel {
            clip: model,
            text_decoder: decoder.init(device),
        }))
    }

    /// [`ClipConfig::init_coca`], the same for every `seed` (see [`ClipConfig::init_seeded`]).
    pub fn init_coca_seeded(&self, device: &Device, seed: u64) -> Result<CocaModel, ConfigError> {
        let decoder = self.multimodal.as_ref().ok_or_else(|| {
            ConfigError::new("model", "multimodal", "a CoCa needs a [multimodal] decoder")
        })?;
        Ok(self.init_with(device, Some(seed), |model| CocaModel {
            clip: model,
            text_decoder: decoder.init(device),
        }))
    }
}

impl CocaModel {
    /// `[batch, 3, H, W]` pixels -> the image features (`[batch, embed_dim]`, not normalised)
    /// and the decoder's image tokens (`[batch, n_queries - 1, embed_dim]`).
    pub fn encode_image(&self, pixels: Tensor<4>) -> (Tensor<2>, Tensor<3>) {
        let clip = &self.clip;
        let output = clip.vision_model.forward(pixels);
        let features = clip.visual_projection.forward(output.pooled);
        let [batch, queries, width] = output.last_hidden_state.dims();
        let tokens = output
            .last_hidden_state
            .slice([0..batch, 1..queries, 0..width]);
        (in_dtype(features, burn::tensor::DType::F32), tokens)
    }

    /// Teacher-forced training pass on `[batch, seq]` ids (start token first, padded with
    /// the text config's `pad_id`): both features, and the logits predicting `ids[:, 1:]`
    /// (all in f32, whatever the model computes in).
    pub fn forward(&self, pixels: Tensor<4>, input_ids: Tensor<2, Int>) -> CocaOutput {
        self.forward_with(pixels, input_ids, |decoder, image, text| {
            decoder.forward(image, text)
        })
    }

    /// [`CocaModel::forward`] with the logits at some positions only (`[1, rows, vocab]`;
    /// `rows` index the `batch * (seq - 1)` predicted positions, row-major), e.g. those whose
    /// label is not padding: the same loss for a fraction of the vocabulary projection.
    pub fn forward_at(
        &self,
        pixels: Tensor<4>,
        input_ids: Tensor<2, Int>,
        rows: Tensor<1, Int>,
    ) -> CocaOutput {
        self.forward_with(pixels, input_ids, |decoder, image, text| {
            decoder.forward_at(image, text, rows)
        })
    }

    fn forward_with(
        &self,
        pixels: Tensor<4>,
        input_ids: Tensor<2, Int>,
        decode: impl FnOnce(&MultimodalDecoder, Tensor<3>, Tensor<3>) -> Tensor<3>,
    ) -> CocaOutput {
        let (image_features, image_tokens) = self.encode_image(pixels);
        let text = self.clip.text_model.forward(input_ids);
        let text_features = self.clip.text_projection.forward(text.pooled);
        let [batch, seq, width] = text.last_hidden_state.dims();
        let inputs = text
            .last_hidden_state
            .slice([0..batch, 0..seq - 1, 0..width]);
        CocaOutput {
            image_features,
            text_features: in_dtype(text_features, burn::tensor::DType::F32),
            logits: in_dtype(
                decode(&self.text_decoder, image_tokens, inputs),
                burn::tensor::DType::F32,
            ),
        }
    }

    /// Next-token logits at every position of `[batch, seq]` ids (`[batch, seq, vocab]`),
    /// recomputing the whole prefix: the reference cached decoding must match.
    pub fn caption_logits(&self, image_tokens: Tensor<3>, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let tokens = self.clip.text_model.forward(input_ids).last_hidden_state;
        in_dtype(
            self.text_decoder.forward(image_tokens, tokens),
            burn::tensor::DType::F32,
        )
    }

    /// A cached decoding run over these image tokens (`[batch, n, width]`, one row per text).
    pub fn start_decoding(&self, image_tokens: Tensor<3>) -> DecodingState {
        DecodingState {
            device: image_tokens.device(),
            text: vec![KvCache::default(); self.clip.text_model.encoder.layers.len()],
            decoder: self.text_decoder.start(image_tokens),
            rows: Vec::new(),
        }
    }

    /// Feeds `new` ids (the same number for every row; all of a prompt at first) and returns
    /// the next-token logits after the last of them, `[rows, vocab]`. Each step computes the
    /// new positions only, attending to the cached ones.
    pub fn decode_step(&self, state: &mut DecodingState, new: &[Vec<u32>]) -> Tensor<2> {
        let device = state.device.clone();
        let count = new.first().map_or(0, Vec::len);
        if state.rows.is_empty() {
            state.rows = vec![Vec::new(); new.len()];
        }
        for (row, ids) in state.rows.iter_mut().zip(new) {
            row.extend_from_slice(ids);
        }
        let flat: Vec<i64> = new.iter().flatten().map(|&id| id as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [new.len(), count]), &device);
        let text = &self.clip.text_model;
        let tokens = text.forward_cached(ids, &state.rows, &mut state.text);
        let logits = self.text_decoder.forward_cached(tokens, &mut state.decoder);
        let [batch, seq, vocab] = logits.dims();
        let last = logits
            .slice([0..batch, seq - 1..seq, 0..vocab])
            .reshape([batch, vocab]);
        in_dtype(last, burn::tensor::DType::F32)
    }
}

/// The caches of a cached decoding run ([`CocaModel::start_decoding`]) and each row's ids.
#[derive(Clone, Debug)]
pub struct DecodingState {
    device: Device,
    text: Vec<KvCache>,
    decoder: DecoderCache,
    rows: Vec<Vec<u32>>,
}

impl DecodingState {
    /// Keeps rows `rows` in that order (beams reordered or copied, finished rows dropped).
    pub fn select(&mut self, rows: &[usize]) {
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
            &self.device,
        );
        self.text.iter_mut().for_each(|cache| cache.select(&index));
        self.decoder.select(&index);
        self.rows = rows.iter().map(|&r| self.rows[r].clone()).collect();
    }
}
