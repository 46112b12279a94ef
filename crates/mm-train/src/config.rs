//! The training config: one typed structure, read from TOML, validated once, passed down.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use mm_data::DataConfig;
use mm_encoders::{ClipConfig, ConfigError, from_toml_str};

pub use crate::suite::EvalConfig;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Everything a run needs. Unknown keys are errors.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `flex` (CPU), `wgpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub seed: u64,
    /// Run directory: logs and checkpoints go here.
    pub output_dir: PathBuf,
    /// A preset name (`model = "tiny"`) or a full `[model]` table, for a freshly initialised
    /// model. Leave it out with `init_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Start from these weights instead: an mm checkpoint, a run directory (its latest
    /// checkpoint) or a Hugging Face CLIP directory. The model's shape and tokenizer come with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// What the run optimises: `clip` (softmax) or `siglip` (sigmoid with a learnable bias).
    #[serde(default)]
    pub objective: crate::task::Objective,
    #[serde(default)]
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub train: ScheduleConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// `objective = "classify"`: the fusion classifier to put on the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<FusionTable>,
    /// `objective = "coca"`: how the two losses are weighed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coca: Option<CocaTable>,
}

/// `[coca]`: the weights of CoCa's two losses (open_clip's `--coca-contrastive-loss-weight`
/// and `--coca-caption-loss-weight`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CocaTable {
    #[serde(default = "default_contrastive_weight")]
    pub contrastive_loss_weight: f64,
    #[serde(default = "default_caption_weight")]
    pub caption_loss_weight: f64,
}

impl Default for CocaTable {
    fn default() -> Self {
        toml::from_str("").expect("every [coca] key has a default")
    }
}

fn default_contrastive_weight() -> f64 {
    1.0
}
fn default_caption_weight() -> f64 {
    2.0
}

/// `[fusion]`: the classifier an `objective = "classify"` run trains on the towers (see
/// `mm_encoders::fusion`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FusionTable {
    /// `late`, `mid` or `early`.
    #[serde(default)]
    pub stage: mm_encoders::FusionStage,
    /// `sum`, `concat`, `product`, `gated` or `attention`.
    #[serde(default)]
    pub operator: mm_encoders::FusionOperator,
    /// `both`, or `image` / `text` alone (the baselines).
    #[serde(default)]
    pub modalities: mm_encoders::Modalities,
    /// Hidden width of the MLP head.
    #[serde(default = "default_head_hidden")]
    pub head_hidden: usize,
    /// `sum`: the image side's initial (or fixed) weight, in (0, 1).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_true")]
    pub learn_alpha: bool,
    /// `attention`: heads of the cross-attention blocks.
    #[serde(default = "default_fusion_heads")]
    pub heads: usize,
    /// The class names, in output order. Else `classes_file` (one per line), else the
    /// built-in task's, else every label of one pass over the training data, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes_file: Option<PathBuf>,
    /// The towers' learning rate as a share of `optim.lr` (pretrained towers under a new
    /// head usually learn slower; `train.lock_image` / `lock_text` freeze them).
    #[serde(default = "default_tower_lr_scale")]
    pub tower_lr_scale: f64,
}

impl Default for FusionTable {
    fn default() -> Self {
        toml::from_str("").expect("every [fusion] key has a default")
    }
}

/// Classes a classifier may have (a label set, not a vocabulary).
pub const MAX_CLASSES: usize = 10_000;
/// Why a class list cannot be used, if it cannot.
pub fn check_classes(classes: &[String]) -> Result<(), String> {
    if classes.len() > MAX_CLASSES {
        return Err(format!("{} classes (at most {MAX_CLASSES})", classes.len()));
    }
    let mut seen = BTreeSet::new();
    for class in classes {
        if class.trim().is_empty() {
            return Err("an empty class name".into());
        }
        if !seen.insert(class) {
            return Err(format!("`{class}` is listed twice"));
        }
    }
    Ok(())
}

fn default_head_hidden() -> usize {
    256
}
fn default_alpha() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_fusion_heads() -> usize {
    4
}
fn default_tower_lr_scale() -> f64 {
    1.0
}

