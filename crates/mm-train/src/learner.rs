//! One optimisation step: forward, loss and gradients (with accumulation and mixed precision),
//! clipping and the AdamW update (burn-train's learner idea). The loop around it is
//! [`crate::run`].

use anyhow::Result;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use mm_data::ClipBatch;
use mm_encoders::{ClipConfig, ClipModel, PatchDropout};

use std::rc::Rc;

use mm_contrastive::dist::{Communicator, SingleProcess, Timed};

use crate::config::TrainConfig;
use crate::device::parse_device;
use crate::optim::{clip_adamw, clip_grad_norm, learning_rate, param_ids};
use crate::precision::{Compute, grads_to_f32, half_copy};
use crate::replicas::{all_reduce_grads, broadcast_weights};
use crate::task::{LossWeights, StepOptions, Trainee};
use mm_encoders::{MatmulPrecision, with_matmul_precision};

/// One optimisation step's model, optimiser and bookkeeping, and the ranks it trains with.
pub struct Learner<M: Trainee = ClipModel> {
    pub model: M,
    pub optim: ModuleOptimizer,
    config: TrainConfig,
    comm: Timed,
}

/// A step whose loss (or gradient norm) is NaN or infinite: the model was not updated.
#[derive(Debug, thiserror::Error)]
#[error("step {step}: {what} is {value}")]
pub struct NonFinite {
    /// 1-based, as logs count steps.
    pub step: usize,
    pub what: &'static str,
    pub value: f64,
}

/// Loss and gradient norm of one step.
pub struct StepOutput {
    pub loss: f32,
    pub grad_norm: Option<f64>,
}

impl Learner {
    /// A freshly initialised model on the autodiff version of the configured device.
    pub fn new(config: &TrainConfig, model_config: &ClipConfig) -> Result<Self> {
        let device = parse_device(&config.device)?;
        let model_config = config.objective.fresh_model(model_config.clone());
        Ok(Self::from_model(
            config,
            model_config.init_seeded(&device.autodiff(), config.seed),
        ))
    }

    /// The objective's loss of the current model on `batch` (the forward pass of a step).
    pub fn loss(&self, batch: &ClipBatch) -> Tensor<1> {
        self.config.objective.batch_loss(&self.model, batch)
    }
}

impl<M: Trainee> Learner<M> {
    /// Trains `model` (on an autodiff device) from where it is. Locked towers
    /// (`train.lock_image` / `lock_text`) get no gradients, so the optimiser never moves them;
    /// `train.grad_checkpointing` is set on both towers.
    pub fn from_model(config: &TrainConfig, mut model: M) -> Self {
        let clip = model.clip_mut();
        clip.set_grad_checkpointing(config.train.grad_checkpointing);
        if config.train.lock_image {
            clip.vision_model = clip.vision_model.clone().no_grad();
            clip.visual_projection = clip.visual_projection.clone().no_grad();
        }
        if config.train.lock_text {
            clip.text_model = clip.text_model.clone().no_grad();
            clip.text_projection = clip.text_projection.clone().no_grad();
        }
        // A classifier's towers learn at `fusion.tower_lr_scale` of the rate.
        let (towers, scale) = match model.classifier() {
            Some(classifier) => (
                param_ids(&classifier.clip),
                config.fusion.clone().unwrap_or_default().tower_lr_scale,
            ),
            None => (Vec::new(), 1.0),
        };
        let optim = clip_adamw(&config.optim, &model, (&towers, scale));
        Self {
            model,
            optim,
            config: config.clone(),
            comm: Timed::new(Rc::new(SingleProcess)),
        }
    }

    /// This learner as one rank of `comm`'s data-parallel group: every rank takes rank 0's
    /// weights (a collective: all ranks call it together).
    pub fn with_communicator(mut self, comm: Rc<dyn Communicator>) -> Result<Self> {
        self.model = broadcast_weights(self.model, comm.as_ref())?;
        self.comm = Timed::new(comm);
        Ok(self)
    }

    /// The ranks this learner trains with.
    pub fn comm(&self) -> &dyn Communicator {
        &self.comm
    }

    /// Time spent in collectives (waiting for other ranks included) since the last call.
    pub fn take_comm_time(&self) -> std::time::Duration {
        self.comm.take_spent()
    }

    /// Loss and gradients of the objective over the global batch (every rank's
    /// `micro_batches`, see [`crate::task::Objective::gradients`]), summed over ranks, in the
    /// configured precision (see [`crate::precision`]): gradients come back as fp32 for the
    /// master weights. Every rank gets the same values.
    pub fn gradients(&self, micro_batches: &[ClipBatch]) -> Result<(f32, GradientsParams)> {
        let comm = &self.comm;
        let options = StepOptions {
            local_loss: self.config.train.local_loss,
            patch_dropout: PatchDropout::new(self.config.train.patch_dropout)
                .map_err(|e| anyhow::anyhow!("train.patch_dropout: {e}"))?,
            seed: self.config.seed,
            loss_weights: {
                let coca = self.config.coca.clone().unwrap_or_default();
                LossWeights {
                    contrastive: coca.contrastive_loss_weight,
                    caption: coca.caption_loss_weight,
                }
            },
        };
        let objective =
            |model: &M| model.gradients(self.config.objective, micro_batches, comm, &options);
        let device = self.model.clip().logit_scale.val().device();
        let (loss, mut grads) = match self.config.train.precision.compute_on(&device) {
            Compute::Fp32 => objective(&self.model)?,
            Compute::Bf16Gemms => {
                with_matmul_precision(MatmulPrecision::Bf16, || objective(&self.model))?
            }
            Compute::HalfCopy(dtype) => {
                let (loss, mut grads) = objective(&half_copy(&self.model, dtype))?;
                grads_to_f32(&self.model, &mut grads);
                (loss, grads)
            }
        };
        let mut loss = [loss];
        if comm.world_size() > 1 {
            all_reduce_grads(&self.model, &mut grads, &mut loss, comm)?;
        }
        Ok((loss[0], grads))
    }
}

impl<M: Trainee> Learner<M> {
    /// Forward, backward and AdamW update at step `step` (from 0) on one batch, or on
    /// several micro-batches accumulated as one (see [`Learner::gradients`]).
    /// A non-finite loss or gradient norm is a [`NonFinite`] error and leaves the model
    /// untouched.
    pub fn step_accumulated(
        &mut self,
        micro_batches: &[ClipBatch],
        step: usize,
    ) -> Result<StepOutput> {
        let (loss_value, mut grads) = self.gradients(micro_batches)?;
        let non_finite = |what, value: f64| NonFinite {
            step: step + 1,
            what,
            value,
        };
        if !loss_value.is_finite() {
            return Err(non_finite("the loss", loss_value.into()).into());
        }
        let grad_norm = self
            .config
            .optim
            .grad_clip_norm
            .map(|max| clip_grad_norm(&self.model, &mut grads, max));
        if let Some(norm) = grad_norm
            && !norm.is_finite()
        {
            return Err(non_finite("the gradient norm", norm).into());
        }
        let lr = learning_rate(
            self.config.optim.lr,
            self.config.optim.warmup_steps,
            self.config.train.steps,
            step,
        );
        let model = self.model.clone();
        self.model = self.optim.step(lr, model, grads);
        Ok(StepOutput {
            loss: loss_value,
            grad_norm,
        })
    }

    /// [`Learner::step_accumulated`] on a single batch.
    pub fn step(&mut self, batch: &ClipBatch, step: usize) -> Result<StepOutput> {
        self.step_accumulated(std::slice::from_ref(batch), step)
    }
}
