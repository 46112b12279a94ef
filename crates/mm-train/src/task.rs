//! The objective a run optimises: CLIP's softmax loss or SigLIP's sigmoid loss over a batch's
//! image and text features. It owns the forward pass, the loss and gradient accumulation; the
//! learner asks it for gradients and the loop never names a loss.

use anyhow::{Result, bail};
use burn::module::Param;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use std::ops::Range;

use burn::module::Module;
use mm_contrastive::dist::{CommError, Communicator};
use mm_contrastive::{
    SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, clip_loss, clip_loss_rows, siglip_loss,
    siglip_loss_rows,
};
use mm_data::ClipBatch;
use mm_encoders::{ClipConfig, ClipModel, CocaModel, FusionClassifier, PatchDropout};
use serde::{Deserialize, Serialize};

use crate::replicas::{host_values, tensor_of};

/// `objective = "clip" | "siglip"` in a training config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Symmetric InfoNCE over the batch (Radford et al. 2021).
    #[default]
    Clip,
    /// Pairwise sigmoid loss with a learnable bias (Zhai et al. 2023).
    Siglip,
    /// Cross-entropy of a [`mm_encoders::FusionClassifier`] on labelled (image, text) pairs
    /// (`[fusion]` says which; see [`crate::classify`]).
    Classify,
    /// CoCa (Yu et al. 2022): CLIP's loss plus the caption decoder's next-token
    /// cross-entropy, weighted as `[coca]` says (see [`crate::coca`]).
    Coca,
}

/// A model a run can train: what the loop needs of it beyond being a burn module.
pub trait Trainee: Module + Clone + Send + std::fmt::Debug + 'static {
    /// The CLIP model inside (the towers the data is shaped for; what lock_image / lock_text
    /// freeze; what the CLIP eval suites measure).
    fn clip(&self) -> &ClipModel;
    fn clip_mut(&mut self) -> &mut ClipModel;
    /// The classifier, for the suites that measure one.
    fn classifier(&self) -> Option<&FusionClassifier> {
        None
    }
    /// The captioner (CoCa), whose decoder checkpoints and caption suites need.
    fn captioner(&self) -> Option<&CocaModel> {
        None
    }
    /// The batch with the rows this model cannot train on removed and recorded in its
    /// errors (a classifier: rows without a label of its classes).
    fn admit(&self, batch: ClipBatch) -> ClipBatch {
        batch
    }
    /// This rank's share of the loss over the global batch and its gradients (see
    /// [`Objective::gradients`]).
    fn gradients(
        &self,
        objective: Objective,
        micro_batches: &[ClipBatch],
        comm: &dyn Communicator,
        options: &StepOptions,
    ) -> Result<(f32, GradientsParams), CommError>;
    /// Values worth logging with the loss (CLIP: the temperature).
    fn log_values(&self) -> Vec<(&'static str, f64)>;
}

impl Trainee for ClipModel {
    fn clip(&self) -> &ClipModel {
        self
    }

    fn clip_mut(&mut self) -> &mut ClipModel {
        self
    }

    fn gradients(
        &self,
        objective: Objective,
        micro_batches: &[ClipBatch],
        comm: &dyn Communicator,
        options: &StepOptions,
    ) -> Result<(f32, GradientsParams), CommError> {
        objective.gradients(self, micro_batches, comm, options)
    }

    fn log_values(&self) -> Vec<(&'static str, f64)> {
        let scale = self.logit_scale.val().into_scalar::<f32>() as f64;
        vec![("logit_scale", scale)]
    }
}

/// How a training step's forward pass runs, beyond the model and the data (from `[train]`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StepOptions {
    /// Each rank computes only its rows of the global loss (`train.local_loss`).
    pub local_loss: bool,
    /// Patches each training image drops (`train.patch_dropout`).
    pub patch_dropout: Option<PatchDropout>,
    /// The run's seed, from which each batch's dropped patches derive.
    pub seed: u64,
    /// How CoCa weighs its two losses (`[coca]`).
    pub loss_weights: LossWeights,
}

/// CoCa's loss weights (open_clip's `--coca-contrastive-loss-weight` and
/// `--coca-caption-loss-weight`, 1 and 2 by default).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    pub contrastive: f64,
    pub caption: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            contrastive: 1.0,
            caption: 2.0,
        }
    }
}

/// One micro-batch's forward pass as the contrastive gradients need it (see
/// [`Objective::contrastive_gradients`]): both features and, when asked for, the loss the model
/// adds on the same pass (CoCa's share of the captioning loss).
pub struct Encoded {
    pub image: Tensor<2>,
    pub text: Tensor<2>,
    pub extra: Option<Tensor<1>>,
}

