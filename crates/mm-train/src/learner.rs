//! One optimisation step: forward, loss and gradients (with accumulation and mixed precision),
//! clipping and the AdamW update (burn-train's learner idea). The loop around it is
//! [`crate::run`].

use anyhow::Result;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use mm_data::ClipBatch;
use mm_encoders::{ClipConfig, ClipModel};

use crate::config::TrainConfig;
use crate::device::parse_device;
use crate::optim::{clip_adamw, clip_grad_norm, learning_rate};
use crate::task::Objective;

/// One optimisation step's model, optimiser and bookkeeping.
pub struct Learner {
    pub model: ClipModel,
    pub optim: ModuleOptimizer,
    config: TrainConfig,
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

    /// Trains `model` (on an autodiff device) from where it is. Locked towers
    /// (`train.lock_image` / `lock_text`) get no gradients, so the optimiser never moves them.
    pub fn from_model(config: &TrainConfig, mut model: ClipModel) -> Self {
        if config.train.lock_image {
            model.vision_model = model.vision_model.no_grad();
            model.visual_projection = model.visual_projection.no_grad();
        }
        if config.train.lock_text {
            model.text_model = model.text_model.no_grad();
            model.text_projection = model.text_projection.no_grad();
        }
        let optim = clip_adamw(&config.optim, &model);
        Self {
            model,
            optim,
            config: config.clone(),
        }
    }

    /// The objective's loss of the current model on `batch` (the forward pass of a step).
    pub fn loss(&self, batch: &ClipBatch) -> Tensor<1> {
        let device = self.model.logit_scale.val().device();
        let image = self.model.image_features(batch.pixels_tensor(&device));
        let text = self.model.text_features(batch.input_ids_tensor(&device));
        self.config.objective.loss(&self.model, image, text, true)
    }

    /// Loss and gradients of the objective's loss over the concatenation of `micro_batches`, computed
    /// one micro-batch at a time (open_clip's `accum_freq`): the features of every micro-batch
    /// are first computed without keeping their graphs; then each micro-batch is re-encoded with
    /// gradients and the loss taken over its fresh features joined with the others' cached
    /// ones, so every sample still sees all `k * b` negatives. Summed over micro-batches these
    /// gradients are those of the one big batch; `logit_scale` enters the graph only once (in
    /// the first micro-batch), so its gradient is not counted `k` times.
    pub fn gradients(&self, micro_batches: &[ClipBatch]) -> (f32, GradientsParams) {
        let half = self.config.train.precision.half();
        let half_model;
        let model = match half {
            Some(dtype) => {
                half_model = crate::precision::half_copy(&self.model, dtype);
                &half_model
            }
            None => &self.model,
        };
        let (loss, mut grads) = contrastive_gradients(model, micro_batches, self.config.objective);
        if half.is_some() {
            crate::precision::grads_to_f32(&self.model, &mut grads);
        }
        (loss, grads)
    }
}

/// [`Learner::gradients`] for `model` in whatever dtype its parameters are: encoders run in
/// that dtype, features and loss in fp32.
fn contrastive_gradients(
    model: &ClipModel,
    micro_batches: &[ClipBatch],
    objective: Objective,
) -> (f32, GradientsParams) {
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

impl Learner {
    /// Forward, backward and AdamW update at step `step` (from 0) on one batch, or on
    /// several micro-batches accumulated as one (see [`Learner::gradients`]).
    /// A non-finite loss or gradient norm is a [`NonFinite`] error and leaves the model
    /// untouched.
    pub fn step_accumulated(
        &mut self,
        micro_batches: &[ClipBatch],
        step: usize,
    ) -> Result<StepOutput> {
        let (loss_value, mut grads) = self.gradients(micro_batches);
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
