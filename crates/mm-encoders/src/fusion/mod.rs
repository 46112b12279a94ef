//! Fusing the image and text towers for tasks that need both modalities: classifying an
//! (image, text) pair, image–text matching, question answering as classification.
//!
//! Two choices make a fusion model, and they are independent:
//! - the **stage**, how deep the modalities interact before they are merged:
//!   [`FusionStage::Late`] (decision fusion: one classifier per modality, their decisions
//!   merged), [`FusionStage::Mid`] (each tower encodes its input alone; their outputs are
//!   merged), [`FusionStage::Early`] (one transformer stream over image patches and text tokens
//!   together, as ViLT; see [`early`]);
//! - the **operator** that merges two representations: a weighted [`sum`], [`concat`]enation,
//!   element-wise [`product`], a [`gated`] multimodal unit, or cross-modal [`attention`].
//!
//! Sum, product and the gate need both sides in one space. mm uses CLIP's joint embedding
//! space: the towers' projections map pooled outputs (and, for attention, every token) of both
//! modalities to `embed_dim`, where contrastive pretraining has already aligned them. (Adding a
//! 768-wide text vector to a 512-wide image vector, as a sketch in mm's founding documents
//! does, is not defined; feeding their sum to a layer sized for their concatenation is not
//! either.) [`FusionClassifier`] puts a stage, an operator and an MLP head on a CLIP model.

pub mod attention;
pub mod classifier;
pub mod concat;
pub mod early;
pub mod gated;
pub mod head;
pub mod late;
pub mod merge;
pub mod product;
pub mod sum;

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

pub use classifier::{Fusion, FusionClassifier, FusionConfig, MAX_HEAD_HIDDEN};

/// How deep the modalities interact before they are merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionStage {
    /// One classifier per modality; their decisions are merged.
    Late,
    /// Each tower encodes its input alone; their outputs are merged.
    #[default]
    Mid,
    /// One transformer stream over image patches and text tokens together.
    Early,
}

/// How two representations are merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionOperator {
    /// `α·image + (1-α)·text`, α fixed or learned.
    Sum,
    /// `[image; text]`.
    #[default]
    Concat,
    /// `image ⊙ text`.
    Product,
    /// A gated multimodal unit (Arevalo et al. 2017): a learned per-feature mix.
    Gated,
    /// Text tokens attend to image tokens and the reverse; both pooled.
    Attention,
}

/// Which modalities a classifier sees: both (fusion), or one alone (the baselines a fusion
/// model must beat).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modalities {
    #[default]
    Both,
    Image,
    Text,
}

/// One modality's representation where it is fused, every part `width` wide.
#[derive(Clone, Debug)]
pub struct Features {
    /// `[batch, width]`: the one vector of each input (class token / end-of-text token).
    pub pooled: Tensor<2>,
    /// `[batch, n, width]`: every position.
    pub tokens: Tensor<3>,
    /// `[batch, n]`, `true` at padding (text after its end token); `None` when nothing is.
    pub padding: Option<Tensor<2, Bool>>,
}

/// The mean over positions of `tokens` `[batch, n, width]` that are not padding (`[batch, n]`,
/// `true` at padding), `[batch, width]`.
pub fn masked_mean(tokens: Tensor<3>, padding: Option<&Tensor<2, Bool>>) -> Tensor<2> {
    let [batch, n, width] = tokens.dims();
    match padding {
        None => tokens.mean_dim(1).reshape([batch, width]),
        Some(padding) => {
            let keep = padding
                .clone()
                .bool_not()
                .float()
                .cast(tokens.dtype())
                .reshape([batch, n, 1]);
            let count = keep.clone().sum_dim(1).reshape([batch, 1]);
            (tokens * keep).sum_dim(1).reshape([batch, width]) / count
        }
    }
}

impl Features {
    /// The mean of the non-padding tokens, `[batch, width]`.
    pub fn mean_tokens(&self) -> Tensor<2> {
        masked_mean(self.tokens.clone(), self.padding.as_ref())
    }
}
