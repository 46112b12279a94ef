//! The objective a run optimises: CLIP's softmax loss or SigLIP's sigmoid loss over a batch's
//! image and text features. The learner asks it for the loss; the loop never names one.

use anyhow::{Result, bail};
use burn::module::Param;
use burn::tensor::{FloatDType, Tensor};
use mm_contrastive::{SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, clip_loss, siglip_loss};
use mm_encoders::{ClipConfig, ClipModel};
use serde::{Deserialize, Serialize};

/// `objective = "clip" | "siglip"` in a training config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Symmetric InfoNCE over the batch (Radford et al. 2021).
    #[default]
    Clip,
    /// Pairwise sigmoid loss with a learnable bias (Zhai et al. 2023).
    Siglip,
}

impl Objective {
    /// The loss of paired fp32 features `[n, d]` under `model`'s temperature (and bias). With
    /// `with_params = false` the temperature and bias enter as constants: accumulation
    /// counts their gradient in one micro-batch only.
    pub fn loss(
        self,
        model: &ClipModel,
        image: Tensor<2>,
        text: Tensor<2>,
        with_params: bool,
    ) -> Tensor<1> {
        let param = |t: Tensor<1>| {
            let t = t.cast(FloatDType::F32);
            if with_params { t } else { t.detach() }
        };
        let scale = param(model.logit_scale.val());
        match self {
            Self::Clip => clip_loss(image, text, scale),
            Self::Siglip => {
                let bias = model
                    .logit_bias
                    .as_ref()
                    .expect("a SigLIP model has a logit_bias (start.rs gives it one)");
                siglip_loss(image, text, scale, param(bias.val()))
            }
        }
    }

    /// The shape of a fresh model for this objective: SigLIP starts its temperature at ln 10
    /// and its bias at -10 (unless the model already sets a bias, and with it its scale).
    pub fn fresh_model(self, mut config: ClipConfig) -> ClipConfig {
        if self == Self::Siglip && config.logit_bias_init.is_none() {
            config.logit_scale_init = SIGLIP_LOGIT_SCALE_INIT;
            config.logit_bias_init = Some(SIGLIP_LOGIT_BIAS_INIT);
        }
        config
    }

    /// A loaded model (`init_from`) made fit for this objective: fine-tuning a CLIP model with
    /// the sigmoid loss gives it SigLIP's initial bias; a model with a bias is refused for the
    /// softmax loss, which could not train it.
    pub fn adapt(
        self,
        mut config: ClipConfig,
        mut model: ClipModel,
    ) -> Result<(ClipConfig, ClipModel)> {
        match (self, model.logit_bias.is_some()) {
            (Self::Siglip, false) => {
                let device = model.logit_scale.val().device();
                let bias = Tensor::from_floats([SIGLIP_LOGIT_BIAS_INIT as f32], &device);
                model.logit_bias = Some(Param::from_tensor(bias));
                config.logit_bias_init = Some(SIGLIP_LOGIT_BIAS_INIT);
            }
            (Self::Clip, true) => {
                bail!(
                    "the model has a logit_bias (it was trained with the sigmoid loss): set objective = \"siglip\""
                )
            }
            _ => {}
        }
        Ok((config, model))
    }
}
