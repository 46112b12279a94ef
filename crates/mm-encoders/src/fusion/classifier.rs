//! [`FusionClassifier`]: a CLIP model's towers, a fusion stage and operator, and a head.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor};

use super::early::{JointStream, unit};
use super::head::Head;
use super::late::LateFusion;
use super::merge::Merge;
use super::{Features, FusionOperator, FusionStage, Modalities};
use crate::model::{ClipModel, in_dtype, initialised};
use crate::ops;
use crate::text::text_padding;

/// The widest MLP head a classifier may have (4x the widest tower).
pub const MAX_HEAD_HIDDEN: usize = 4 * crate::config::MAX_WIDTH;

/// What to put on a CLIP model to classify (image, text) inputs.
#[derive(Config, Debug, PartialEq)]
pub struct FusionConfig {
    /// Classes of the task.
    pub num_classes: usize,
    #[config(default = "FusionStage::Mid")]
    pub stage: FusionStage,
    #[config(default = "FusionOperator::Concat")]
    pub operator: FusionOperator,
    /// Both (fusion), or one modality alone (a baseline; stage and operator unused).
    #[config(default = "Modalities::Both")]
    pub modalities: Modalities,
    /// Hidden width of the MLP head(s).
    #[config(default = 256)]
    pub head_hidden: usize,
    /// `sum` (and late `product`): the image side's weight α, in (0, 1); learned from there
    /// unless `learn_alpha = false`.
    #[config(default = 0.5)]
    pub alpha: f64,
    #[config(default = true)]
    pub learn_alpha: bool,
    /// `attention`: heads of the cross-attention blocks (must divide `embed_dim`).
    #[config(default = 4)]
    pub heads: usize,
    /// The classes' names, in output order (HF's `id2label`): empty, or `num_classes` of them.
    #[config(default = "Vec::new()")]
    pub class_names: Vec<String>,
}

