//! The training loop: steps, logging, periodic evaluation and checkpoints. The step itself is
//! the [`Learner`]'s; where a run starts is [`crate::start`]'s.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::rc::Rc;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mm_contrastive::dist::{Communicator, SingleProcess};
use mm_data::{Batcher, ClipBatch, PairSource, Prefetcher, SkipCounts};
use mm_encoders::{ClipModel, CocaModel, FusionClassifier};
use serde_json::json;

use crate::checkpoint::{self, CheckpointParts, CheckpointState};
use crate::config::TrainConfig;
use crate::learner::NonFinite;
use crate::optim::learning_rate;
use crate::replicas::check_replicas_agree;
use crate::run_dir::RunDirLock;
use crate::start::{Resumed, Startable, StartingPoint, resume_point};
use crate::suite::{Measurement, Measuring, RunSuites};
use crate::task::Objective;

impl TrainReport {
    /// A metric of the last evaluation, e.g. `shapes/top1`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.eval.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The step the run ended at (`train.steps`, or where it stopped early).
    pub steps: usize,
    /// Set when `train.early_stop_patience` ended the run before `train.steps`.
    pub stopped_early: Option<usize>,
    /// Loss of every step this call ran, in order.
    pub losses: Vec<f32>,
    /// The last evaluation's metrics (`SUITE/METRIC`), in suite order; empty without suites.
    pub eval: Vec<(String, f64)>,
    pub samples_per_sec: f64,
    pub wall_seconds: f64,
    pub checkpoint: PathBuf,
}

/// Skipped samples reported in full, per kind; after that only the counts (progress line,
/// log, metrics).
const REPORTED_PER_KIND: usize = 3;

/// Adds a batch's skipped samples to the run's tally; returns the lines worth showing.
fn tally(skipped: &mut SkipCounts, batch: &ClipBatch) -> Vec<String> {
    let mut lines = Vec::new();
    for error in &batch.errors {
        let kind = error.kind;
        if let Some(error) = skipped.record(error.clone()) {
            lines.push(format!("skipped sample: {error}"));
        }
        if skipped.count(kind) == REPORTED_PER_KIND {
            lines.push(format!("(further {kind} samples are counted, not listed)"));
        }
    }
    lines
}

fn progress_note(skipped: &SkipCounts) -> String {
    match skipped.total() {
        0 => String::new(),
        n => format!(" skipped {n}"),
    }
}