impl FusionTable {
    /// The classifier's config for `classes`.
    pub fn classifier(&self, classes: &[String]) -> mm_encoders::FusionConfig {
        mm_encoders::FusionConfig::new(classes.len())
            .with_stage(self.stage)
            .with_operator(self.operator)
            .with_modalities(self.modalities)
            .with_head_hidden(self.head_hidden)
            .with_alpha(self.alpha)
            .with_learn_alpha(self.learn_alpha)
            .with_heads(self.heads)
            .with_class_names(classes.to_vec())
    }
}

fn default_device() -> String {
    "flex".into()
}

/// AdamW with decoupled weight decay, linear warm-up and cosine decay.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this value; absent means no clipping.
    #[serde(default)]
    pub grad_clip_norm: Option<f64>,
}

fn default_weight_decay() -> f64 {
    0.2
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.98
}
fn default_eps() -> f64 {
    1e-6
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub steps: usize,
    pub batch_size: usize,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Zero-shot evaluation interval in steps (0: only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Checkpoint interval in steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Periodic checkpoints kept on disk (the newest ones, plus the best by zero-shot accuracy).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Micro-batches of `batch_size` accumulated into one optimiser step (open_clip's
    /// `accum_freq`): the contrastive batch is `batch_size * accum_freq`.
    #[serde(default = "default_accum_freq")]
    pub accum_freq: usize,
    /// Freeze the image tower and its projection (locked-image tuning, LiT): only the text
    /// side and the temperature learn.
    #[serde(default)]
    pub lock_image: bool,
    /// Freeze the text tower and its projection.
    #[serde(default)]
    pub lock_text: bool,
    /// Compute dtype of forward and backward: `fp32`, or `bf16` / `fp16` with fp32 master
    /// weights and optimiser.
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// Data-parallel runs: each rank computes only its own rows of the global logits and the
    /// feature gradients are reduce-scattered back (open_clip's `--local-loss`), so a rank's
    /// loss memory grows with the global batch once, not squared. The result is the same.
    #[serde(default)]
    pub local_loss: bool,
    /// The share of each training image's patches dropped (FLIP; open_clip's
    /// `patch_dropout`), in [0, 1): the image tower runs on the rest and the class token.
    /// Evaluation keeps every patch.
    #[serde(default)]
    pub patch_dropout: f64,
    /// Keep only each transformer block's input for the backward pass and run the block again
    /// there (open_clip's `--grad-checkpointing`): activation memory of one block instead of
    /// all of them, for about a third more compute (`benches/README.md` has the numbers).
    #[serde(default)]
    pub grad_checkpointing: bool,
    /// Stop once this many evaluations in a row have not improved the selected metric
    /// (`eval.select`); the best checkpoint is kept. 0: never stop early.
    #[serde(default)]
    pub early_stop_patience: usize,
    /// Data-parallel runs: every this many steps the ranks compare checksums of their weights
    /// and stop with an error naming the first parameter that differs (0: never).
    #[serde(default = "default_checksum_every")]
    pub checksum_every: usize,
    /// Data-parallel runs: a rank that waits this long for the others in one collective
    /// stops every rank with an error (a rank died or hangs where its launcher cannot see
    /// it). Rank 0's evaluations and checkpoints must fit in it.
    #[serde(default = "default_collective_timeout_s")]
    pub collective_timeout_s: u64,
}

impl ScheduleConfig {
    /// Samples per optimiser step, all of which see each other as negatives:
    /// `batch_size * accum_freq`.
    pub fn contrastive_batch(&self) -> usize {
        self.batch_size * self.accum_freq
    }
}

fn default_collective_timeout_s() -> u64 {
    900
}

fn default_checksum_every() -> usize {
    100
}

fn default_accum_freq() -> usize {
    1
}

fn default_log_every() -> usize {
    10
}
fn default_keep() -> usize {
    3
}

/// Caps on run sizes: beyond them a value is a typo, not a plan.
pub const MAX_STEPS: usize = 1 << 40;
/// The largest weight of a loss term: beyond it the other term is rounding noise and the
/// gradients overflow long before anything is learnt.
pub const MAX_LOSS_WEIGHT: f64 = 1e4;
pub const MAX_BATCH_SIZE: usize = 1 << 20;

/// The model shape: a named preset or an inline config.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSpec {
    Preset(String),
    Inline(Box<ClipConfig>),
}

impl ModelSpec {
    pub fn resolve(&self) -> Result<ClipConfig, ConfigError> {
        match self {
            ModelSpec::Preset(name) => ClipConfig::preset(name),
            ModelSpec::Inline(config) => Ok((**config).clone()),
        }
    }
}

impl Serialize for ModelSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelSpec::Preset(name) => serializer.serialize_str(name),
            ModelSpec::Inline(config) => config.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ModelSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a preset name ({}) or a model table",
                    ClipConfig::preset_names().join(", ")
                )
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<ModelSpec, E> {
                Ok(ModelSpec::Preset(name.to_string()))
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<ModelSpec, M::Error> {
                let config = ClipConfig::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ModelSpec::Inline(Box::new(config)))
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// Command-line overrides of common keys.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub output_dir: Option<PathBuf>,
    pub seed: Option<u64>,
    pub device: Option<String>,
}