impl StepOptions {
    /// The seed of the patches `batch` keeps on `rank`: fixed by the run's seed and the
    /// batch's place in its rank's stream, so re-encoding the batch and resuming keep them.
    pub fn patch_seed(&self, rank: usize, batch: &ClipBatch) -> u64 {
        let mix = |x: u64| (x ^ (x >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mix(self.seed ^ mix(rank as u64 ^ mix(batch.stream_position)))
    }
}

impl Objective {
    /// The loss of paired fp32 features `[n, d]` under `model`'s temperature (and bias), or,
    /// with `rows`, the share of it those rows contribute (see [`clip_loss_rows`]). With
    /// `with_params = false` the temperature and bias enter as constants, so that a caller
    /// summing several such losses counts their gradient once.
    pub fn loss(
        self,
        model: &ClipModel,
        image: Tensor<2>,
        text: Tensor<2>,
        rows: Option<Range<usize>>,
        with_params: bool,
    ) -> Tensor<1> {
        let param = |t: Tensor<1>| if with_params { t } else { t.detach() };
        let (scale, bias) = model.scale_and_bias();
        let scale = param(scale);
        match self {
            // A classifier's or a CoCa's towers (eval suites measure them too) by CLIP's loss.
            Self::Clip | Self::Classify | Self::Coca => match rows {
                None => clip_loss(image, text, scale),
                Some(rows) => clip_loss_rows(image, text, scale, rows),
            },
            Self::Siglip => {
                let bias =
                    param(bias.expect("a SigLIP model has a logit_bias (start.rs gives it one)"));
                match rows {
                    None => siglip_loss(image, text, scale, bias),
                    Some(rows) => siglip_loss_rows(image, text, scale, bias, rows),
                }
            }
        }
    }

    /// The loss of `model` on one batch (the forward pass of a training step).
    pub fn batch_loss(self, model: &ClipModel, batch: &ClipBatch) -> Tensor<1> {
        let device = model.logit_scale.val().device();
        let image = model.image_features(batch.pixels_tensor(&device));
        let text = model.text_features(batch.input_ids_tensor(&device));
        self.loss(model, image, text, None, true)
    }

    /// This rank's share of the loss and its gradients over the global batch: the
    /// concatenation of every rank's `micro_batches` (each rank its own; one rank alone is
    /// plain training, several micro-batches open_clip's `accum_freq`). Summed over ranks, the
    /// shares are the global batch's loss and gradients, as one process would compute them on
    /// the whole batch (the learner sums them with one all-reduce).
    ///
    /// With one micro-batch and one rank this is one forward and backward pass. Otherwise the
    /// features of every micro-batch are computed first (without their graphs when there are
    /// several) and all-gathered over ranks; the loss over the global features (only this
    /// rank's rows of it with `local_loss`) gives the gradient with respect to every feature,
    /// of which this rank keeps its own rows (summing the other ranks' contributions by a
    /// reduce-scatter under `local_loss`); each micro-batch is then encoded with its graph and
    /// back-propagated from those feature gradients (the GradCache method), so the encoders'
    /// memory is that of one micro-batch while every sample sees all `ranks x k x b` negatives.
    /// The temperature and bias get their gradient once: from rank 0's full loss, or from
    /// every rank's share under `local_loss`. Encoders run in the dtype of `model`'s
    /// parameters, features and loss in fp32.
    pub fn gradients(
        self,
        model: &ClipModel,
        micro_batches: &[ClipBatch],
        comm: &dyn Communicator,
        options: &StepOptions,
    ) -> Result<(f32, GradientsParams), CommError> {
        let device = model.logit_scale.val().device();
        let rank = comm.rank();
        let patches = model.vision_model.num_patches();
        let encode = |batch: &ClipBatch, _with_extra: bool| {
            let kept = options.patch_dropout.map(|dropout| {
                let seed = options.patch_seed(rank, batch);
                dropout.sample(batch.batch_size, patches, seed, &device)
            });
            Encoded {
                image: model.image_features_kept(batch.pixels_tensor(&device), kept),
                text: model.text_features(batch.input_ids_tensor(&device)),
                extra: None,
            }
        };
        self.contrastive_gradients(model, model, micro_batches, comm, options, 1.0, &encode)
    }

    /// [`Objective::gradients`] for any model with CLIP towers (`clip`, inside `model`) whose
    /// forward pass `encode` gives both features and, when asked for, a loss of its own on
    /// the same pass (already this micro-batch's share of the global batch's; it needs no
    /// other rank's rows). The contrastive loss is weighted by `contrastive_weight`.
    #[allow(clippy::too_many_arguments)]
    pub fn contrastive_gradients<M: Module>(
        self,
        model: &M,
        clip: &ClipModel,
        micro_batches: &[ClipBatch],
        comm: &dyn Communicator,
        options: &StepOptions,
        contrastive_weight: f64,
        encode: &dyn Fn(&ClipBatch, bool) -> Encoded,
    ) -> Result<(f32, GradientsParams), CommError> {
        let device = clip.logit_scale.val().device();
        let (rank, world) = (comm.rank(), comm.world_size());
        let local_loss = options.local_loss;
        if let ([batch], 1) = (micro_batches, world) {
            let Encoded { image, text, extra } = encode(batch, true);
            let mut loss = self
                .loss(clip, image, text, None, true)
                .mul_scalar(contrastive_weight);
            if let Some(extra) = extra {
                loss = loss + extra;
            }
            let value = loss.clone().into_scalar::<f32>();
            return Ok((value, GradientsParams::from_grads(loss.backward(), model)));
        }

        // Every local micro-batch's features; with a single one its graph is kept for the
        // backward pass below, with several each is re-encoded there.
        let mut kept = None;
        let features: Vec<(Tensor<2>, Tensor<2>)> = micro_batches
            .iter()
            .map(|batch| {
                let single = micro_batches.len() == 1;
                let Encoded { image, text, extra } = encode(batch, single);
                if single {
                    kept = Some(Encoded {
                        image: image.clone(),
                        text: text.clone(),
                        extra,
                    });
                }
                (image.detach(), text.detach())
            })
            .collect();
        let sizes: Vec<usize> = features.iter().map(|(i, _)| i.dims()[0]).collect();
        let (image, text): (Vec<_>, Vec<_>) = features.into_iter().unzip();
        let (image, text) = (Tensor::cat(image, 0), Tensor::cat(text, 0));
        let [local, width] = image.dims();
        let counts = comm.all_gather(&[local as f32, width as f32])?;
        if counts.chunks(2).any(|c| c != [local as f32, width as f32]) {
            return Err(CommError {
                operation: "all_gather",
                message: format!(
                    "ranks hold batches of different sizes (rank, samples, width): {:?}; every rank must step with train.batch_size x train.accum_freq samples",
                    counts
                        .chunks(2)
                        .enumerate()
                        .map(|(r, c)| (r, c[0] as usize, c[1] as usize))
                        .collect::<Vec<_>>()
                ),
            });
        }
        // One all-gather of [image | text] per rank.
        let mut mine = host_values(image);
        mine.extend(host_values(text));
        let gathered = comm.all_gather(&mine)?;
        let block = local * width;
        let (mut image_all, mut text_all) = (Vec::new(), Vec::new());
        for part in gathered.chunks(2 * block) {
            image_all.extend_from_slice(&part[..block]);
            text_all.extend_from_slice(&part[block..]);
        }
        let global = world * local;
        let image_all = tensor_of(&image_all, [global, width], &device).require_grad();
        let text_all = tensor_of(&text_all, [global, width], &device).require_grad();
        let rows = rank * local..(rank + 1) * local;
        let (loss_rows, with_params) = match local_loss {
            true => (Some(rows.clone()), true),
            false => (None, rank == 0),
        };
        let loss = self
            .loss(
                clip,
                image_all.clone(),
                text_all.clone(),
                loss_rows,
                with_params,
            )
            .mul_scalar(contrastive_weight);
        let value = loss.clone().into_scalar::<f32>();
        let mut share = match (local_loss, rank) {
            (true, _) | (false, 0) => value,
            (false, _) => 0.0,
        };
        let grads = loss.backward();
        let feature_grad = |t: &Tensor<2>, rows: Range<usize>| match t.grad(&grads) {
            Some(grad) => host_values(grad.slice(rows)),
            None => vec![0.0; rows.len() * width],
        };
        // This rank's rows of d(global loss)/d(features): from its own full loss, or summed
        // over every rank's share.
        let (image_grad, text_grad) = match local_loss {
            false => (
                feature_grad(&image_all, rows.clone()),
                feature_grad(&text_all, rows),
            ),
            true => {
                let image_grad = feature_grad(&image_all, 0..global);
                let text_grad = feature_grad(&text_all, 0..global);
                let mut blocks = Vec::with_capacity(2 * global * width);
                for r in 0..world {
                    blocks.extend_from_slice(&image_grad[r * block..(r + 1) * block]);
                    blocks.extend_from_slice(&text_grad[r * block..(r + 1) * block]);
                }
                let mut own = comm.reduce_scatter_sum(&blocks)?;
                let text = own.split_off(block);
                (own, text)
            }
        };

        let mut accumulator = GradientsAccumulator::<M>::new();
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        let mut first = 0;
        for (j, batch) in micro_batches.iter().enumerate() {
            let Encoded { image, text, extra } = match kept.take() {
                Some(encoded) => encoded,
                None => encode(batch, true),
            };
            let span = first * width..(first + sizes[j]) * width;
            first += sizes[j];
            let constant = |g: &[f32]| tensor_of(g, [sizes[j], width], &device);
            let mut surrogate = (image * constant(&image_grad[span.clone()])).sum()
                + (text * constant(&text_grad[span])).sum();
            if let Some(extra) = extra {
                share += extra.clone().into_scalar::<f32>();
                surrogate = surrogate + extra;
            }
            accumulator.accumulate(
                model,
                GradientsParams::from_grads(surrogate.backward(), model),
            );
        }
        Ok((share, accumulator.grads()))
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