fn by_kind(skipped: &SkipCounts) -> serde_json::Value {
    skipped
        .counts()
        .iter()
        .map(|(kind, n)| (kind.name().to_string(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Appends human-readable lines to `train.log` and JSON records to `metrics.jsonl`.
/// Also writes every metric to TensorBoard event files in the run directory.
/// Ranks other than 0 of a data-parallel run hold a silent one: only rank 0 reports.
struct RunLog(Option<LogFiles>);

struct LogFiles {
    text: File,
    metrics: File,
    tensorboard: tensorboard_rs::summary_writer::SummaryWriter,
    progress: ProgressBar,
}

impl RunLog {
    fn open(run_dir: &std::path::Path, progress: ProgressBar) -> Result<Self> {
        Ok(Self(Some(LogFiles::open(run_dir, progress)?)))
    }

    /// A line for the user (above the progress bar) and the log file.
    fn say(&mut self, line: &str) -> Result<()> {
        self.0.as_mut().map_or(Ok(()), |log| log.say(line))
    }

    /// A line for the log file only.
    fn note(&mut self, line: &str) -> Result<()> {
        self.0.as_mut().map_or(Ok(()), |log| log.note(line))
    }

    fn record(&mut self, value: serde_json::Value) -> Result<()> {
        self.0.as_mut().map_or(Ok(()), |log| log.record(value))
    }
}

impl LogFiles {
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
    /// `train/loss`, `train/lr`, ..., `eval/<suite>/<metric>`, `data/skipped/<kind>`.
    fn record(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{value}")?;
        let step = value["step"].as_u64().unwrap_or(0) as usize;
        for (key, field) in value.as_object().into_iter().flatten() {
            let group = match key.as_str() {
                "step" => continue,
                "eval" => "eval",
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

/// Every rank's data position, in rank order (exact to 2^48 items: each is sent as two
/// 24-bit halves, which f32 buffers carry exactly).
fn gather_positions(comm: &dyn Communicator, position: u64) -> Result<Vec<u64>> {
    const HALF: u64 = 1 << 24;
    let position = position.min(HALF * HALF - 1);
    let parts = [(position / HALF) as f32, (position % HALF) as f32];
    let all = comm.all_gather(&parts)?;
    Ok(all
        .chunks(2)
        .map(|p| p[0] as u64 * HALF + p[1] as u64)
        .collect())
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
    train_ranks(config, show_progress, resume, Rc::new(SingleProcess))
}

/// [`train_from`] as one rank of `comm`'s data-parallel group: every rank calls it with the
/// same config. Each reads its share of the data and computes its share of the global batch's
/// gradients; rank 0 alone owns the run directory, logs, evaluates and checkpoints (with every
/// rank's data position). On ranks other than 0 the report has no evaluation.
pub fn train_ranks(
    config: &TrainConfig,
    show_progress: bool,
    resume: Option<&Path>,
    comm: Rc<dyn Communicator>,
) -> Result<TrainReport> {
    match config.objective {
        Objective::Classify => run::<FusionClassifier>(config, show_progress, resume, comm),
        Objective::Coca => run::<CocaModel>(config, show_progress, resume, comm),
        Objective::Clip | Objective::Siglip => {
            run::<ClipModel>(config, show_progress, resume, comm)
        }
    }
}

/// [`train_ranks`] for the model the objective trains.
fn run<M: Startable>(
    config: &TrainConfig,
    show_progress: bool,
    resume: Option<&Path>,
    comm: Rc<dyn Communicator>,
) -> Result<TrainReport> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let lead = rank == 0;
    let run_dir = &config.output_dir;
    // A config's own `model` was checked with the config; the shape `init_from` brings is
    // read here, before anything is loaded or the run directory exists.
    if let (None, Some(from)) = (&config.model, &config.init_from) {
        let shape = checkpoint::model_config(from)
            .with_context(|| format!("init_from = {}", from.display()))?;
        config
            .check_memory(&shape)
            .map_err(|message| anyhow::anyhow!("init_from = {}: {message}", from.display()))?;
    }
    let lock = match lead {
        true => Some(RunDirLock::acquire(run_dir)?),
        false => None,
    };
    let mut stale = Vec::new();
    if let Some(lock) = &lock {
        stale = lock.remove_stale_temps("checkpoints")?;
        stale.extend(lock.remove_stale_temps("")?);
    }
    let previous = run_dir.join("checkpoints");
    let mut resumed_note = None;
    let (start_point, first_step, data_position) = match resume {
        Some(from) => {
            let Resumed { start, state } = resume_point::<M>(config, from)?;
            let (position, note) = state.data_position_for(rank, world);
            resumed_note = note;
            (start, state.step, position)
        }
        None => {
            if !checkpoint::step_dirs(&previous).is_empty() {
                bail!(
                    "{} holds checkpoints of an earlier run; resume it (--resume latest), choose another output_dir (--output-dir) or remove it",
                    previous.display()
                );
            }
            (M::start(config)?, 0, 0)
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
        learner,
        tokenizer,
        description: start,
    } = start_point;
    // Every rank must start from the same checkpoint step (they each read it).
    let steps_seen = comm.all_gather(&[first_step as f32])?;
    if steps_seen.iter().any(|&s| s != first_step as f32) {
        bail!(
            "the ranks resumed from different steps ({steps_seen:?}): is the run directory shared by every machine?"
        );
    }
    let mut learner = learner.with_communicator(comm.clone())?;
    let global_batch = config.train.contrastive_batch() * world;

    let image_size = model_config.vision.image_size;
    let batcher = Batcher::new(
        tokenizer.clone(),
        image_size,
        model_config.text.context_length,
    )
    .with_transform(config.data.train_transform, config.seed)
    .with_image_limits(config.data.image_limits())
    .with_max_consecutive_skips(config.data.max_consecutive_skips)
    .with_question_answers(config.data.text_format == mm_data::TextFormat::QuestionAnswer)
    .with_workers(config.data.workers)?;
    let mut data = config.data.for_rank(rank, world);
    if config.objective == Objective::Classify {
        data.labels = mm_data::Labels::Required;
    }
    let mut stream = data
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

    let progress = if show_progress && lead {
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
    let mut log = match lead {
        true => RunLog::open(run_dir, progress.clone())?,
        false => RunLog(None),
    };
    if let Some(note) = resumed_note {
        log.say(&note)?;
    }
    for path in &stale {
        log.say(&format!(
            "removed {} (left by an interrupted write)",
            path.display()
        ))?;
    }
    let params = learner.model.num_params();
    let ranks = match world {
        1 => String::new(),
        n => format!(
            " x {n} ranks (global batch {global_batch}{})",
            if config.train.local_loss {
                ", local loss"
            } else {
                ""
            }
        ),
    };
    log.say(&format!(
        "training {params} parameters ({start}) on {} for {steps} steps of {}{ranks} ({}), writing to {}",
        config.device,
        config.train.batch_size,
        description,
        run_dir.display()
    ))?;
    if matches!(config.device.as_str(), "flex" | "cpu") {
        log.say(&mm_kernels::isa::describe())?;
    }

    // The eval suites, their data read once; the shapes suite only when so configured or
    // when training on the built-in data.
    let run_suites = match lead {
        true => RunSuites::load(
            &config.eval,
            (&config.data, config.objective),
            config.seed,
            image_size,
        )?,
        false => RunSuites::none(),
    };
    let selection = run_suites.selection.clone();
    for suite in &run_suites.suites {
        log.say(&format!("eval suite {}: {}", suite.name, suite.description))?;
    }
    match &selection {
        Some(selection) => log.say(&format!(
            "keeping the best checkpoint by {}",
            selection.describe()
        ))?,
        None => log.say(
            "no eval suites (add [[eval.suites]] to measure held-out data): checkpoints are kept by age only",
        )?,
    }
    let ctx = model_config.text.context_length;
    let evaluate = |model: &M| -> Result<Vec<Measurement>> {
        let model = model.valid();
        run_suites.measure(&Measuring {
            model: model.clip(),
            classifier: model.classifier(),
            captioner: model.captioner(),
            tokenizer: &tokenizer,
            context_length: ctx,
            objective: config.objective,
            loss_batch: global_batch,
        })
    };
    let mut best: Option<f64> = None;
    // Evaluations since the selected metric last improved, and the step an early stop ended.
    let (mut stale_evals, mut stopped_early) = (0usize, None);

    let start = Instant::now();
    let mut train_seconds = 0.0;
    // Time in collectives (waiting for other ranks included) since the last log line.
    let (mut comm_seconds, mut steps_since_log) = (0.0, 0);
    let mut losses = Vec::with_capacity(steps - first_step);
    let mut last_checkpoint = None;
    let mut last_eval = Vec::new();
    let mut skipped = SkipCounts::new(REPORTED_PER_KIND);
    for step in first_step..steps {
        let mut micro_batches = Vec::with_capacity(config.train.accum_freq);
        for _ in 0..config.train.accum_freq.max(1) {
            // A batch of which the objective admits no row (a classifier's labels none of its
            // classes) is drawn again, as unusable samples are: the data may hold nothing it
            // can learn from, which must stop the run, never train on empty batches.
            let mut refused_in_a_row = 0;
            let batch = loop {
                let batch = match batches.next() {
                    Some(Ok(batch)) => batch,
                    Some(Err(e)) => return Err(e).context(format!("step {}", step + 1)),
                    None => bail!(
                        "the data source ended at step {} (no usable samples in a whole pass?)",
                        step + 1
                    ),
                };
                let rows = batch.batch_size;
                let batch = learner.model.admit(batch);
                for line in tally(&mut skipped, &batch) {
                    log.say(&line)?;
                }
                if batch.batch_size > 0 {
                    break batch;
                }
                refused_in_a_row += rows;
                if refused_in_a_row >= config.data.max_consecutive_skips {
                    let example = batch.errors.last().map_or(String::new(), |e| {
                        format!(" ({}: {})", e.location, e.message)
                    });
                    bail!(
                        "step {}: the last {refused_in_a_row} samples were all refused{example}: the data has nothing this objective can train on (data.max_consecutive_skips = {})",
                        step + 1,
                        config.data.max_consecutive_skips
                    );
                }
            };
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
        comm_seconds += learner.take_comm_time().as_secs_f64();
        steps_since_log += 1;
        losses.push(out.loss);
        let done = step + 1;
        let samples_per_sec =
            ((done - first_step) * global_batch) as f64 / start.elapsed().as_secs_f64();
        let lr = learning_rate(config.optim.lr, config.optim.warmup_steps, steps, step);
        progress.set_message(format!(
            "loss {:.4} lr {lr:.2e} {samples_per_sec:.0} samples/s{}",
            out.loss,
            progress_note(&skipped)
        ));
        progress.inc(1);

        let every = |n: usize| n > 0 && done.is_multiple_of(n);
        if every(config.train.log_every) || done == steps {
            let values = learner.model.log_values();
            let comm_ms = 1e3 * comm_seconds / steps_since_log.max(1) as f64;
            let comm_note = match world {
                1 => String::new(),
                _ => format!(" comm {comm_ms:.1} ms/step"),
            };
            (comm_seconds, steps_since_log) = (0.0, 0);
            let shown: String = values
                .iter()
                .map(|(name, value)| format!(" {name} {value:.3}"))
                .collect();
            log.note(&format!(
                "step {done}/{steps} loss {:.4} lr {lr:.3e}{shown} samples/s {samples_per_sec:.1}{comm_note}{}",
                out.loss,
                progress_note(&skipped)
            ))?;
            let mut record = json!({
                "step": done, "loss": out.loss, "lr": lr,
                "grad_norm": out.grad_norm, "samples_per_sec": samples_per_sec,
                "skipped": by_kind(&skipped),
            });
            for (name, value) in values {
                record[name] = json!(value);
            }
            if world > 1 {
                record["comm_ms"] = json!(comm_ms);
            }
            log.record(record)?;
        }
        // The checkpoint comes before the evaluation, so that nothing after it can cost it;
        // the evaluation's accuracy is added to it afterwards.
        if world > 1 && every(config.train.checksum_every) {
            check_replicas_agree(&learner.model, done, learner.comm())?;
        }
        let checkpoint_due = every(config.train.checkpoint_every) || done == steps;
        let positions = match checkpoint_due {
            true => gather_positions(learner.comm(), batch.stream_position)?,
            false => Vec::new(),
        };
        let checkpointed = if checkpoint_due && lead {
            let state = CheckpointState {
                step: done,
                loss: Some(out.loss),
                data_position: Some(batch.stream_position),
                world_size: (world > 1).then_some(world),
                data_positions: if world > 1 { positions } else { Vec::new() },
                ..Default::default()
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
        if !run_suites.suites.is_empty() && (every(config.train.eval_every) || done == steps) {
            let measured = evaluate(&learner.model)?;
            let metrics: Vec<(String, f64)> =
                measured.iter().flat_map(|m| m.metrics.clone()).collect();
            if let Some(dir) = &checkpointed {
                checkpoint::record_eval(
                    dir,
                    &metrics,
                    selection.as_ref(),
                    config.train.keep_checkpoints,
                )?;
            }
            for m in &measured {
                log.say(&format!("step {done}: {}", m.summary))?;
            }
            if let Some(selection) = &selection {
                let value = metrics
                    .iter()
                    .find(|(n, _)| *n == selection.metric)
                    .map(|&(_, v)| v)
                    .with_context(|| format!("no metric {}", selection.metric))?;
                if best.is_none_or(|b| selection.better(value, b)) {
                    best = Some(value);
                    stale_evals = 0;
                    log.note(&format!(
                        "step {done}: best {} so far: {value:.4}",
                        selection.metric
                    ))?;
                } else {
                    stale_evals += 1;
                }
            }
            let values: serde_json::Map<String, serde_json::Value> =
                metrics.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
            log.record(json!({"step": done, "eval": values}))?;
            last_eval = metrics;
        }
        // Early stopping: rank 0 decides at an evaluation (which is also a checkpoint, see
        // the config check) and every rank follows at the same step.
        let patience = config.train.early_stop_patience;
        if patience > 0 && every(config.train.eval_every) && done < steps {
            let mut stop = lead && stale_evals >= patience;
            if world > 1 {
                stop = learner.comm().all_gather(&[stop as u8 as f32])?[0] > 0.5;
            }
            if stop {
                log.say(&format!(
                    "step {done}: {patience} evaluations without a better {}; stopping early",
                    selection.as_ref().map_or("metric", |s| s.metric.as_str())
                ))?;
                stopped_early = Some(done);
                break;
            }
        }
    }
    progress.finish_and_clear();
    let wall_seconds = start.elapsed().as_secs_f64();
    let checkpoint = match last_checkpoint {
        Some(dir) => dir,
        // Rank 0 owns the checkpoints.
        None if !lead => run_dir.clone(),
        // Resumed from the final checkpoint: nothing was left to do.
        None => {
            let dir = checkpoint::resolve(run_dir)?;
            last_eval = checkpoint::read_state(&dir)?.eval.into_iter().collect();
            log.say(&format!(
                "the run already finished at step {steps} ({}); nothing to do (raise --steps to train longer)",
                dir.display()
            ))?;
            dir
        }
    };
    let last_step = stopped_early.unwrap_or(steps);
    let report = TrainReport {
        steps: last_step,
        stopped_early,
        losses,
        eval: last_eval,
        samples_per_sec: ((last_step - first_step) * global_batch) as f64 / train_seconds.max(1e-9),
        wall_seconds,
        checkpoint,
    };
    if first_step < steps {
        let selected = selection
            .as_ref()
            .and_then(|s| Some((s, report.metric(&s.metric)?)))
            .map_or(String::new(), |(s, v)| format!("; {} {v:.4}", s.metric));
        log.say(&format!(
            "done: {last_step} steps in {wall_seconds:.0}s ({:.1} samples/s in train steps){selected}; checkpoint {}",
            report.samples_per_sec,
            report.checkpoint.display()
        ))?;
    }
    drop(lock);
    Ok(report)
}