impl TrainConfig {
    /// An error when training `model` (the config's own, or the one `init_from` names) on
    /// the CPU would need more memory than the machine has: weights, optimiser state,
    /// activations of a micro-batch, a classifier's fusion modules, batches ahead, held-out
    /// images (see [`crate::memory::training_bytes`]).
    pub fn check_memory(&self, model: &ClipConfig) -> Result<(), String> {
        if self.device != "flex" {
            return Ok(());
        }
        let extra_params = match self.objective {
            crate::task::Objective::Classify => {
                let fusion = self.fusion.clone().unwrap_or_default();
                // Classes the data brings are known only once it is read: count the
                // config's own list, or the two every classifier has at least.
                let classes = fusion.classes.len().max(2);
                fusion
                    .classifier(&vec![String::new(); classes])
                    .num_params(model.embed_dim)
            }
            _ => 0,
        };
        let sizes = crate::memory::RunSizes {
            batch_size: self.train.batch_size,
            accum_freq: self.train.accum_freq,
            prefetch: self.data.prefetch,
            heldout_samples: self.eval.decoded_images(&self.data, self.objective),
            extra_params,
        };
        crate::memory::check_fits(
            crate::memory::training_bytes(model, &sizes),
            &format!(
                "training this model ({} parameters) at batch size {}",
                model.num_params() + extra_params,
                self.train.batch_size
            ),
        )
    }
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = from_toml_str(text, origin).map_err(|mut e| {
            if matches!(e.key.as_str(), "data.rank" | "data.world_size") {
                e.message = "not a config key: the rank and the number of ranks come from the launcher (`mpiexec -n N mm-train ...`, see README, Training on many machines)".into();
            }
            e
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads a config file; a bare file name that does not exist is looked up in `configs/`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &[])
    }

    /// [`Self::load`] with `KEY=VALUE` settings applied to the file's text first (any key,
    /// dotted for tables: `train.accum_freq=4`, `objective="siglip"`); a value that is not
    /// TOML is a string. Errors name the file, or the setting.
    pub fn load_with(path: &Path, settings: &[String]) -> Result<Self, ConfigError> {
        let path = resolve_config_path(path);
        let origin = path.display().to_string();
        let text = mm_data::regular_file::read_text(&path)
            .map_err(|e| ConfigError::new(&origin, "", format!("cannot read config: {e}")))?;
        if settings.is_empty() {
            return Self::from_toml(&text, &origin);
        }
        let text = apply_settings(&text, settings, &origin)?;
        Self::from_toml(
            &text,
            &format!("{origin} with --set {}", settings.join(" ")),
        )
    }

    pub fn apply(&mut self, overrides: &Overrides) {
        let o = overrides.clone();
        self.train.steps = o.steps.unwrap_or(self.train.steps);
        self.train.batch_size = o.batch_size.unwrap_or(self.train.batch_size);
        self.optim.lr = o.lr.unwrap_or(self.optim.lr);
        self.output_dir = o.output_dir.unwrap_or(self.output_dir.clone());
        self.seed = o.seed.unwrap_or(self.seed);
        self.device = o.device.unwrap_or(self.device.clone());
    }

