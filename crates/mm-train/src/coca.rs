//! `objective = "coca"`: a [`CocaModel`] trained with CLIP's loss and its caption decoder's
//! next-token cross-entropy (open_clip's `CoCaLoss`), with the data parallelism, accumulation
//! and resumption every objective gets from the trainer. (Its checkpoint file is
//! [`crate::checkpoint`]'s.)

use std::path::Path;

use anyhow::{Context, Result};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use mm_contrastive::caption_loss_sum;
use mm_contrastive::dist::{CommError, Communicator};
use mm_data::{ClipBatch, ClipTokenizer};
use mm_encoders::{ClipModel, CocaModel};

use crate::checkpoint::{self, Checkpoint};
use crate::config::TrainConfig;
use crate::device::parse_device;
use crate::learner::Learner;
use crate::start::{Startable, StartingPoint};
use crate::task::{Encoded, Objective, StepOptions, Trainee};

/// The tokens the decoder learns to predict (of `ids[:, 1:]`: not padding, not a row's given
/// prompt, see [`ClipBatch::prompt_lengths`]), and their positions among the
/// `batch * (seq - 1)` predicted ones.
fn next_tokens(batch: &ClipBatch, pad_id: u32) -> (Vec<i64>, Vec<i64>) {
    let seq = batch.context_length.max(1);
    let (mut labels, mut positions) = (Vec::new(), Vec::new());
    for (row, (ids, &prompt)) in batch
        .input_ids
        .chunks(seq)
        .zip(&batch.prompt_lengths)
        .enumerate()
    {
        // Position p predicts ids[p + 1].
        for p in prompt.max(1) - 1..seq - 1 {
            if ids[p + 1] != pad_id {
                labels.push(ids[p + 1] as i64);
                positions.push((row * (seq - 1) + p) as i64);
            }
        }
    }
    (labels, positions)
}

impl Trainee for CocaModel {
    fn clip(&self) -> &ClipModel {
        &self.clip
    }

    fn clip_mut(&mut self) -> &mut ClipModel {
        &mut self.clip
    }

    fn captioner(&self) -> Option<&CocaModel> {
        Some(self)
    }

    /// The contrastive loss over the global batch (every rank's rows, GradCache with
    /// micro-batches, as for CLIP) weighted by `loss_weights.contrastive`, plus
    /// `loss_weights.caption` x the captioning cross-entropy averaged over every rank's
    /// predicted tokens (padding and given prompts skipped, see `next_tokens`): what one
    /// process computes on the whole batch.
    fn gradients(
        &self,
        objective: Objective,
        micro_batches: &[ClipBatch],
        comm: &dyn Communicator,
        options: &StepOptions,
    ) -> Result<(f32, GradientsParams), CommError> {
        debug_assert_eq!(objective, Objective::Coca);
        let device = self.clip.logit_scale.val().device();
        let pad_id = self.clip.text_model.pad_id;
        let local: usize = micro_batches
            .iter()
            .map(|b| next_tokens(b, pad_id).0.len())
            .sum();
        let total = comm.all_gather(&[local as f32])?.iter().sum::<f32>() as usize;
        let weight = options.loss_weights.caption / total.max(1) as f64;
        let encode = |batch: &ClipBatch, with_caption: bool| {
            let pixels = batch.pixels_tensor(&device);
            let ids = batch.input_ids_tensor(&device);
            if !with_caption {
                return Encoded {
                    image: self.clip.image_features(pixels),
                    text: self.clip.text_features(ids),
                    extra: None,
                };
            }
            // Logits at the labelled positions only: padding adds nothing to the loss.
            let (labels, positions) = next_tokens(batch, pad_id);
            let n = labels.len();
            let positions = Tensor::<1, Int>::from_data(TensorData::new(positions, [n]), &device);
            let out = self.forward_at(pixels, ids, positions);
            let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [1, n]), &device);
            let (sum, _) = caption_loss_sum(out.logits, labels, pad_id);
            Encoded {
                image: out.image_features,
                text: out.text_features,
                extra: Some(sum.mul_scalar(weight)),
            }
        };
        objective.contrastive_gradients(
            self,
            &self.clip,
            micro_batches,
            comm,
            options,
            options.loss_weights.contrastive,
            &encode,
        )
    }

    fn log_values(&self) -> Vec<(&'static str, f64)> {
        self.clip.log_values()
    }
}

/// A CoCa starts fresh (`model`, with OpenAI's tokenizer padding with the model's `pad_id`)
/// or from `init_from`: an mm CoCa checkpoint or an open_clip CoCa directory.
impl Startable for CocaModel {
    fn start(config: &TrainConfig) -> Result<StartingPoint<Self>> {
        let device = parse_device(&config.device)?.autodiff();
        let (model_config, model, tokenizer, description) = match &config.init_from {
            Some(path) => {
                let context = || format!("init_from = {}", path.display());
                let ckpt = checkpoint::load(path, &device).with_context(context)?;
                let (model_config, tokenizer) = (ckpt.model_config.clone(), ckpt.tokenizer.clone());
                let description = format!("weights from {}", ckpt.dir.display());
                let model = ckpt.coca().with_context(context)?;
                (model_config, model, tokenizer, description)
            }
            None => {
                let spec = config
                    .model
                    .as_ref()
                    .context("the config has neither `model` nor `init_from`")?;
                let model_config = spec.resolve()?;
                let model = model_config.init_coca_seeded(&device, config.seed)?;
                let tokenizer = ClipTokenizer::openai();
                (model_config, model, tokenizer, "freshly initialised".into())
            }
        };
        // The caption loss and the text mask skip the model's pad id: texts must be padded
        // with it.
        let tokenizer = tokenizer.with_pad_id(model_config.text.pad_id)?;
        Ok(StartingPoint {
            model_config,
            learner: Learner::from_model(config, model),
            tokenizer,
            description,
        })
    }

    fn restored(_: &TrainConfig, ckpt: Checkpoint, _: &Path) -> Result<Self> {
        ckpt.coca()
    }
}
