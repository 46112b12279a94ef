//! Contrastive objectives over burn tensors, usable alone from research code.
//!
//! CLIP's loss: L2-normalise both embeddings, take cosine similarities scaled by
//! `exp(logit_scale)`, and average the cross-entropy of matching each image to its caption
//! and each caption to its image (the i-th image and i-th text of a batch are the pair).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// The logit scale is clamped at ln(100) as in CLIP, so the temperature never drops below 0.01.
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// Guards the division for an all-zero embedding.
const NORM_EPS: f64 = 1e-12;

/// Divides each row by its L2 norm.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(NORM_EPS);
    x / norm
}

/// Image-to-text and text-to-image logits (`[n_images, n_texts]` and its transpose).
#[derive(Debug, Clone)]
pub struct ClipLogits {
    pub logits_per_image: Tensor<2>,
    pub logits_per_text: Tensor<2>,
}

/// Cosine similarities of un-normalised embeddings scaled by `exp(min(logit_scale, ln 100))`.
///
/// `logit_scale` is the one-element learnable log temperature.
pub fn clip_logits(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
) -> ClipLogits {
    let scale = logit_scale
        .clamp_max(MAX_LOGIT_SCALE)
        .exp()
        .unsqueeze::<2>();
    let similarity = l2_normalize(image_embeds).matmul(l2_normalize(text_embeds).transpose());
    let logits_per_image = similarity * scale;
    ClipLogits {
        logits_per_text: logits_per_image.clone().transpose(),
        logits_per_image,
    }
}

/// Mean cross-entropy of `[n, n]` logits whose correct class for row i is column i.
fn diagonal_cross_entropy(logits: Tensor<2>) -> Tensor<1> {
    let n = logits.dims()[0];
    let targets = Tensor::<1, Int>::arange(0..n as i64, &logits.device()).reshape([n, 1]);
    log_softmax(logits, 1).gather(1, targets).mean().neg()
}

/// Symmetric InfoNCE (CLIP's loss) for paired embeddings `[n, d]`; returns a one-element tensor.
pub fn clip_loss(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
) -> Tensor<1> {
    let [n_images, _] = image_embeds.dims();
    let [n_texts, _] = text_embeds.dims();
    assert_eq!(n_images, n_texts, "clip_loss needs one caption per image");
    let logits = clip_logits(image_embeds, text_embeds, logit_scale);
    (diagonal_cross_entropy(logits.logits_per_image)
        + diagonal_cross_entropy(logits.logits_per_text))
    .div_scalar(2.0)
}