    /// Checks what serde cannot: ranges and relations between keys.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        match (&self.model, &self.init_from) {
            (Some(spec), None) => {
                let model = spec.resolve().map_err(|e| ConfigError {
                    origin: origin.into(),
                    ..e
                })?;
                model.validate(origin)?;
                if model.logit_bias_init.is_some() && self.objective == crate::task::Objective::Clip
                {
                    return Err(ConfigError::new(
                        origin,
                        "model.logit_bias_init",
                        "a logit bias is for the sigmoid loss: set objective = \"siglip\"",
                    ));
                }
                // A fresh model is trained with OpenAI's tokenizer: every id it emits must
                // have a row in the embedding table.
                let tokens = mm_data::ClipTokenizer::openai().vocab_size();
                if model.text.vocab_size < tokens {
                    return Err(ConfigError::new(
                        origin,
                        "model.text.vocab_size",
                        format!(
                            "{} is smaller than the tokenizer's {tokens} tokens",
                            model.text.vocab_size
                        ),
                    ));
                }
            }
            (None, Some(_)) => {} // Checked when the checkpoint is loaded.
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    origin,
                    "init_from",
                    "give either `model` (a new model) or `init_from` (whose shape is used), not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    origin,
                    "model",
                    "missing: give a preset name, a [model] table, or `init_from`",
                ));
            }
        }
        let err = |key: &str, msg: &str| Err(ConfigError::new(origin, key, msg));
        let classify = self.objective == crate::task::Objective::Classify;
        if self.output_dir.as_os_str().is_empty() {
            return err(
                "output_dir",
                "is empty; name the run directory (it would otherwise be the current one)",
            );
        }
        if let Err((key, message)) = self.data.check() {
            return err(key, &message);
        }
        let t = &self.train;
        if t.early_stop_patience > 0
            && (t.eval_every == 0
                || t.checkpoint_every == 0
                || !t.eval_every.is_multiple_of(t.checkpoint_every))
        {
            return err(
                "train.early_stop_patience",
                "needs evaluations (eval_every > 0) that are also checkpoints (eval_every a multiple of checkpoint_every), so that the run can end at any of them",
            );
        }
        if t.early_stop_patience > 0 && self.eval.suites_for(&self.data, self.objective).is_empty()
        {
            return err(
                "train.early_stop_patience",
                "needs an eval suite to watch ([[eval.suites]])",
            );
        }
        match (&self.fusion, classify) {
            (Some(_), false) => {
                return err(
                    "fusion",
                    "is the classifier of objective = \"classify\"; set that objective or remove [fusion]",
                );
            }
            (Some(fusion), true) => {
                if !(fusion.alpha > 0.0 && fusion.alpha < 1.0) {
                    return err(
                        "fusion.alpha",
                        &format!("{} (must be in (0, 1))", fusion.alpha),
                    );
                }
                let max_hidden = mm_encoders::fusion::MAX_HEAD_HIDDEN;
                if !(1..=max_hidden).contains(&fusion.head_hidden) {
                    return err(
                        "fusion.head_hidden",
                        &format!("{} (must be in 1..={max_hidden})", fusion.head_hidden),
                    );
                }
                if fusion.heads == 0 {
                    return err("fusion.heads", "must be at least 1");
                }
                if !(fusion.tower_lr_scale >= 0.0 && fusion.tower_lr_scale.is_finite()) {
                    return err(
                        "fusion.tower_lr_scale",
                        &format!("{} (must be a finite number >= 0)", fusion.tower_lr_scale),
                    );
                }
                if !fusion.classes.is_empty() && fusion.classes_file.is_some() {
                    return err(
                        "fusion.classes_file",
                        "give `classes` or `classes_file`, not both",
                    );
                }
                if let Err(message) = check_classes(&fusion.classes) {
                    return err("fusion.classes", &message);
                }
            }
            _ => {}
        }
        self.check_coca(origin)?;
        let as_text = self.data.text_format == mm_data::TextFormat::QuestionAnswer;
        if !classify && !as_text && self.data.shapes_task != mm_data::ShapesTask::Pairs {
            return err(
                "data.shapes_task",
                "is a classification task: set objective = \"classify\", or data.text_format = \"question_answer\" to train on its questions and answers as text (a CoCa learns to answer)",
            );
        }
        if classify && as_text {
            return err(
                "data.text_format",
                "a classifier reads questions as text and answers as labels already: leave text_format out",
            );
        }
        for (key, value, max) in [
            ("train.steps", self.train.steps, MAX_STEPS),
            ("train.batch_size", self.train.batch_size, MAX_BATCH_SIZE),
            ("train.accum_freq", self.train.accum_freq, MAX_BATCH_SIZE),
        ] {
            if value > max {
                return err(key, &format!("at most {max}, got {value}"));
            }
        }
        if let Err((key, message)) = self.eval.check(&self.data, self.objective) {
            return err(&key, &message);
        }
        for (key, value) in [
            ("optim.weight_decay", self.optim.weight_decay),
            ("optim.eps", self.optim.eps),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return err(key, &format!("must be a non-negative number, got {value}"));
            }
        }
        if self.optim.eps == 0.0 {
            return err("optim.eps", "must be positive (it guards a division)");
        }
        // A classifier with both towers frozen trains its head (a probe on frozen features).
        if self.train.lock_image && self.train.lock_text && !classify {
            return err(
                "train.lock_text",
                "both towers locked: only logit_scale would train",
            );
        }
        if !(1..=7 * 24 * 3600).contains(&self.train.collective_timeout_s) {
            return err(
                "train.collective_timeout_s",
                &format!(
                    "must be between 1 and {} seconds (a week), got {}",
                    7 * 24 * 3600,
                    self.train.collective_timeout_s
                ),
            );
        }
        if self.train.accum_freq == 0 {
            return err("train.accum_freq", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.train.patch_dropout) {
            return err(
                "train.patch_dropout",
                &format!(
                    "must be a share of patches in [0, 1), got {}",
                    self.train.patch_dropout
                ),
            );
        }
        if self.train.steps == 0 {
            return err("train.steps", "must be positive");
        }
        if self.train.batch_size < 2 {
            return err(
                "train.batch_size",
                "must be at least 2 (contrastive loss needs negatives)",
            );
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return err("optim.lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.optim.beta1) {
            return err("optim.beta1", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.optim.beta2) {
            return err("optim.beta2", "must be in [0, 1)");
        }
        if self
            .optim
            .grad_clip_norm
            .is_some_and(|n| !(n > 0.0 && n.is_finite()))
        {
            return err("optim.grad_clip_norm", "must be positive");
        }
        if let Some(spec) = &self.model {
            self.check_memory(&spec.resolve()?)
                .map_err(|message| ConfigError::new(origin, "model", message))?;
        }
        let device = crate::device::parse_device(&self.device)
            .map_err(|e| ConfigError::new(origin, "device", e.to_string()))?;
        if let Some(dtype) = self.train.precision.half()
            && !device.supports_dtype(dtype)
        {
            return err(
                "train.precision",
                &format!(
                    "device `{}` cannot compute in {dtype:?}; use fp32",
                    self.device
                ),
            );
        }
        Ok(())
    }
}

/// `text` with each `KEY=VALUE` of `settings` set (tables created as needed).
fn apply_settings(text: &str, settings: &[String], origin: &str) -> Result<String, ConfigError> {
    let mut root: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigError::new(origin, "", format!("invalid TOML: {}", e.message())))?;
    for setting in settings {
        let refuse = |key: &str, message: &str| ConfigError::new("--set", key, message);
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| refuse(setting, "give KEY=VALUE"))?;
        let key = key.trim();
        let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut table) => table.remove("v").expect("parsed above"),
            // A number TOML cannot hold (beyond 64-bit integers, say) is that number's error,
            // not a string for the key to reject by type.
            Err(e) if looks_numeric(value) => {
                return Err(refuse(
                    key.trim(),
                    &format!(
                        "`{}` is not a TOML number: {}",
                        value.trim(),
                        e.message().trim()
                    ),
                ));
            }
            Err(_) => toml::Value::String(value.to_string()),
        };
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().filter(|k| !k.is_empty());
        let (Some(last), false) = (last, parts.iter().any(|p| p.is_empty())) else {
            return Err(refuse(key, "not a key"));
        };
        let mut table = &mut root;
        for part in parts {
            let entry = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| refuse(key, &format!("`{part}` is not a table")))?;
        }
        table.insert(last.to_string(), value);
    }
    toml::to_string(&root).map_err(|e| ConfigError::new("--set", "", e.to_string()))
}

