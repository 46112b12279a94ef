//! Early fusion: one transformer stream over image patches and text tokens together (ViLT,
//! Kim et al. 2021), so every layer mixes the modalities.
//!
//! The stream is the image tower's own encoder (so it starts from the pretrained weights); the
//! text enters as the text tower's token + position embeddings, projected to the image
//! tower's width, and each position gets a learned modality embedding. Text padding is never
//! attended. The outputs go through the image tower's final norm and projection into the joint
//! space, so the operators see the same kind of features as in mid fusion: the image part
//! pooled at its class token, the text part at its end-of-text token.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Bool, Device, Int, Tensor};

use super::Features;
use crate::model::ClipModel;
use crate::ops;
use crate::text::{eot_index, gather_rows, text_padding};
use crate::transformer::{linear, normal};

#[derive(Module, Debug)]
pub struct JointStream {
    /// Text embeddings (text width) into the image tower's width.
    pub text_proj: Linear,
    /// `[2, image width]`: added to every image (row 0) and text (row 1) position.
    pub modality_embedding: Param<Tensor<2>>,
}

impl JointStream {
    pub fn new(clip: &ClipModel, device: &Device) -> Self {
        let image_width = clip.vision_model.embeddings.class_embedding.dims()[0];
        let text_width = clip.text_model.embeddings.token_embedding.weight.dims()[1];
        Self {
            text_proj: linear(
                text_width,
                image_width,
                (text_width as f64).powf(-0.5),
                true,
                device,
            ),
            modality_embedding: normal(0.02).init([2, image_width], device),
        }
    }

    /// Image and text features in the joint space, after the shared stream.
    pub fn forward(
        &self,
        clip: &ClipModel,
        pixels: Tensor<4>,
        input_ids: Tensor<2, Int>,
    ) -> (Features, Features) {
        let vision = &clip.vision_model;
        let eos = clip.text_model.eos_token_id;
        let image = vision.embeddings.forward(pixels);
        let text = ops::linear(
            &self.text_proj,
            clip.text_model.embeddings.forward(input_ids.clone()),
        );
        let [batch, n_image, width] = image.dims();
        let n_text = text.dims()[1];
        let modality = |row: usize| {
            self.modality_embedding
                .val()
                .slice([row..row + 1, 0..width])
                .reshape([1, 1, width])
        };
        let joint = Tensor::cat(vec![image + modality(0), text + modality(1)], 1);
        let joint = ops::layer_norm(&vision.pre_layrnorm, vision.layer_norm_eps, joint);
        let text_pad = text_padding(input_ids.clone(), eos);
        let padding = Tensor::cat(
            vec![
                Tensor::<2, Bool>::full([batch, n_image], false, &text_pad.device()),
                text_pad.clone(),
            ],
            1,
        );
        let hidden = vision
            .encoder
            .forward_masked(joint, &padding.unsqueeze_dim(1));
        let hidden = ops::layer_norm(&vision.post_layernorm, vision.layer_norm_eps, hidden);
        let tokens = unit(ops::linear(&clip.visual_projection, hidden));
        let embed = tokens.dims()[2];
        let image_tokens = tokens.clone().slice([0..batch, 0..n_image, 0..embed]);
        let text_tokens = tokens.slice([0..batch, n_image..n_image + n_text, 0..embed]);
        let image_pooled = image_tokens
            .clone()
            .slice([0..batch, 0..1, 0..embed])
            .reshape([batch, embed]);
        let text_pooled = gather_rows(text_tokens.clone(), eot_index(input_ids, eos));
        (
            Features {
                pooled: image_pooled,
                tokens: image_tokens,
                padding: None,
            },
            Features {
                pooled: text_pooled,
                tokens: text_tokens,
                padding: Some(text_pad),
            },
        )
    }
}

/// Each vector scaled to unit length (the joint space compares directions).
pub(crate) fn unit<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = x
        .clone()
        .powi_scalar(2)
        .sum_dim(D - 1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}
