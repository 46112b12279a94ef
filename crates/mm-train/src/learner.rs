//! The training loop: steps, schedule, logging, periodic zero-shot eval and checkpoints.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use mm_contrastive::clip_loss;
use mm_data::{
    Batcher, ClipBatch, ClipTokenizer, PairSource, Prefetcher, SampleErrorKind, ShapesDataset,
    Split,
};
use mm_encoders::{ClipConfig, ClipModel};
use serde_json::json;

use crate::checkpoint::{self, CheckpointParts, CheckpointState};
use crate::config::TrainConfig;
use crate::device::parse_device;
use crate::eval::{
    LabelledImages, RetrievalReport, ZeroShotReport, encode_images, encode_texts, retrieval,
    zero_shot,
};
use crate::optim::{clip_adamw, clip_grad_norm, learning_rate};
use crate::run_dir::RunDirLock;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub steps: usize,
    /// Loss of every step this call ran, in order.
    pub losses: Vec<f32>,
    pub zero_shot_accuracy: f64,
    pub chance_accuracy: f64,
    pub samples_per_sec: f64,
    pub wall_seconds: f64,
    pub checkpoint: PathBuf,
}

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

    /// CLIP's loss of the current model on `batch` (the forward pass of a step).
    pub fn loss(&self, batch: &ClipBatch) -> Tensor<1> {
        let device = self.model.logit_scale.val().device();
        let image = self.model.image_features(batch.pixels_tensor(&device));
        let text = self.model.text_features(batch.input_ids_tensor(&device));
        clip_loss(image, text, self.model.logit_scale.val())
    }

    /// Loss and gradients of CLIP's loss over the concatenation of `micro_batches`, computed
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
        let (loss, mut grads) = contrastive_gradients(model, micro_batches);
        if half.is_some() {
            crate::precision::grads_to_f32(&self.model, &mut grads);
        }
        (loss, grads)
    }
}