/// Whether a `--set` value is meant as a number: digits with an optional sign, point,
/// exponent or `_` separators.
fn looks_numeric(value: &str) -> bool {
    let value = value.trim();
    let digits = value.trim_start_matches(['+', '-']);
    digits.starts_with(|c: char| c.is_ascii_digit())
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '_' | '+' | '-'))
}

impl TrainConfig {
    /// `objective = "coca"` needs a model with a caption decoder, and a model with one needs
    /// that objective (any other would neither train nor keep the decoder).
    fn check_coca(&self, origin: &str) -> Result<(), ConfigError> {
        let coca = self.objective == crate::task::Objective::Coca;
        let err = |key: &str, msg: String| Err(ConfigError::new(origin, key, msg));
        if let (Some(_), false) = (&self.coca, coca) {
            return err(
                "coca",
                "holds CoCa's loss weights: set objective = \"coca\" or remove [coca]".into(),
            );
        }
        if let Some(table) = &self.coca {
            for (key, value) in [
                (
                    "coca.contrastive_loss_weight",
                    table.contrastive_loss_weight,
                ),
                ("coca.caption_loss_weight", table.caption_loss_weight),
            ] {
                if !(0.0..=MAX_LOSS_WEIGHT).contains(&value) {
                    return err(
                        key,
                        format!("must be a number in [0, {MAX_LOSS_WEIGHT}], got {value}"),
                    );
                }
            }
            if table.contrastive_loss_weight == 0.0 && table.caption_loss_weight == 0.0 {
                return err(
                    "coca",
                    "both loss weights are 0: nothing would be trained".into(),
                );
            }
        }
        let decoder = match &self.model {
            Some(spec) => Some(spec.resolve()?.multimodal.is_some()),
            None => None, // init_from: checked when the checkpoint is loaded.
        };
        match (coca, decoder) {
            (true, Some(false)) => err(
                "model",
                "objective = \"coca\" needs a model with a [multimodal] caption decoder (e.g. model = \"coca-tiny\")".into(),
            ),
            (false, Some(true)) => err(
                "objective",
                "the model has a caption decoder ([multimodal]): set objective = \"coca\" to train it".into(),
            ),
            _ if coca && self.train.patch_dropout > 0.0 => err(
                "train.patch_dropout",
                "is not supported with objective = \"coca\" (its decoder reads every image token)".into(),
            ),
            _ => Ok(()),
        }
    }
}

