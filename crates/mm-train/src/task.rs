//! The objective a run optimises: CLIP's softmax loss or SigLIP's sigmoid loss over a batch's
//! image and text features. It owns the forward pass, the loss and gradient accumulation; the
//! learner asks it for gradients and the loop never names a loss.

use anyhow::{Result, bail};
use burn::module::Param;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{FloatDType, Tensor};
use mm_contrastive::{SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, clip_loss, siglip_loss};
use mm_data::ClipBatch;
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

    /// The loss of `model` on one batch (the forward pass of a training step).
    pub fn batch_loss(self, model: &ClipModel, batch: &ClipBatch) -> Tensor<1> {
        let device = model.logit_scale.val().device();
        let image = model.image_features(batch.pixels_tensor(&device));
        let text = model.text_features(batch.input_ids_tensor(&device));
        self.loss(model, image, text, true)
    }

    /// Loss and gradients of the objective over the concatenation of `micro_batches`, computed
    /// one micro-batch at a time (open_clip's `accum_freq`): the features of every micro-batch
    /// are first computed without keeping their graphs; then each micro-batch is re-encoded
    /// with gradients and the loss taken over its fresh features joined with the others'
    /// cached ones, so every sample still sees all `k * b` negatives. Summed over micro-batches
    /// these gradients are those of the one big batch (for the sigmoid loss too); the
    /// temperature and bias enter the graph only once (in the first micro-batch), so their
    /// gradient is not counted `k` times. Encoders run in the dtype of `model`'s parameters,
    /// features and loss in fp32.
    pub fn gradients(
        self,
        model: &ClipModel,
        micro_batches: &[ClipBatch],
    ) -> (f32, GradientsParams) {
        let objective = self;
        let dtype = model.logit_scale.val().dtype();
        let device = model.logit_scale.val().device();
        let fp32 = burn::tensor::FloatDType::F32;
        let encode = |batch: &ClipBatch| {
            (
                model
                    .image_features(batch.pixels_tensor(&device).cast(dtype))
                    .cast(fp32),
                model
                    .text_features(batch.input_ids_tensor(&device))
                    .cast(fp32),
            )
        };
        if let [batch] = micro_batches {
            let (image, text) = encode(batch);
            let loss = objective.loss(model, image, text, true);
            let value = loss.clone().into_scalar::<f32>();
            return (value, GradientsParams::from_grads(loss.backward(), model));
        }
        let cached: Vec<(Tensor<2>, Tensor<2>)> = micro_batches
            .iter()
            .map(|batch| {
                let (image, text) = encode(batch);
                (image.detach(), text.detach())
            })
            .collect();
        let mut accumulator = GradientsAccumulator::<ClipModel>::new();
        let mut loss_value = 0.0;
        for (j, batch) in micro_batches.iter().enumerate() {
            let (image_j, text_j) = encode(batch);
            let join = |fresh: Tensor<2>, pick: fn(&(Tensor<2>, Tensor<2>)) -> Tensor<2>| {
                let parts: Vec<Tensor<2>> = cached
                    .iter()
                    .enumerate()
                    .map(|(i, c)| if i == j { fresh.clone() } else { pick(c) })
                    .collect();
                Tensor::cat(parts, 0)
            };
            let image = join(image_j, |c| c.0.clone());
            let text = join(text_j, |c| c.1.clone());
            // The temperature (and bias) enter the graph once, in the first micro-batch.
            let loss = objective.loss(model, image, text, j == 0);
            if j == 0 {
                loss_value = loss.clone().into_scalar::<f32>();
            }
            accumulator.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
        }
        (loss_value, accumulator.grads())
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