/// [`Learner::gradients`] for `model` in whatever dtype its parameters are: encoders run in
/// that dtype, features and loss in fp32.
fn contrastive_gradients(model: &ClipModel, micro_batches: &[ClipBatch]) -> (f32, GradientsParams) {
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
    let logit_scale = || model.logit_scale.val().cast(fp32);
    if let [batch] = micro_batches {
        let (image, text) = encode(batch);
        let loss = clip_loss(image, text, logit_scale());
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
        let scale = if j == 0 {
            logit_scale()
        } else {
            logit_scale().detach()
        };
        let loss = clip_loss(image, text, scale);
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

/// Samples skipped so far, by kind. The first few of each kind are reported with their
/// location; after that only the counts (progress line, log, metrics).
#[derive(Default)]
struct SkipTally {
    counts: BTreeMap<SampleErrorKind, usize>,
}

/// Skipped samples reported in full, per kind.
const REPORTED_PER_KIND: usize = 3;

impl SkipTally {
    /// Adds a batch's skipped samples; returns the lines worth showing.
    fn add(&mut self, batch: &ClipBatch) -> Vec<String> {
        let mut lines = Vec::new();
        for error in &batch.errors {
            let count = self.counts.entry(error.kind).or_insert(0);
            *count += 1;
            if *count <= REPORTED_PER_KIND {
                lines.push(format!("skipped sample: {error}"));
            }
            if *count == REPORTED_PER_KIND {
                lines.push(format!(
                    "(further {} samples are counted, not listed)",
                    error.kind
                ));
            }
        }
        lines
    }

    fn total(&self) -> usize {
        self.counts.values().sum()
    }

    fn progress_note(&self) -> String {
        match self.total() {
            0 => String::new(),
            n => format!(" skipped {n}"),
        }
    }

    fn by_kind(&self) -> serde_json::Value {
        self.counts
            .iter()
            .map(|(kind, n)| (kind.name().to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Appends human-readable lines to `train.log` and JSON records to `metrics.jsonl`.
/// Also writes every metric to TensorBoard event files in the run directory.
struct RunLog {
    text: File,
    metrics: File,
    tensorboard: tensorboard_rs::summary_writer::SummaryWriter,
    progress: ProgressBar,
}

impl RunLog {
    fn open(run_dir: &std::path::Path, progress: ProgressBar) -> Result<Self> {
        let open = |name: &str| {
            let path = run_dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))
        };
        Ok(Self {
            text: open("train.log")?,
            metrics: open("metrics.jsonl")?,
            // The directory exists (the writer would panic otherwise).
            tensorboard: tensorboard_rs::summary_writer::SummaryWriter::new(run_dir),
            progress,
        })
    }

    /// A line for the user (above the progress bar) and the log file.
    fn say(&mut self, line: &str) -> Result<()> {
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            self.progress.println(line);
        }
        self.note(line)
    }

    /// A line for the log file only.
    fn note(&mut self, line: &str) -> Result<()> {
        writeln!(self.text, "{line}")?;
        Ok(())
    }

    /// A JSON line in metrics.jsonl, and its numbers as TensorBoard scalars at its `step`:
    /// `train/loss`, `train/lr`, ..., `eval/zero_shot_top1`, `data/skipped/<kind>`.
    fn record(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{value}")?;
        let step = value["step"].as_u64().unwrap_or(0) as usize;
        for (key, field) in value.as_object().into_iter().flatten() {
            let group = match key.as_str() {
                "step" => continue,
                k if k.starts_with("zero_shot") || k.starts_with("retrieval") => "eval",
                "skipped" => "data/skipped",
                _ => "train",
            };
            match field {
                serde_json::Value::Number(n) => {
                    let tag = format!("{group}/{key}");
                    self.tensorboard
                        .add_scalar(&tag, n.as_f64().unwrap_or(f64::NAN) as f32, step);
                }
                serde_json::Value::Object(parts) => {
                    for (kind, n) in parts {
                        if let Some(n) = n.as_f64() {
                            self.tensorboard
                                .add_scalar(&format!("{group}/{kind}"), n as f32, step);
                        }
                    }
                }
                _ => {}
            }
        }
        self.tensorboard.flush();
        Ok(())
    }
}

/// The model a run starts from and the tokenizer that goes with it.
pub struct StartingPoint {
    pub model_config: ClipConfig,
    pub learner: Learner,
    pub tokenizer: ClipTokenizer,
    /// What the log says it is.
    pub description: String,
}

/// A fresh model of `config.model` with OpenAI's tokenizer, or the checkpoint `init_from`.
pub fn starting_point(config: &TrainConfig) -> Result<StartingPoint> {
    if let Some(path) = &config.init_from {
        let device = parse_device(&config.device)?;
        let ckpt = checkpoint::load(path, &device.autodiff())
            .with_context(|| format!("init_from = {}", path.display()))?;
        return Ok(StartingPoint {
            model_config: ckpt.model_config,
            learner: Learner::from_model(config, ckpt.model),
            tokenizer: ckpt.tokenizer,
            description: format!("weights from {}", ckpt.dir.display()),
        });
    }
    let Some(spec) = &config.model else {
        bail!("the config has neither `model` nor `init_from`");
    };
    let model_config = spec.resolve()?;
    Ok(StartingPoint {
        learner: Learner::new(config, &model_config)?,
        model_config,
        tokenizer: ClipTokenizer::openai(),
        description: "freshly initialised".into(),
    })
}

/// A run continued from a checkpoint of its own: where, and at which step and data position.
pub struct Resumed {
    pub start: StartingPoint,
    pub state: CheckpointState,
}

/// Restores a run from `from`: a checkpoint directory, or a run directory whose newest
/// complete checkpoint that loads is used (a corrupt or partial newest one is reported and
/// the previous one tried). Model, optimiser moments, step and data position come back.
pub fn resume_point(config: &TrainConfig, from: &Path) -> Result<Resumed> {
    let candidates = if from.join(checkpoint::STATE_FILE).exists() {
        vec![from.to_path_buf()]
    } else {
        crate::resume::candidates(from)
    };
    if candidates.is_empty() {
        bail!(
            "{}: no complete checkpoint with optimiser state to resume from",
            from.display()
        );
    }
    let mut failures: Vec<(PathBuf, anyhow::Error)> = Vec::new();
    for dir in candidates {
        match restore(config, &dir) {
            Ok(resumed) => {
                for (bad, error) in &failures {
                    eprintln!("warning: skipped checkpoint {}: {error:#}", bad.display());
                }
                return Ok(resumed);
            }
            Err(error) => failures.push((dir, error)),
        }
    }
    let (dir, error) = failures.remove(0);
    Err(error.context(format!("resuming from {}", dir.display())))
}

fn restore(config: &TrainConfig, dir: &Path) -> Result<Resumed> {
    let device = parse_device(&config.device)?.autodiff();
    let ckpt = checkpoint::load(dir, &device)?;
    if let Some(spec) = &config.model {
        let wanted = spec.resolve()?;
        if wanted != ckpt.model_config {
            bail!(
                "{}: its model differs from the config's `model`",
                dir.display()
            );
        }
    }
    let model = crate::resume::with_param_ids(ckpt.model, &crate::resume::read_param_ids(dir)?)?;
    let mut learner = Learner::from_model(config, model);
    let optimizer = dir.join(crate::resume::OPTIMIZER_FILE);
    learner.optim = learner
        .optim
        .load(&optimizer)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", optimizer.display()))?;
    Ok(Resumed {
        start: StartingPoint {
            model_config: ckpt.model_config,
            learner,
            tokenizer: ckpt.tokenizer,
            description: format!("resumed from {} at step {}", dir.display(), ckpt.state.step),
        },
        state: ckpt.state,
    })
}

/// Trains as `config` says, evaluating and checkpointing along the way.
pub fn train(config: &TrainConfig, show_progress: bool) -> Result<TrainReport> {
    train_from(config, show_progress, None)
}

/// [`train`], or with `resume`, continues a run from one of its checkpoints (see
/// [`resume_point`]) so that the result is the one an uninterrupted run would have given.
/// The run holds its directory ([`RunDirLock`]) from start to end.
pub fn train_from(
    config: &TrainConfig,
    show_progress: bool,
    resume: Option<&Path>,
) -> Result<TrainReport> {
    let run_dir = &config.output_dir;
    let lock = RunDirLock::acquire(run_dir)?;
    let mut stale = lock.remove_stale_temps("checkpoints")?;
    stale.extend(lock.remove_stale_temps("")?);
    let previous = run_dir.join("checkpoints");
    let (start_point, first_step, data_position) = match resume {
        Some(from) => {
            let Resumed { start, state } = resume_point(config, from)?;
            (start, state.step, state.data_position.unwrap_or(0))
        }
        None => {
            if !checkpoint::step_dirs(&previous).is_empty() {
                bail!(
                    "{} holds checkpoints of an earlier run; resume it (--resume latest), choose another output_dir (--output-dir) or remove it",
                    previous.display()
                );
            }
            (starting_point(config)?, 0, 0)
        }
    };
    let steps = config.train.steps;
    if first_step > steps {
        bail!(
            "the checkpoint is at step {first_step}, past train.steps = {steps}; raise --steps to continue it"
        );
    }
    let StartingPoint {
        model_config,
        mut learner,
        tokenizer,
        description: start,
    } = start_point;

    let image_size = model_config.vision.image_size;
    let batcher = Batcher::new(
        tokenizer.clone(),
        image_size,
        model_config.text.context_length,
    )
    .with_transform(config.data.train_transform, config.seed)
    .with_image_limits(config.data.image_limits())
    .with_max_consecutive_skips(config.data.max_consecutive_skips)
    .with_workers(config.data.workers)?;
    let mut stream = config
        .data
        .open_stream(config.seed, image_size)
        .context("key `data.path`")?;
    stream.fast_forward(data_position);
    let description = stream.describe();
    let mut batches = Prefetcher::spawn(
        stream,
        batcher,
        config.train.batch_size,
        config.data.prefetch,
    );
    // The held-out zero-shot task of the built-in data (eval suites for other data: issue 6).
    let dataset = ShapesDataset::new(config.seed, image_size as u32);

    let progress = if show_progress {
        ProgressBar::new(steps as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    progress.set_position(first_step as u64);
    let mut log = RunLog::open(run_dir, progress.clone())?;
    for path in &stale {
        log.say(&format!(
            "removed {} (left by an interrupted write)",
            path.display()
        ))?;
    }
    let params = learner.model.num_params();
    log.say(&format!(
        "training {params} parameters ({start}) on {} for {steps} steps of {} ({}), writing to {}",
        config.device,
        config.train.batch_size,
        description,
        run_dir.display()
    ))?;

    // Periodic evaluation on held-out pictures of the built-in data: zero-shot and retrieval
    // (the full suites, with a linear probe, are `mm-train eval`).
    let heldout = config.eval.heldout_samples;
    let heldout_set = LabelledImages::shapes(&dataset, Split::HeldOut, heldout);
    let heldout_captions: Vec<String> = (0..heldout as u64)
        .map(|i| dataset.sample(Split::HeldOut, i).caption)
        .collect();
    let chance = 1.0 / heldout_set.class_names.len() as f64;
    let evaluate = |model: &ClipModel| -> Result<(ZeroShotReport, RetrievalReport)> {
        let model = model.valid();
        let ctx = model_config.text.context_length;
        let images = encode_images(&model, &heldout_set.images, image_size)?.embeddings;
        let texts = encode_texts(&model, &tokenizer, &heldout_captions, ctx)?;
        let zs = zero_shot(
            &model,
            &tokenizer,
            ctx,
            images.clone(),
            &heldout_set.class_names,
            &heldout_set.labels,
            &config.eval.templates,
        )?;
        Ok((zs, retrieval(images, texts)?))
    };

    let start = Instant::now();
    let mut train_seconds = 0.0;
    let mut losses = Vec::with_capacity(steps - first_step);
    let mut last_checkpoint = None;
    let mut accuracy = None;
    let mut skipped = SkipTally::default();
    for step in first_step..steps {
        let mut micro_batches = Vec::with_capacity(config.train.accum_freq);
        for _ in 0..config.train.accum_freq.max(1) {
            let batch = match batches.next() {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => return Err(e).context(format!("step {}", step + 1)),
                None => bail!(
                    "the data source ended at step {} (no usable samples in a whole pass?)",
                    step + 1
                ),
            };
            for line in skipped.add(&batch) {
                log.say(&line)?;
            }
            micro_batches.push(batch);
        }
        let batch = micro_batches.last().expect("at least one micro-batch");
        let step_start = Instant::now();
        let out = match learner.step_accumulated(&micro_batches, step) {
            Ok(out) => out,
            Err(error) => {
                let Some(non_finite) = error.downcast_ref::<NonFinite>() else {
                    return Err(error);
                };
                // The weights that gave it are those after `step` updates: a checkpoint of
                // them is no good to resume from.
                let (moved, good) = checkpoint::set_aside_diverged(run_dir, step)?;
                let moved = moved.map_or(String::new(), |m| {
                    format!(
                        "; checkpoint step-{step:06} holds the weights that gave it and was moved to {}",
                        m.display()
                    )
                });
                let good = match good {
                    Some(good) => format!("the last good checkpoint is {}", good.display()),
                    None => "no checkpoint with a finite loss exists".into(),
                };
                let message = format!("{non_finite}; stopping{moved}; {good}");
                log.note(&message)?;
                bail!(message);
            }
        };
        train_seconds += step_start.elapsed().as_secs_f64();
        losses.push(out.loss);
        let done = step + 1;
        let samples_per_sec =
            ((done - first_step) * config.train.batch_size * config.train.accum_freq) as f64
                / start.elapsed().as_secs_f64();
        let lr = learning_rate(config.optim.lr, config.optim.warmup_steps, steps, step);
        progress.set_message(format!(
            "loss {:.4} lr {lr:.2e} {samples_per_sec:.0} samples/s{}",
            out.loss,
            skipped.progress_note()
        ));
        progress.inc(1);

        let every = |n: usize| n > 0 && done.is_multiple_of(n);
        if every(config.train.log_every) || done == steps {
            let logit_scale = learner.model.logit_scale.val().into_scalar::<f32>();
            log.note(&format!(
                "step {done}/{steps} loss {:.4} lr {lr:.3e} logit_scale {logit_scale:.3} samples/s {samples_per_sec:.1}{}",
                out.loss,
                skipped.progress_note()
            ))?;
            log.record(json!({
                "step": done, "loss": out.loss, "lr": lr, "logit_scale": logit_scale,
                "grad_norm": out.grad_norm, "samples_per_sec": samples_per_sec,
                "skipped": skipped.by_kind(),
            }))?;
        }
        // The checkpoint comes before the evaluation, so that nothing after it can cost it;
        // the evaluation's accuracy is added to it afterwards.
        let checkpointed = if every(config.train.checkpoint_every) || done == steps {
            let state = CheckpointState {
                step: done,
                loss: Some(out.loss),
                zero_shot_accuracy: None,
                imported_from: None,
                data_position: Some(batch.stream_position),
            };
            let parts = CheckpointParts {
                model: &learner.model,
                model_config: &model_config,
                train_config: Some(config),
                tokenizer: &tokenizer,
                state: &state,
                optimizer: Some(&learner.optim),
            };
            let dir = checkpoint::save(run_dir, &parts, config.train.keep_checkpoints)?;
            log.note(&format!("step {done}: checkpoint {}", dir.display()))?;
            last_checkpoint = Some(dir.clone());
            Some(dir)
        } else {
            None
        };
        if every(config.train.eval_every) || done == steps {
            let (zs, ret) = evaluate(&learner.model)?;
            accuracy = Some(zs.top1);
            if let Some(dir) = &checkpointed {
                checkpoint::record_accuracy(dir, zs.top1)?;
            }
            log.say(&format!(
                "step {done}: held-out zero-shot top-1 {:.1}% (chance {:.1}%), top-5 {:.1}%; retrieval R@1 image->text {:.1}%, text->image {:.1}%",
                100.0 * zs.top1,
                100.0 * chance,
                100.0 * zs.top5,
                100.0 * ret.image_to_text.r1,
                100.0 * ret.text_to_image.r1
            ))?;
            log.record(json!({
                "step": done, "zero_shot_top1": zs.top1, "zero_shot_top5": zs.top5,
                "retrieval_image_to_text_r1": ret.image_to_text.r1,
                "retrieval_text_to_image_r1": ret.text_to_image.r1,
            }))?;
        }
    }
    progress.finish_and_clear();
    let wall_seconds = start.elapsed().as_secs_f64();
    let checkpoint = match last_checkpoint {
        Some(dir) => dir,
        // Resumed from the final checkpoint: nothing was left to do.
        None => {
            let dir = checkpoint::resolve(run_dir)?;
            accuracy = checkpoint::read_state(&dir)?.zero_shot_accuracy;
            log.say(&format!(
                "the run already finished at step {steps} ({}); nothing to do (raise --steps to train longer)",
                dir.display()
            ))?;
            dir
        }
    };
    let report = TrainReport {
        steps,
        losses,
        zero_shot_accuracy: accuracy.unwrap_or_default(),
        chance_accuracy: chance,
        samples_per_sec: ((steps - first_step) * config.train.batch_size * config.train.accum_freq)
            as f64
            / train_seconds.max(1e-9),
        wall_seconds,
        checkpoint,
    };
    if first_step < steps {
        log.say(&format!(
            "done: {steps} steps in {wall_seconds:.0}s ({:.1} samples/s in train steps); zero-shot top-1 {:.1}% vs chance {:.1}%; checkpoint {}",
            report.samples_per_sec,
            100.0 * report.zero_shot_accuracy,
            100.0 * report.chance_accuracy,
            report.checkpoint.display()
        ))?;
    }
    drop(lock);
    Ok(report)
}
