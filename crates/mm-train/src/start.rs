//! Where a run starts: a fresh model, the weights of `init_from`, or (resuming) a checkpoint of
//! its own with the optimiser state, step and data position it recorded.

use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use mm_data::{ClipTokenizer, Labels, SourceKind};
use mm_encoders::{ClipConfig, ClipModel, FusionClassifier};

use crate::checkpoint::{self, Checkpoint, CheckpointState};
use crate::config::{FusionTable, MAX_CLASSES, TrainConfig, check_classes};
use crate::device::parse_device;
use crate::learner::Learner;
use crate::task::Trainee;

/// The model a run starts from and the tokenizer that goes with it.
pub struct StartingPoint<M: Trainee = ClipModel> {
    /// The towers' shape.
    pub model_config: ClipConfig,
    pub learner: Learner<M>,
    pub tokenizer: ClipTokenizer,
    /// What the log says it is.
    pub description: String,
}

/// A model a run can start: fresh or from `init_from`, or restored from its own checkpoint.
pub trait Startable: Trainee + Sized {
    fn start(config: &TrainConfig) -> Result<StartingPoint<Self>>;
    /// The model of a checkpoint of its own run (`ckpt` read from `dir`).
    fn restored(config: &TrainConfig, ckpt: Checkpoint, dir: &Path) -> Result<Self>;
}

impl Startable for ClipModel {
    fn start(config: &TrainConfig) -> Result<StartingPoint> {
        starting_point(config)
    }

    fn restored(_: &TrainConfig, ckpt: Checkpoint, _: &Path) -> Result<Self> {
        Ok(ckpt.model)
    }
}

/// A classifier starts on the towers of `init_from` (or fresh ones of `model`) with a new
/// fusion head; the classes come from the config or the data (see
/// [`class_names`]).
impl Startable for FusionClassifier {
    fn start(config: &TrainConfig) -> Result<StartingPoint<Self>> {
        let classes = class_names(config)?;
        let StartingPoint {
            model_config,
            learner,
            tokenizer,
            description,
        } = starting_point(config)?;
        let device = parse_device(&config.device)?.autodiff();
        let fusion = config.fusion.clone().unwrap_or_default();
        let model = classifier(&fusion, &classes, learner.model, &device, config.seed)?;
        Ok(StartingPoint {
            model_config,
            learner: Learner::from_model(config, model),
            tokenizer,
            description: format!(
                "{description}; a new {:?}-stage {:?} classifier of {} classes",
                fusion.stage,
                fusion.operator,
                classes.len()
            )
            .to_lowercase(),
        })
    }

    /// The checkpoint's classifier, refused when the run's classes are no longer the ones it
    /// was trained on (its outputs would mean other classes).
    fn restored(config: &TrainConfig, ckpt: Checkpoint, dir: &Path) -> Result<Self> {
        let device = ckpt.model.logit_scale.val().device();
        let model = checkpoint::load_fusion(dir, ckpt.model, &device)?.with_context(|| {
            format!(
                "{}: not a classifier's checkpoint (no {})",
                dir.display(),
                checkpoint::FUSION_CONFIG_FILE
            )
        })?;
        let (trained, now) = (&model.fusion.config.class_names, class_names(config)?);
        if *trained != now {
            let first = trained
                .iter()
                .zip(&now)
                .position(|(a, b)| a != b)
                .unwrap_or(trained.len().min(now.len()));
            bail!(
                "{}: trained on {} classes, but the run now has {} (first difference at class {first}: {:?} vs {:?}); a classifier resumes only with its own classes",
                dir.display(),
                trained.len(),
                now.len(),
                trained.get(first),
                now.get(first)
            );
        }
        Ok(model)
    }
}

/// A fresh model of `config.model` with OpenAI's tokenizer, or the checkpoint `init_from`.
pub fn starting_point(config: &TrainConfig) -> Result<StartingPoint> {
    if let Some(path) = &config.init_from {
        let device = parse_device(&config.device)?;
        let ckpt = checkpoint::load(path, &device.autodiff())
            .with_context(|| format!("init_from = {}", path.display()))?;
        let (model_config, model) = config
            .objective
            .adapt(ckpt.model_config, ckpt.model)
            .with_context(|| format!("init_from = {}", path.display()))?;
        return Ok(StartingPoint {
            model_config,
            learner: Learner::from_model(config, model),
            tokenizer: ckpt.tokenizer,
            description: format!("weights from {}", ckpt.dir.display()),
        });
    }
    let Some(spec) = &config.model else {
        bail!("the config has neither `model` nor `init_from`");
    };
    let model_config = config.objective.fresh_model(spec.resolve()?);
    Ok(StartingPoint {
        learner: Learner::new(config, &model_config)?,
        model_config,
        tokenizer: ClipTokenizer::openai(),
        description: "freshly initialised".into(),
    })
}