pub fn resolve_config_path(path: &Path) -> PathBuf {
    let bare = path.components().count() == 1;
    if !path.exists() && bare {
        let in_configs = Path::new("configs").join(path);
        if in_configs.exists() {
            return in_configs;
        }
    }
    path.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn settings_set_any_key_and_name_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "output_dir = \"r\"\nmodel = \"tiny\"\n[optim]\nlr = 1e-3\n[train]\nsteps = 5\nbatch_size = 8\n",
        )
        .unwrap();
        let config = TrainConfig::load_with(
            &path,
            &settings(&[
                "objective=siglip",
                "train.accum_freq=4",
                "eval.templates=[\"a {}\", \"the {}\"]",
                "data.shuffle_buffer = 7",
            ]),
        )
        .unwrap();
        assert_eq!(config.objective, crate::task::Objective::Siglip);
        assert_eq!(config.train.accum_freq, 4);
        assert_eq!(config.eval.templates, ["a {}", "the {}"]);
        assert_eq!(config.data.shuffle_buffer, 7);
        for (setting, needle) in [
            ("train.accum_freq=0", "train.accum_freq"),
            ("train.acum_freq=2", "acum_freq"),
            ("model.vision.layers=2", "`model` is not a table"),
            ("objective", "KEY=VALUE"),
            ("train..steps=2", "not a key"),
            ("data.rank=1", "come from the launcher (`mpiexec -n N"),
            ("data.world_size=4", "`data.world_size`: not a config key"),
            ("train.collective_timeout_s=0", "train.collective_timeout_s"),
        ] {
            let err = TrainConfig::load_with(&path, &settings(&[setting]))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{setting}: {err}");
        }
    }
}
