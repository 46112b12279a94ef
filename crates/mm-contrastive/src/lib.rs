//! Contrastive objectives over burn tensors, usable alone from research code.
//!
//! CLIP's loss: L2-normalise both embeddings, take cosine similarities scaled by
//! `exp(logit_scale)`, and average the cross-entropy of matching each image to its caption
//! and each caption to its image (the i-th image and i-th text of a batch are the pair).
//!
//! SigLIP's loss: the same scaled cosines plus a learnable bias, and every image-text pair a
//! binary classification (positive on the diagonal) with a log-sigmoid loss, so no softmax
//! couples the batch.
//!
//! CoCa's captioning loss: next-token cross-entropy of a caption decoder, padding skipped
//! ([`caption_loss_sum`]); open_clip's `CoCaLoss` adds it (weight 2) to CLIP's (weight 1).

pub mod dist;

use burn::tensor::activation::{log_sigmoid, log_softmax};
use std::ops::Range;

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

/// `exp(min(logit_scale, ln 100))` as a `[1, 1]` factor for similarity matrices.
fn temperature_factor(logit_scale: Tensor<1>) -> Tensor<2> {
    logit_scale
        .clamp_max(MAX_LOGIT_SCALE)
        .exp()
        .unsqueeze::<2>()
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
    let scale = temperature_factor(logit_scale);
    let similarity = l2_normalize(image_embeds).matmul(l2_normalize(text_embeds).transpose());
    let logits_per_image = similarity * scale;
    ClipLogits {
        logits_per_text: logits_per_image.clone().transpose(),
        logits_per_image,
    }
}

/// Summed cross-entropy of logits `[b, n]` whose correct class for row i is column
/// `first + i` (the rows `first..first + b` of a batch's `[n, n]` logits).
fn diagonal_cross_entropy_sum(logits: Tensor<2>, first: usize) -> Tensor<1> {
    let b = logits.dims()[0];
    let targets = Tensor::<1, Int>::arange(first as i64..(first + b) as i64, &logits.device())
        .reshape([b, 1]);
    log_softmax(logits, 1).gather(1, targets).sum().neg()
}

/// The batch size of paired embeddings: the i-th image and the i-th text are a pair, so there
/// must be as many of each (a caller's bug otherwise, not an input error).
fn assert_paired(image_embeds: &Tensor<2>, text_embeds: &Tensor<2>) -> usize {
    let [n_images, _] = image_embeds.dims();
    let [n_texts, _] = text_embeds.dims();
    assert_eq!(
        n_images, n_texts,
        "a contrastive loss needs one caption per image"
    );
    n_images
}

/// The batch size of paired embeddings, of which `rows` must be a part (a caller's bug
/// otherwise).
fn assert_rows(image_embeds: &Tensor<2>, text_embeds: &Tensor<2>, rows: &Range<usize>) -> usize {
    let n = assert_paired(image_embeds, text_embeds);
    assert!(rows.end <= n, "rows {rows:?} of a batch of {n}");
    n
}

/// Symmetric InfoNCE (CLIP's loss) for paired embeddings `[n, d]`; returns a one-element tensor.
pub fn clip_loss(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
) -> Tensor<1> {
    let n = assert_paired(&image_embeds, &text_embeds);
    let logits = clip_logits(image_embeds, text_embeds, logit_scale);
    (diagonal_cross_entropy_sum(logits.logits_per_image, 0)
        + diagonal_cross_entropy_sum(logits.logits_per_text, 0))
    .div_scalar(2.0 * n as f64)
}

/// The share of [`clip_loss`] over the whole batch that its rows `rows` contribute: those
/// images against every caption and those captions against every image (open_clip's
/// `local_loss`, where each rank takes only its own rows of the global logits). Summed over
/// a partition of `0..n` the shares give the batch's loss, and so do their gradients.
pub fn clip_loss_rows(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    rows: Range<usize>,
) -> Tensor<1> {
    let n = assert_rows(&image_embeds, &text_embeds, &rows);
    let scale = temperature_factor(logit_scale);
    let (image, text) = (l2_normalize(image_embeds), l2_normalize(text_embeds));
    let per_image = image
        .clone()
        .slice(rows.clone())
        .matmul(text.clone().transpose());
    let per_text = text.slice(rows.clone()).matmul(image.transpose());
    (diagonal_cross_entropy_sum(per_image * scale.clone(), rows.start)
        + diagonal_cross_entropy_sum(per_text * scale, rows.start))
    .div_scalar(2.0 * n as f64)
}