/// The run's classes, in output order: `[fusion] classes`, `classes_file` (one per line), the
/// built-in task's, or every label of one pass over the training data (sorted). Fewer than two
/// is an error.
pub fn class_names(config: &TrainConfig) -> Result<Vec<String>> {
    let fusion = config.fusion.clone().unwrap_or_default();
    let classes = if !fusion.classes.is_empty() {
        fusion.classes
    } else if let Some(path) = &fusion.classes_file {
        let text = mm_data::regular_file::read_text(path)
            .with_context(|| format!("fusion.classes_file = {}", path.display()))?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    } else if config.data.source == SourceKind::Shapes {
        config.data.shapes_task.class_names()
    } else {
        labels_in(config)?
    };
    check_classes(&classes).map_err(|e| anyhow::anyhow!("the classes: {e}"))?;
    if classes.len() < 2 {
        bail!(
            "the data has {} class{} ({classes:?}): a classifier needs at least 2",
            classes.len(),
            if classes.len() == 1 { "" } else { "es" }
        );
    }
    Ok(classes)
}

/// Every label of one pass over the training data, sorted (images are not decoded).
fn labels_in(config: &TrainConfig) -> Result<Vec<String>> {
    let mut data = config.data.clone();
    data.labels = Labels::Required;
    let source = data
        .open_epoch(config.seed, 0, 1)
        .context("key `data.path`")?;
    let mut labels = BTreeSet::new();
    for label in source.flatten().filter_map(|pair| pair.label) {
        labels.insert(label);
        if labels.len() > MAX_CLASSES {
            bail!(
                "the training data has more than {MAX_CLASSES} distinct labels: is data.csv_label_key the label column?"
            );
        }
    }
    Ok(labels.into_iter().collect())
}

/// The classifier of `fusion` with `classes` on `clip` (towers of a checkpoint or fresh), its
/// fusion modules drawn from the run's `seed` whether the towers are fresh or loaded.
pub fn classifier(
    fusion: &FusionTable,
    classes: &[String],
    clip: ClipModel,
    device: &Device,
    seed: u64,
) -> Result<FusionClassifier> {
    let config = fusion.classifier(classes);
    let embed_dim = clip.visual_projection.weight.dims()[1];
    config
        .check(embed_dim)
        .map_err(|(key, why)| anyhow::anyhow!("key `fusion.{key}`: {why}"))?;
    // Not the towers' stream: a fresh run's head would otherwise repeat their first draws.
    Ok(config.init_seeded(clip, device, seed ^ FUSION_SEED_TAG))
}

/// Mixed into the run's seed for a classifier's fusion modules.
const FUSION_SEED_TAG: u64 = 0x6675_7369_6f6e; // "fusion"

/// A run continued from a checkpoint of its own: where, and at which step and data position.
pub struct Resumed<M: Trainee = ClipModel> {
    pub start: StartingPoint<M>,
    pub state: CheckpointState,
}

/// Restores a run from `from`: a checkpoint directory, or a run directory whose newest
/// complete checkpoint that loads is used (a corrupt or partial newest one is reported and
/// the previous one tried). Model, optimiser moments, step and data position come back.
pub fn resume_point<M: Startable>(config: &TrainConfig, from: &Path) -> Result<Resumed<M>> {
    let candidates = if from.join(checkpoint::STATE_FILE).exists() {
        vec![from.to_path_buf()]
    } else {
        checkpoint::resumable(from)
    };
    if candidates.is_empty() {
        bail!(
            "{}: no complete checkpoint with optimiser state to resume from",
            from.display()
        );
    }
    let mut failures: Vec<(PathBuf, anyhow::Error)> = Vec::new();
    for dir in candidates {
        match restore::<M>(config, &dir) {
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

fn restore<M: Startable>(config: &TrainConfig, dir: &Path) -> Result<Resumed<M>> {
    let device = parse_device(&config.device)?.autodiff();
    let ckpt = checkpoint::load(dir, &device)?;
    if let Some(spec) = &config.model {
        let wanted = config.objective.fresh_model(spec.resolve()?);
        if wanted != ckpt.model_config {
            bail!(
                "{}: its model differs from the config's `model`",
                dir.display()
            );
        }
    }
    let (model_config, tokenizer, state) = (
        ckpt.model_config.clone(),
        ckpt.tokenizer.clone(),
        ckpt.state.clone(),
    );
    let model = M::restored(config, ckpt, dir)?;
    let ids = checkpoint::read_param_ids(dir)?;
    let model = crate::param_path::with_param_ids(model, &ids)
        .with_context(|| format!("{}", dir.join(checkpoint::PARAM_IDS_FILE).display()))?;
    let mut learner = Learner::from_model(config, model);
    let optimizer = dir.join(checkpoint::OPTIMIZER_FILE);
    learner.optim = learner
        .optim
        .load(&optimizer)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", optimizer.display()))?;
    Ok(Resumed {
        start: StartingPoint {
            model_config,
            learner,
            tokenizer,
            description: format!("resumed from {} at step {}", dir.display(), state.step),
        },
        state,
    })
}