impl FusionConfig {
    /// The first thing wrong with this config for a CLIP model with joint width `embed_dim`:
    /// the key and why.
    pub fn check(&self, embed_dim: usize) -> Result<(), (&'static str, String)> {
        if self.num_classes < 2 {
            return Err((
                "num_classes",
                format!(
                    "{} (a classifier needs at least 2 classes)",
                    self.num_classes
                ),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(("alpha", format!("{} (must be in (0, 1))", self.alpha)));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.num_classes {
            return Err((
                "class_names",
                format!(
                    "{} names for num_classes = {}",
                    self.class_names.len(),
                    self.num_classes
                ),
            ));
        }
        if !(1..=MAX_HEAD_HIDDEN).contains(&self.head_hidden) {
            return Err((
                "head_hidden",
                format!("{} (must be in 1..={MAX_HEAD_HIDDEN})", self.head_hidden),
            ));
        }
        let attention = self.operator == FusionOperator::Attention;
        if attention && (self.heads == 0 || !embed_dim.is_multiple_of(self.heads)) {
            return Err((
                "heads",
                format!("{} (must divide embed_dim {embed_dim})", self.heads),
            ));
        }
        Ok(())
    }

    /// About how many parameters the fusion modules of this config hold on towers of joint
    /// width `embed_dim` (the head(s) exactly, the merge's projections to a few percent): what
    /// memory estimates count beside the towers.
    pub fn num_params(&self, embed_dim: usize) -> u64 {
        let w = embed_dim as u64;
        let (hidden, classes) = (self.head_hidden as u64, self.num_classes as u64);
        let head = |input: u64| (input + 1) * hidden + (hidden + 1) * classes;
        if self.modalities != Modalities::Both {
            return head(w);
        }
        if self.stage == FusionStage::Late {
            return 2 * head(w);
        }
        let merge = match self.operator {
            // Two cross-attention blocks, each q, k, v, out and a 4x MLP.
            FusionOperator::Attention => 24 * w * w,
            FusionOperator::Gated => 4 * w * w,
            _ => 0,
        };
        merge + head(Merge::output_width(self.operator, embed_dim) as u64)
    }

    /// The classifier on `clip` (its towers and projections kept as they are), its fusion
    /// modules drawn from `device`'s generator.
    pub fn init(&self, clip: ClipModel, device: &Device) -> FusionClassifier {
        let fusion = initialised(device, None, || self.fusion(&clip, device));
        FusionClassifier { fusion, clip }
    }

    /// [`FusionConfig::init`] with the fusion modules the same for every `seed` (see
    /// [`initialised`]).
    pub fn init_seeded(&self, clip: ClipModel, device: &Device, seed: u64) -> FusionClassifier {
        let fusion = initialised(device, Some(seed), || self.fusion(&clip, device));
        FusionClassifier { fusion, clip }
    }

    fn fusion(&self, clip: &ClipModel, device: &Device) -> Fusion {
        let width = clip.visual_projection.weight.dims()[1];
        let alpha = (self.alpha, self.learn_alpha);
        let fused = self.modalities == Modalities::Both;
        let late = fused && self.stage == FusionStage::Late;
        let head_input = match fused {
            true => Merge::output_width(self.operator, width),
            false => width,
        };
        Fusion {
            joint: (fused && self.stage == FusionStage::Early)
                .then(|| JointStream::new(clip, device)),
            merge: (fused && !late)
                .then(|| Merge::new(self.operator, width, alpha, self.heads, device)),
            head: (!late)
                .then(|| Head::new(head_input, self.head_hidden, self.num_classes, device)),
            late: late.then(|| {
                LateFusion::new(
                    self.operator,
                    width,
                    (self.head_hidden, self.num_classes),
                    alpha,
                    device,
                )
            }),
            config: self.clone(),
        }
    }
}

/// Classifies (image, text) inputs: CLIP's towers encode them (or one stream does, for early
/// fusion), a fusion stage merges them, a head names the class.
#[derive(Module, Debug)]
pub struct FusionClassifier {
    /// The towers and their projections into the joint space (HF `CLIPModel` names).
    pub clip: ClipModel,
    /// Everything on top of them.
    pub fusion: Fusion,
}

/// A [`FusionClassifier`]'s own modules (kept apart from the towers, so that the towers stay a
/// CLIP model with CLIP's parameter names).
#[derive(Module, Debug)]
pub struct Fusion {
    /// Early fusion's stream additions.
    pub joint: Option<JointStream>,
    /// Mid and early fusion's operator.
    pub merge: Option<Merge>,
    /// Mid, early and single-modality classifiers' head.
    pub head: Option<Head>,
    /// Late fusion's heads and decision merge.
    pub late: Option<LateFusion>,
    /// What it was built from (stage, operator, classes).
    #[module(skip)]
    pub config: FusionConfig,
}

impl FusionClassifier {
    /// `[batch, 3, H, W]` pixels and `[batch, seq]` token ids -> `[batch, classes]` logits
    /// (late fusion: log-probabilities). A single-modality classifier ignores the other input.
    pub fn forward(&self, pixels: Tensor<4>, input_ids: Tensor<2, Int>) -> Tensor<2> {
        let present = "FusionConfig::init builds the stage's modules";
        let fusion = &self.fusion;
        let head = || fusion.head.as_ref().expect(present);
        // Logits in f32 whatever the model computes in, as the towers' features are.
        let logits = match (fusion.config.modalities, fusion.config.stage) {
            (Modalities::Image, _) => head().forward(self.image_features(pixels).pooled),
            (Modalities::Text, _) => head().forward(self.text_features(input_ids).pooled),
            (Modalities::Both, FusionStage::Late) => {
                let (image, text) = (self.image_features(pixels), self.text_features(input_ids));
                fusion.late.as_ref().expect(present).forward(&image, &text)
            }
            (Modalities::Both, FusionStage::Mid) => {
                let (image, text) = (self.image_features(pixels), self.text_features(input_ids));
                head().forward(fusion.merge.as_ref().expect(present).forward(&image, &text))
            }
            (Modalities::Both, FusionStage::Early) => {
                let joint = fusion.joint.as_ref().expect(present);
                let (image, text) = joint.forward(&self.clip, pixels, input_ids);
                head().forward(fusion.merge.as_ref().expect(present).forward(&image, &text))
            }
        };
        in_dtype(logits, DType::F32)
    }

    /// The image tower's output in the joint space (unit vectors): the pooled class token and
    /// every token through the tower's final norm and projection.
    pub fn image_features(&self, pixels: Tensor<4>) -> Features {
        let vision = &self.clip.vision_model;
        let out = vision.forward(pixels);
        let tokens = ops::layer_norm(
            &vision.post_layernorm,
            vision.layer_norm_eps,
            out.last_hidden_state,
        );
        Features {
            pooled: unit(ops::linear_rows(&self.clip.visual_projection, out.pooled)),
            tokens: unit(ops::linear(&self.clip.visual_projection, tokens)),
            padding: None,
        }
    }

    /// The text tower's output in the joint space (unit vectors): the end-of-text token and
    /// every token, with the padding after the end token marked.
    pub fn text_features(&self, input_ids: Tensor<2, Int>) -> Features {
        let text = &self.clip.text_model;
        let padding = text_padding(input_ids.clone(), text.eos_token_id);
        let out = text.forward(input_ids);
        Features {
            pooled: unit(ops::linear_rows(&self.clip.text_projection, out.pooled)),
            tokens: unit(ops::linear(
                &self.clip.text_projection,
                out.last_hidden_state,
            )),
            padding: Some(padding),
        }
    }
}