/// SigLIP's initial `logit_scale` (ln 10: a temperature of 0.1), as in big_vision and
/// open_clip's `init_logit_scale` for SigLIP models.
pub const SIGLIP_LOGIT_SCALE_INIT: f64 = std::f64::consts::LN_10;

/// SigLIP's initial `logit_bias`: with n² pairs of which n positive, a large negative bias
/// starts the model near the prior that most pairs do not match.
pub const SIGLIP_LOGIT_BIAS_INIT: f64 = -10.0;

/// SigLIP logits `[n_images, n_texts]`: cosine similarities scaled by
/// `exp(min(logit_scale, ln 100))`, plus `logit_bias` (both one-element tensors).
/// `sigmoid` of a logit is the probability that the pair matches.
pub fn siglip_logits(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
) -> Tensor<2> {
    let logits = clip_logits(image_embeds, text_embeds, logit_scale).logits_per_image;
    logits + logit_bias.unsqueeze::<2>()
}

/// The pairwise sigmoid loss of SigLIP (Zhai et al. 2023; open_clip's `SigLipLoss`) for paired
/// embeddings `[n, d]`: `-sum over all (i, j) of log_sigmoid(z_ij * logit_ij) / n`, where
/// `z_ij` is 1 for the pair (i = j) and -1 otherwise. Returns a one-element tensor.
///
/// The sum over pairs splits over any partition of the batch, so accumulating micro-batches
/// (each against the cached features of the others) gives the big batch's gradient exactly.
pub fn siglip_loss(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
) -> Tensor<1> {
    let n = assert_paired(&image_embeds, &text_embeds);
    siglip_loss_rows(image_embeds, text_embeds, logit_scale, logit_bias, 0..n)
}

/// The share of [`siglip_loss`] over the whole batch that the images of rows `rows` contribute
/// (against every caption; still divided by the whole batch's size), so shares over a
/// partition of `0..n` sum to the batch's loss: each rank of a data-parallel run takes its own.
pub fn siglip_loss_rows(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
    rows: Range<usize>,
) -> Tensor<1> {
    let n = assert_rows(&image_embeds, &text_embeds, &rows);
    let device = image_embeds.device();
    let logits = siglip_logits(
        image_embeds.slice(rows.clone()),
        text_embeds,
        logit_scale,
        logit_bias,
    );
    // +1 where image i meets its own caption, -1 elsewhere.
    let signs = Tensor::<2>::eye(n, &device)
        .slice(rows)
        .mul_scalar(2.0)
        .sub_scalar(1.0);
    log_sigmoid(logits * signs).sum().neg().div_scalar(n as f64)
}

/// CoCa's captioning loss, summed: over every position of `labels` (`[batch, seq]`, the
/// next token at each position) that is not `pad_id`, `-log softmax(logits)[label]`
/// (`logits` `[batch, seq, vocab]`). Returns the sum and how many positions it covers, so
/// that shares of a batch split over ranks or micro-batches add up to its mean (open_clip's
/// `CrossEntropyLoss(ignore_index=pad_id)` is `sum / count`).
pub fn caption_loss_sum(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    pad_id: u32,
) -> (Tensor<1>, usize) {
    let [batch, seq, vocab] = logits.dims();
    assert_eq!(labels.dims(), [batch, seq], "one label per logit row");
    let labels = labels.reshape([batch * seq, 1]);
    let counted = labels.clone().not_equal_elem(pad_id as i64);
    let count = counted.clone().int().sum().into_scalar::<i64>() as usize;
    let picked = log_softmax(logits.reshape([batch * seq, vocab]), 1).gather(1, labels);
    let mask = counted.float().cast(picked.dtype());
    ((picked * mask).sum().neg(), count)
}

/// open_clip's `CoCaLoss` on one batch: `clip_weight` x [`clip_loss`] + `caption_weight` x
/// the mean captioning cross-entropy (see [`caption_loss_sum`]), `weights` being
/// `(clip_weight, caption_weight)`. Returns both weighted parts.
pub fn coca_loss(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    pad_id: u32,
    (clip_weight, caption_weight): (f64, f64),
) -> (Tensor<1>, Tensor<1>) {
    let contrastive = clip_loss(image_embeds, text_embeds, logit_scale).mul_scalar(clip_weight);
    let (sum, count) = caption_loss_sum(logits, labels, pad_id);
    (
        contrastive,
        sum.mul_scalar(caption_weight / count.max(1) as f64),
    )
}
