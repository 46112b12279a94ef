//! Evaluation suites (`[[eval.suites]]`): what a run measures periodically and at its end, and
//! the metric that keeps its best checkpoint (`[eval] select`). A suite is zero-shot
//! classification on a labelled set, retrieval and validation loss on held-out image-caption
//! pairs, or the built-in shapes task, which is the default only when training on the built-in
//! data: a run on your own data is never judged on generated pictures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use mm_data::{
    ClipTokenizer, DataConfig, ImageInput, Paths, ShapesTask, SourceKind, Split, TextFormat,
};
use mm_encoders::{ClipModel, CocaModel};
use serde::{Deserialize, Serialize};

use crate::caption_metrics::answer_accuracy;
use crate::captioner::{GenerationArgs, describe_images, prompt_ids, score_captions};
use crate::classify::{ClassMetrics, LabelledPairs};
use crate::eval::{
    LabelledImages, PairedSet, RetrievalReport, ZeroShotReport, encode_images, encode_texts,
    retrieval, zero_shot,
};
use crate::task::Objective;

/// Images of one suite: each is kept (decoded for the built-in set, encoded otherwise) for the
/// whole run.
pub const MAX_SUITE_SAMPLES: usize = 100_000;
pub const MAX_SUITES: usize = 64;
pub const MAX_TEMPLATES: usize = 1000;
/// Beams of a captions suite.
use crate::captioner::MAX_BEAMS;
/// Pairs a captions suite on `data` reads when `samples` does not say.
const DEFAULT_CAPTION_PAIRS: usize = 1000;

/// `[eval]`: the suites a run measures and the metric that ranks its checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out images of the built-in shapes suite (when a `shapes` suite does not say).
    #[serde(default = "default_heldout")]
    pub heldout_samples: usize,
    /// Prompt templates of zero-shot suites that give none; `{}` is replaced by the class name
    /// and the text embeddings of all templates are averaged (OpenAI CLIP's prompt ensembling).
    #[serde(default = "default_templates")]
    pub templates: Vec<String>,
    /// The suites, in the order they run. None given: the built-in `shapes` suite when the
    /// data is the built-in set, no suite otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suites: Vec<SuiteConfig>,
    /// `SUITE/METRIC` whose best value keeps its checkpoint from pruning (default: the first
    /// suite's headline metric: `top1` of a classification suite, `loss` of a pairs suite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<String>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            heldout_samples: default_heldout(),
            templates: default_templates(),
            suites: Vec::new(),
            select: None,
        }
    }
}

fn default_heldout() -> usize {
    960
}
fn default_templates() -> Vec<String> {
    vec!["a photo of a {}".into()]
}

/// One `[[eval.suites]]` table; `kind` says which.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SuiteConfig {
    /// The built-in data's held-out split: zero-shot over its 48 colour x shape classes,
    /// retrieval and loss on its captions.
    Shapes(ShapesSuite),
    /// Zero-shot classification of a labelled set: a folder per class, or a CSV/TSV with image
    /// and label columns.
    ZeroShot(LabelledSuite),
    /// Retrieval (R@1/5/10 both ways) and validation loss on the first `samples` usable pairs
    /// of any source kind (shards, CSV, folder), as open_clip's `--val-data`.
    Pairs(PairsSuite),
    /// A classifier's accuracy and macro-F1 on labelled (image, text) pairs: the built-in
    /// task's held-out split (the default of `objective = "classify"` on it).
    Task(TaskSuite),
    /// Captions a CoCa generates for held-out images, scored against reference captions:
    /// CIDEr-D, BLEU-4 and, on the built-in data, whether they name the figure's colour and
    /// shape. With the `shapes` suite, the default of `objective = "coca"` on the built-in data.
    Captions(CaptionSuite),
    /// Visual question answering by prompting a CoCa: the text it generates after `question:
    /// Q answer:`, matched word for word against the answer. The default of `objective =
    /// "coca"` on a built-in task.
    Answers(AnswerSuite),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptionSuite {
    #[serde(default = "captions_name")]
    pub name: String,
    /// Images captioned (default: `eval.heldout_samples`; for `data`, the first 1000 pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Image-caption pairs read as `[data]` reads them, each caption the one reference
    /// (default: the built-in held-out pictures, with every caption the data could give each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataConfig>,
    /// Beam width (1: greedy decoding).
    #[serde(default = "one")]
    pub beams: usize,
    /// Beam search's length penalty (log p / length^this).
    #[serde(default = "one_f32")]
    pub length_penalty: f32,
}

fn captions_name() -> String {
    "captions".into()
}
fn one() -> usize {
    1
}
fn one_f32() -> f32 {
    1.0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnswerSuite {
    #[serde(default = "answers_name")]
    pub name: String,
    /// Questions asked (default: `eval.heldout_samples`; for `data`, at most 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Labelled pairs read as `[data]` reads them, the caption a question and the label its
    /// answer (default: the held-out split of the built-in task the run trains on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataConfig>,
}

fn answers_name() -> String {
    "answers".into()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSuite {
    #[serde(default = "task_name")]
    pub name: String,
    /// Held-out pairs (default: `eval.heldout_samples`; for `data`, at most 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Labelled pairs read as `[data]` reads them (its `source`, `path`, `csv_*` keys, and
    /// `fold` for a held-out fold); default: the built-in task's held-out split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataConfig>,
}

fn task_name() -> String {
    "task".into()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShapesSuite {
    #[serde(default = "shapes_name")]
    pub name: String,
    /// Held-out images (default: `eval.heldout_samples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

fn shapes_name() -> String {
    "shapes".into()
}

/// Where a labelled set's labels come from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LabelledSource {
    /// `path/<class name>/*.jpg` (`_` reads as a space), as torchvision's ImageFolder.
    Folder,
    /// A CSV/TSV file with an image-path column and a label column.
    Csv,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelledSuite {
    pub name: String,
    pub source: LabelledSource,
    pub path: PathBuf,
    #[serde(default = "mm_data::stream::default_img_key")]
    pub csv_img_key: String,
    #[serde(default = "default_label_key")]
    pub csv_label_key: String,
    /// One ASCII character; by default `,` for `.csv` and tab otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_separator: Option<String>,
    /// A text file of class names, one per line: labels are 0-based indices into it or names
    /// in it (default: the distinct labels, sorted, or the folder names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<PathBuf>,
    /// Prompt templates (default: `eval.templates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
    /// Classify the first N images only (default: all of them, at most 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PairsSuite {
    pub name: String,
    /// `webdataset`, `csv` or `folder`, read as `[data]` reads them (in order, unshuffled).
    pub source: SourceKind,
    pub path: Paths,
    #[serde(default = "mm_data::stream::default_img_key")]
    pub csv_img_key: String,
    #[serde(default = "mm_data::stream::default_caption_key")]
    pub csv_caption_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_separator: Option<String>,
    /// Pairs used: the first N usable ones.
    #[serde(default = "default_pairs")]
    pub samples: usize,
}

fn default_label_key() -> String {
    "label".into()
}
fn default_pairs() -> usize {
    1000
}

impl SuiteConfig {
    pub fn name(&self) -> &str {
        match self {
            Self::Shapes(s) => &s.name,
            Self::ZeroShot(s) => &s.name,
            Self::Pairs(s) => &s.name,
            Self::Task(s) => &s.name,
            Self::Captions(s) => &s.name,
            Self::Answers(s) => &s.name,
        }
    }

    /// The metrics this suite reports (`SUITE/` prefixed in logs), headline first.
    pub fn metrics(&self) -> Vec<&'static str> {
        const CLASSIFY: &[&str] = &["top1", "top5", "mean_per_class"];
        const PAIRS: &[&str] = &[
            "loss",
            "image_to_text_r1",
            "image_to_text_r5",
            "image_to_text_r10",
            "text_to_image_r1",
            "text_to_image_r5",
            "text_to_image_r10",
        ];
        match self {
            Self::Shapes(_) => [CLASSIFY, PAIRS].concat(),
            Self::ZeroShot(_) => CLASSIFY.to_vec(),
            Self::Pairs(_) => PAIRS.to_vec(),
            Self::Task(_) => vec!["accuracy", "macro_f1"],
            Self::Captions(s) if s.data.is_some() => vec!["cider_d", "bleu4"],
            Self::Captions(_) => vec!["cider_d", "bleu4", "colour_and_shape", "colour", "shape"],
            Self::Answers(_) => vec!["accuracy"],
        }
    }

    /// The image-caption source of a pairs suite, with `[data]`'s image limits.
    fn pairs_data(suite: &PairsSuite, data: &DataConfig) -> DataConfig {
        DataConfig {
            source: suite.source,
            path: Some(suite.path.clone()),
            csv_img_key: suite.csv_img_key.clone(),
            csv_caption_key: suite.csv_caption_key.clone(),
            csv_separator: suite.csv_separator.clone(),
            shuffle_buffer: 0,
            rank: 0,
            world_size: 1,
            ..data.clone()
        }
    }
}

/// The metric that ranks checkpoints, and which way is better.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// `SUITE/METRIC`.
    pub metric: String,
}

impl Selection {
    /// Losses are better lower; accuracies and recalls higher.
    pub fn lower_is_better(&self) -> bool {
        self.metric.ends_with("/loss")
    }

    /// Whether `a` beats `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        if self.lower_is_better() { a < b } else { a > b }
    }

    pub fn describe(&self) -> String {
        let way = if self.lower_is_better() {
            "lower"
        } else {
            "higher"
        };
        format!("{} ({way} is better)", self.metric)
    }
}

impl EvalConfig {
    /// The suites a run of `objective` on `data` measures: the configured ones, else, when
    /// `data` is the built-in set, its suites: the shapes suite (and a CoCa's captions) on
    /// its pairs, a classifier's accuracy or a CoCa's answers on its tasks.
    pub fn suites_for(&self, data: &DataConfig, objective: Objective) -> Vec<SuiteConfig> {
        let coca = objective == Objective::Coca;
        match (self.suites.is_empty(), data.source, data.shapes_task) {
            (false, _, _) => self.suites.clone(),
            (true, SourceKind::Shapes, ShapesTask::Pairs) => {
                let shapes = SuiteConfig::Shapes(ShapesSuite {
                    name: shapes_name(),
                    samples: None,
                });
                let captions = SuiteConfig::Captions(CaptionSuite {
                    name: captions_name(),
                    samples: None,
                    data: None,
                    beams: 1,
                    length_penalty: 1.0,
                });
                match coca {
                    true => vec![shapes, captions],
                    false => vec![shapes],
                }
            }
            (true, SourceKind::Shapes, _) if coca => vec![SuiteConfig::Answers(AnswerSuite {
                name: answers_name(),
                samples: None,
                data: None,
            })],
            (true, SourceKind::Shapes, _) => vec![SuiteConfig::Task(TaskSuite {
                name: task_name(),
                samples: None,
                data: None,
            })],
            (true, _, _) => Vec::new(),
        }
    }

    /// The metric that keeps the best checkpoint, if any suite runs.
    pub fn selection(&self, suites: &[SuiteConfig]) -> Option<Selection> {
        match &self.select {
            Some(metric) => Some(Selection {
                metric: metric.clone(),
            }),
            None => suites.first().map(|s| Selection {
                metric: format!("{}/{}", s.name(), s.metrics()[0]),
            }),
        }
    }

    /// Decoded images the suites keep in memory for a whole run (the built-in set's).
    pub fn decoded_images(&self, data: &DataConfig, objective: Objective) -> usize {
        self.suites_for(data, objective)
            .iter()
            .map(|s| match s {
                SuiteConfig::Shapes(ShapesSuite { samples, .. })
                | SuiteConfig::Task(TaskSuite {
                    samples,
                    data: None,
                    ..
                })
                | SuiteConfig::Captions(CaptionSuite {
                    samples,
                    data: None,
                    ..
                })
                | SuiteConfig::Answers(AnswerSuite {
                    samples,
                    data: None,
                    ..
                }) => samples.unwrap_or(self.heldout_samples),
                _ => 0,
            })
            .sum()
    }

    /// Checks what serde cannot; errors are `(key, message)` with keys as in the file
    /// (`eval.suites[1].path`).
    pub fn check(&self, data: &DataConfig, objective: Objective) -> Result<(), (String, String)> {
        let err = |key: String, message: String| Err((key, message));
        if !(1..=MAX_SUITE_SAMPLES).contains(&self.heldout_samples) {
            return err(
                "eval.heldout_samples".into(),
                format!(
                    "must be at least 1 and at most {MAX_SUITE_SAMPLES}, got {}",
                    self.heldout_samples
                ),
            );
        }
        check_templates("eval.templates", &self.templates)?;
        if self.suites.len() > MAX_SUITES {
            return err(
                "eval.suites".into(),
                format!("at most {MAX_SUITES} suites, got {}", self.suites.len()),
            );
        }
        for (i, suite) in self.suites.iter().enumerate() {
            let key = |k: &str| format!("eval.suites[{i}].{k}");
            let name = suite.name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_-.".contains(c))
            {
                return err(
                    key("name"),
                    format!("{name:?}: use letters, digits, `_`, `-` or `.` (it names metrics)"),
                );
            }
            if self.suites[..i].iter().any(|s| s.name() == name) {
                return err(key("name"), format!("{name:?} names two suites"));
            }
            let samples = match suite {
                SuiteConfig::Shapes(s) => s.samples,
                SuiteConfig::ZeroShot(s) => s.samples,
                SuiteConfig::Pairs(s) => Some(s.samples),
                SuiteConfig::Task(s) => s.samples,
                SuiteConfig::Captions(s) => s.samples,
                SuiteConfig::Answers(s) => s.samples,
            };
            if let Some(n) = samples
                && !(1..=MAX_SUITE_SAMPLES).contains(&n)
            {
                return err(
                    key("samples"),
                    format!("must be at least 1 and at most {MAX_SUITE_SAMPLES}, got {n}"),
                );
            }
            let generates = matches!(suite, SuiteConfig::Captions(_) | SuiteConfig::Answers(_));
            if generates && objective != Objective::Coca {
                return err(
                    key("kind"),
                    "generates text: it measures a CoCa (objective = \"coca\")".into(),
                );
            }
            match suite {
                SuiteConfig::Shapes(_) => {}
                SuiteConfig::Captions(s) => {
                    if !(1..=MAX_BEAMS).contains(&s.beams) {
                        return err(
                            key("beams"),
                            format!(
                                "must be at least 1 and at most {MAX_BEAMS}, got {}",
                                s.beams
                            ),
                        );
                    }
                    if !s.length_penalty.is_finite() {
                        return err(key("length_penalty"), "must be a finite number".into());
                    }
                    if let Some(suite_data) = &s.data {
                        suite_data.check().map_err(|(k, m)| (key(k), m))?;
                    }
                }
                SuiteConfig::Task(TaskSuite { data: labelled, .. })
                | SuiteConfig::Answers(AnswerSuite { data: labelled, .. }) => match labelled {
                    Some(suite_data) => suite_data.check().map_err(|(k, m)| (key(k), m))?,
                    None if !data.is_builtin_task() => {
                        return err(key("data"), BUILTIN_TASK_ONLY.into());
                    }
                    None => {}
                },
                SuiteConfig::ZeroShot(s) => {
                    if let Some(templates) = &s.templates {
                        check_templates(&key("templates"), templates)?;
                    }
                    if s.source == LabelledSource::Csv {
                        mm_data::csv_separator(s.csv_separator.as_deref(), &s.path)
                            .map_err(|e| (key("csv_separator"), e))?;
                        if s.csv_img_key == s.csv_label_key {
                            return err(
                                key("csv_label_key"),
                                format!("is the same column as csv_img_key ({:?})", s.csv_img_key),
                            );
                        }
                    }
                }
                SuiteConfig::Pairs(s) => {
                    if s.source == SourceKind::Shapes {
                        return err(
                            key("source"),
                            "the built-in data is the `kind = \"shapes\"` suite".into(),
                        );
                    }
                    SuiteConfig::pairs_data(s, data)
                        .check()
                        .map_err(|(k, m)| (key(k.strip_prefix("data.").unwrap_or(k)), m))?;
                }
            }
        }
        let suites = self.suites_for(data, objective);
        if let Some(metric) = &self.select {
            let known: Vec<String> = suites
                .iter()
                .flat_map(|s| s.metrics().into_iter().map(|m| format!("{}/{m}", s.name())))
                .collect();
            if !known.contains(metric) {
                return err(
                    "eval.select".into(),
                    match known.is_empty() {
                        true => format!("{metric:?}: no eval suite runs (add [[eval.suites]])"),
                        false => format!("{metric:?} is not measured; the suites give {known:?}"),
                    },
                );
            }
        }
        Ok(())
    }
}

fn check_templates(key: &str, templates: &[String]) -> Result<(), (String, String)> {
    if templates.is_empty() {
        return Err((key.into(), "needs at least one template".into()));
    }
    if templates.len() > MAX_TEMPLATES {
        return Err((
            key.into(),
            format!("at most {MAX_TEMPLATES}, got {}", templates.len()),
        ));
    }
    if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
        return Err((
            key.into(),
            format!("template {t:?} has no `{{}}` for the class name"),
        ));
    }
    Ok(())
}

/// What a suite needs besides its own table.
struct SuiteInputs<'a> {
    eval: &'a EvalConfig,
    /// `[data]`: image limits.
    data: &'a DataConfig,
    /// Seed of the built-in data.
    seed: u64,
    image_size: usize,
}

impl SuiteInputs<'_> {
    /// The first `samples` (default: `eval.heldout_samples`) held-out pairs of the built-in
    /// task the run trains on: what a task or answers suite without `data` measures.
    fn builtin_task(&self, samples: Option<usize>) -> Result<LabelledPairs> {
        if !self.data.is_builtin_task() {
            bail!("{BUILTIN_TASK_ONLY}: train on one, or give the suite labelled data");
        }
        let n = samples.unwrap_or(self.eval.heldout_samples);
        Ok(LabelledPairs::builtin(
            self.data.shapes_task,
            self.seed,
            self.image_size,
            n.min(MAX_SUITE_SAMPLES),
        ))
    }
}

/// Why a task or answers suite without `data` cannot run.
const BUILTIN_TASK_ONLY: &str = "without `data`, the suite measures the built-in task the run trains on (data.shapes_task = \"matching\" or \"question\")";

/// A suite with its data read, ready to measure a model any number of times.
pub struct Suite {
    pub name: String,
    /// What the data is, for logs and the report.
    pub description: String,
    image_size: usize,
    data: SuiteData,
}

enum SuiteData {
    Shapes {
        set: LabelledImages,
        captions: Vec<String>,
        templates: Vec<String>,
    },
    ZeroShot {
        set: LabelledImages,
        templates: Vec<String>,
    },
    Pairs(PairedSet),
    Task(LabelledPairs),
    Captions {
        images: Vec<ImageInput>,
        /// Each image's reference captions.
        references: Vec<Vec<String>>,
        /// Each image's built-in class (colour x shape), on the built-in data.
        classes: Option<Vec<usize>>,
        beams: usize,
        length_penalty: f32,
    },
    /// Questions (the texts) and their answers (the labels), and how many answers there are
    /// to choose from (chance is one of them).
    Answers {
        set: LabelledPairs,
        choices: usize,
    },
}

/// One measurement of one suite.
pub struct Measurement {
    /// `(SUITE/METRIC, value)`, in the order of [`SuiteConfig::metrics`].
    pub metrics: Vec<(String, f64)>,
    /// One line for the log.
    pub summary: String,
}

impl Suite {
    /// Reads the suite's data (its image files are read at each measurement).
    fn load(config: &SuiteConfig, inputs: &SuiteInputs) -> Result<Self> {
        let name = config.name().to_string();
        let (description, data) = match config {
            SuiteConfig::Shapes(s) => {
                let n = s.samples.unwrap_or(inputs.eval.heldout_samples);
                let shapes = inputs.data.shapes_dataset(inputs.seed, inputs.image_size);
                let (set, captions) =
                    LabelledImages::shapes_with_captions(&shapes, Split::HeldOut, n);
                (
                    format!(
                        "built-in shapes, held-out split (seed {}), {n} images",
                        inputs.seed
                    ),
                    SuiteData::Shapes {
                        set,
                        captions,
                        templates: inputs.eval.templates.clone(),
                    },
                )
            }
            SuiteConfig::ZeroShot(s) => {
                let limit = s.samples.unwrap_or(MAX_SUITE_SAMPLES);
                let classes = s
                    .classes
                    .as_deref()
                    .map(LabelledImages::read_class_names)
                    .transpose()?;
                let set = match s.source {
                    LabelledSource::Folder => LabelledImages::from_folder(&s.path, limit)?,
                    LabelledSource::Csv => {
                        let separator = mm_data::csv_separator(s.csv_separator.as_deref(), &s.path)
                            .map_err(|e| anyhow::anyhow!("csv_separator: {e}"))?;
                        let columns = mm_data::CsvColumns {
                            image: s.csv_img_key.clone(),
                            caption: s.csv_label_key.clone(),
                            label: None,
                            separator,
                        };
                        LabelledImages::from_csv(&s.path, &columns, classes.clone(), limit)?
                    }
                };
                let set = match (s.source, classes) {
                    (LabelledSource::Folder, Some(names)) => set.renamed(names)?,
                    _ => set,
                };
                (
                    format!(
                        "{}: {} images, {} classes",
                        s.path.display(),
                        set.images.len(),
                        set.class_names.len()
                    ),
                    SuiteData::ZeroShot {
                        set,
                        templates: s
                            .templates
                            .clone()
                            .unwrap_or_else(|| inputs.eval.templates.clone()),
                    },
                )
            }
            SuiteConfig::Pairs(s) => {
                let data = SuiteConfig::pairs_data(s, inputs.data);
                let pairs = PairedSet::from_source(&data, s.samples, inputs.image_size)?;
                (pairs.name.clone(), SuiteData::Pairs(pairs))
            }
            SuiteConfig::Captions(s) => {
                let (description, images, references, classes) = match &s.data {
                    Some(data) => {
                        let n = s.samples.unwrap_or(DEFAULT_CAPTION_PAIRS);
                        let pairs = PairedSet::from_source(data, n, inputs.image_size)?;
                        let references = pairs.captions.into_iter().map(|c| vec![c]).collect();
                        (pairs.name, pairs.images, references, None)
                    }
                    None => {
                        let n = s.samples.unwrap_or(inputs.eval.heldout_samples);
                        let shapes = inputs.data.shapes_dataset(inputs.seed, inputs.image_size);
                        let (set, _, references) =
                            LabelledImages::shapes_with_references(&shapes, Split::HeldOut, n);
                        let description = format!(
                            "built-in shapes, held-out split (seed {}), {n} images, {} reference captions each",
                            inputs.seed,
                            references.first().map_or(0, Vec::len)
                        );
                        (description, set.images, references, Some(set.labels))
                    }
                };
                let decoding = match s.beams {
                    1 => "greedy".to_string(),
                    w => format!("beam search of {w}"),
                };
                (
                    format!("{description}; {decoding}"),
                    SuiteData::Captions {
                        images,
                        references,
                        classes,
                        beams: s.beams,
                        length_penalty: s.length_penalty,
                    },
                )
            }
            SuiteConfig::Answers(s) => {
                let set = match &s.data {
                    Some(data) => {
                        // The suite asks the questions itself: read them as they are.
                        let data = DataConfig {
                            text_format: TextFormat::Caption,
                            ..data.clone()
                        };
                        let set = LabelledPairs::from_source(
                            &data,
                            s.samples.unwrap_or(MAX_SUITE_SAMPLES),
                        )?;
                        let mut distinct = set.labels.clone();
                        distinct.sort();
                        distinct.dedup();
                        (set, distinct.len())
                    }
                    None => (
                        inputs.builtin_task(s.samples)?,
                        inputs.data.shapes_task.class_names().len(),
                    ),
                };
                let (set, choices) = set;
                (set.name.clone(), SuiteData::Answers { set, choices })
            }
            SuiteConfig::Task(s) => {
                let set = match &s.data {
                    Some(data) => {
                        LabelledPairs::from_source(data, s.samples.unwrap_or(MAX_SUITE_SAMPLES))?
                    }
                    None => inputs.builtin_task(s.samples)?,
                };
                (set.name.clone(), SuiteData::Task(set))
            }
        };
        Ok(Self {
            name,
            description,
            image_size: inputs.image_size,
            data,
        })
    }

    /// The suite's metrics for `m.model`.
    pub fn measure(&self, m: &Measuring) -> Result<Measurement> {
        let (model, tokenizer, ctx) = (m.model, m.tokenizer, m.context_length);
        let (objective, loss_batch) = (m.objective, m.loss_batch);
        let size = self.image_size;
        let mut metrics = Vec::new();
        let mut put =
            |name: &str, value: f64| metrics.push((format!("{}/{name}", self.name), value));
        let summary = match &self.data {
            SuiteData::Shapes {
                set,
                captions,
                templates,
            } => {
                let images = encode_images(model, &set.images, size)?.embeddings;
                let texts = encode_texts(model, tokenizer, captions, ctx)?;
                let zs = zero_shot(
                    model,
                    tokenizer,
                    ctx,
                    images.clone(),
                    &set.class_names,
                    &set.labels,
                    templates,
                )?;
                let loss = pair_loss(model, objective, images.clone(), texts.clone(), loss_batch)?;
                let ret = retrieval(images, texts)?;
                put_zero_shot(&mut put, &zs);
                put_pairs(&mut put, loss, &ret);
                format!(
                    "{}: held-out zero-shot top-1 {:.1}% (chance {:.1}%), top-5 {:.1}%; retrieval R@1 image->text {:.1}%, text->image {:.1}%; loss {loss:.4}",
                    self.name,
                    100.0 * zs.top1,
                    100.0 / set.class_names.len() as f64,
                    100.0 * zs.top5,
                    100.0 * ret.image_to_text.r1,
                    100.0 * ret.text_to_image.r1
                )
            }
            SuiteData::ZeroShot { set, templates } => {
                let encoded = encode_images(model, &set.images, size)?;
                let labels = encoded.select(&set.labels);
                let zs = zero_shot(
                    model,
                    tokenizer,
                    ctx,
                    encoded.embeddings,
                    &set.class_names,
                    &labels,
                    templates,
                )?;
                put_zero_shot(&mut put, &zs);
                format!(
                    "{}: zero-shot top-1 {:.1}% (chance {:.1}%), top-5 {:.1}%, mean per class {:.1}% on {} images{}",
                    self.name,
                    100.0 * zs.top1,
                    100.0 / set.class_names.len() as f64,
                    100.0 * zs.top5,
                    100.0 * zs.mean_per_class,
                    labels.len(),
                    skipped_note(encoded.skipped.len())
                )
            }
            SuiteData::Pairs(pairs) => {
                let encoded = encode_images(model, &pairs.images, size)?;
                let captions = encoded.select(&pairs.captions);
                let texts = encode_texts(model, tokenizer, &captions, ctx)?;
                let images = encoded.embeddings;
                let loss = pair_loss(model, objective, images.clone(), texts.clone(), loss_batch)?;
                let ret = retrieval(images, texts)?;
                put_pairs(&mut put, loss, &ret);
                format!(
                    "{}: loss {loss:.4}; retrieval R@1 image->text {:.1}%, text->image {:.1}% on {} pairs{}",
                    self.name,
                    100.0 * ret.image_to_text.r1,
                    100.0 * ret.text_to_image.r1,
                    ret.pairs,
                    skipped_note(encoded.skipped.len())
                )
            }
            SuiteData::Task(set) => {
                let classifier = m.classifier.with_context(|| {
                    format!(
                        "suite `{}` measures a classifier (objective = \"classify\")",
                        self.name
                    )
                })?;
                let (truth, predicted, skipped) = set.predict(classifier, tokenizer, ctx, size)?;
                let classes = classifier.fusion.config.class_names.len();
                let scores = ClassMetrics::new(&truth, &predicted, classes);
                put("accuracy", scores.accuracy);
                put("macro_f1", scores.macro_f1);
                format!(
                    "{}: accuracy {:.1}%, macro-F1 {:.3} on {} pairs of {} classes{}",
                    self.name,
                    100.0 * scores.accuracy,
                    scores.macro_f1,
                    truth.len(),
                    classes,
                    match skipped {
                        0 => String::new(),
                        n => format!(" ({n} unreadable or of other classes skipped)"),
                    }
                )
            }
            SuiteData::Captions {
                images,
                references,
                classes,
                beams,
                length_penalty,
            } => {
                let captioner = self.captioner(m)?;
                let scored = score_captions(
                    captioner,
                    tokenizer,
                    (images, size),
                    (references, classes.as_deref()),
                    (*beams, *length_penalty),
                    ctx,
                )?;
                let (scores, texts) = (&scored.scores, &scored.texts);
                put("cider_d", scores.cider_d);
                put("bleu4", scores.bleu[3]);
                let attributes = match scores.attributes {
                    Some(a) => {
                        put("colour_and_shape", a.colour_and_shape);
                        put("colour", a.colour);
                        put("shape", a.shape);
                        format!(
                            "; colour and shape right {:.1}% (colour {:.1}%, shape {:.1}%)",
                            100.0 * a.colour_and_shape,
                            100.0 * a.colour,
                            100.0 * a.shape
                        )
                    }
                    None => String::new(),
                };
                format!(
                    "{}: CIDEr-D {:.3}, BLEU-4 {:.3}{attributes} on {} images{}; e.g. {:?}",
                    self.name,
                    scores.cider_d,
                    scores.bleu[3],
                    texts.len(),
                    skipped_note(scored.skipped),
                    texts.first().map_or("", String::as_str)
                )
            }
            SuiteData::Answers { set, choices } => {
                let captioner = self.captioner(m)?;
                // A question too long to ask within the context is counted, not fatal.
                let (mut prompts, mut too_long) = (Vec::new(), 0);
                for question in &set.texts {
                    let prompt = TextFormat::question_prompt(question);
                    prompts.push(
                        prompt_ids(tokenizer, Some(&prompt), ctx).unwrap_or_else(|_| {
                            too_long += 1;
                            Vec::new()
                        }),
                    );
                }
                let asked: Vec<usize> = (0..prompts.len())
                    .filter(|&i| !prompts[i].is_empty())
                    .collect();
                if asked.is_empty() {
                    bail!(
                        "suite `{}`: no question fits the model's {ctx} positions",
                        self.name
                    );
                }
                let images = pick(&set.images, &asked);
                let generation =
                    GenerationArgs::beams(1, 1.0).generation(tokenizer.eot_id(), 0, ctx)?;
                let described = describe_images(
                    captioner,
                    tokenizer,
                    (&images, size),
                    &pick(&prompts, &asked),
                    (&generation, ctx),
                )?;
                let rows: Vec<usize> = described.select(&asked);
                let answers = described.outputs.concat();
                let truth = pick(&set.labels, &rows);
                let accuracy = answer_accuracy(&answers, &truth);
                put("accuracy", accuracy);
                let unasked = too_long + described.skipped.len();
                format!(
                    "{}: accuracy {:.1}% (chance {:.1}%: {} answers) on {} questions{}; e.g. {:?} -> {:?}",
                    self.name,
                    100.0 * accuracy,
                    100.0 / *choices as f64,
                    choices,
                    answers.len(),
                    match unasked {
                        0 => String::new(),
                        n => format!(" ({n} unreadable or too long skipped)"),
                    },
                    set.texts[rows[0]],
                    answers[0]
                )
            }
        };
        if let Some((name, value)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
            bail!("{name} is {value} (diverged weights?)");
        }
        Ok(Measurement { metrics, summary })
    }

    /// The CoCa a text-generating suite measures, or an error naming the suite.
    fn captioner<'m>(&self, m: &Measuring<'m>) -> Result<&'m CocaModel> {
        m.captioner.with_context(|| {
            format!(
                "suite `{}` generates text: it measures a CoCa (objective = \"coca\")",
                self.name
            )
        })
    }

    /// The labelled pairs a task suite measures a classifier on.
    pub fn labelled_pairs(&self) -> Option<&LabelledPairs> {
        match &self.data {
            SuiteData::Task(set) => Some(set),
            _ => None,
        }
    }

    /// Up to `n` images of a text-generating suite with what to ask of each (a question, or
    /// none: a caption) and the expected text, for the report's caption gallery.
    pub fn generation_examples(&self, n: usize) -> Vec<(ImageInput, Option<String>, String)> {
        match &self.data {
            SuiteData::Captions {
                images, references, ..
            } => images
                .iter()
                .zip(references)
                .take(n)
                .map(|(image, refs)| (image.clone(), None, refs[0].clone()))
                .collect(),
            SuiteData::Answers { set, .. } => (0..set.images.len().min(n))
                .map(|i| {
                    let question = Some(set.texts[i].clone());
                    (set.images[i].clone(), question, set.labels[i].clone())
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Up to `n` image-caption pairs of the suite (images decoded), for the report's gallery.
    pub fn gallery_pairs(&self, n: usize) -> Vec<(mm_data::ImageInput, String)> {
        match &self.data {
            SuiteData::Shapes { set, captions, .. } => set
                .images
                .iter()
                .cloned()
                .zip(captions.iter().cloned())
                .take(n)
                .collect(),
            SuiteData::Pairs(pairs) => pairs
                .images
                .iter()
                .cloned()
                .zip(pairs.captions.iter().cloned())
                .take(n)
                .collect(),
            SuiteData::Task(set) | SuiteData::Answers { set, .. } => set
                .images
                .iter()
                .cloned()
                .zip(set.texts.iter().cloned())
                .take(n)
                .collect(),
            SuiteData::Captions {
                images, references, ..
            } => images
                .iter()
                .cloned()
                .zip(references.iter().map(|r| r[0].clone()))
                .take(n)
                .collect(),
            SuiteData::ZeroShot { .. } => Vec::new(),
        }
    }
}

/// `values[i]` for each of `rows`.
fn pick<T: Clone>(values: &[T], rows: &[usize]) -> Vec<T> {
    rows.iter().map(|&i| values[i].clone()).collect()
}

fn skipped_note(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} unreadable images skipped)"),
    }
}

fn put_zero_shot(put: &mut impl FnMut(&str, f64), zs: &ZeroShotReport) {
    put("top1", zs.top1);
    put("top5", zs.top5);
    put("mean_per_class", zs.mean_per_class);
}

fn put_pairs(put: &mut impl FnMut(&str, f64), loss: f64, ret: &RetrievalReport) {
    put("loss", loss);
    for (way, r) in [
        ("image_to_text", &ret.image_to_text),
        ("text_to_image", &ret.text_to_image),
    ] {
        put(&format!("{way}_r1"), r.r1);
        put(&format!("{way}_r5"), r.r5);
        put(&format!("{way}_r10"), r.r10);
    }
}

/// The objective's loss over consecutive groups of `batch` pairs, weighted by group size
/// (open_clip's validation loss).
fn pair_loss(
    model: &ClipModel,
    objective: Objective,
    images: Tensor<2>,
    texts: Tensor<2>,
    batch: usize,
) -> Result<f64> {
    let n = images.dims()[0];
    let batch = batch.max(2);
    let (mut total, mut start) = (0.0, 0);
    while start < n {
        let end = (start + batch).min(n);
        let loss = objective.loss(
            model,
            images.clone().slice(start..end),
            texts.clone().slice(start..end),
            None,
            false,
        );
        total += loss.into_scalar::<f32>() as f64 * (end - start) as f64;
        start = end;
    }
    Ok(total / n.max(1) as f64)
}

/// A run's suites with their data read, and the metric that ranks its checkpoints: what
/// training, `mm-train eval` on a run and the report all measure.
pub struct RunSuites {
    pub configs: Vec<SuiteConfig>,
    pub suites: Vec<Suite>,
    pub selection: Option<Selection>,
}

impl RunSuites {
    /// No suites: what ranks other than 0 of a data-parallel run measure.
    pub fn none() -> Self {
        Self {
            configs: Vec::new(),
            suites: Vec::new(),
            selection: None,
        }
    }

    /// The suites `eval` gives a run on `data` (see [`EvalConfig::suites_for`]), loaded.
    pub fn load(
        eval: &EvalConfig,
        (data, objective): (&DataConfig, Objective),
        seed: u64,
        image_size: usize,
    ) -> Result<Self> {
        let configs = eval.suites_for(data, objective);
        let inputs = SuiteInputs {
            eval,
            data,
            seed,
            image_size,
        };
        let suites = configs
            .iter()
            .map(|c| Suite::load(c, &inputs).with_context(|| format!("eval suite `{}`", c.name())))
            .collect::<Result<_>>()?;
        Ok(Self {
            selection: eval.selection(&configs),
            configs,
            suites,
        })
    }

    /// Every suite's measurement of `model`, in order.
    pub fn measure(&self, model: &Measuring) -> Result<Vec<Measurement>> {
        self.suites.iter().map(|s| s.measure(model)).collect()
    }
}

/// The model a suite measures, and how its loss is taken.
pub struct Measuring<'a> {
    /// An inference (non-autodiff) model.
    pub model: &'a ClipModel,
    /// The classifier on `model`, for the suites that measure one.
    pub classifier: Option<&'a mm_encoders::FusionClassifier>,
    /// The CoCa whose towers `model` is, for the suites that generate text.
    pub captioner: Option<&'a CocaModel>,
    pub tokenizer: &'a ClipTokenizer,
    pub context_length: usize,
    pub objective: Objective,
    /// Pairs per group of the validation loss (the contrastive loss depends on the batch):
    /// the run's `batch_size * accum_freq`.
    pub loss_batch: usize,
}

/// A checkpoint measured by its run's own suites (`mm-train eval` on such a run), as written
/// to `eval.json`.
#[derive(Clone, Debug, Serialize)]
pub struct SuitesReport {
    pub checkpoint: String,
    pub step: usize,
    /// Each suite's name, what its data is, and its one-line summary.
    pub suites: Vec<SuiteSummary>,
    /// `SUITE/METRIC` -> value.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SuiteSummary {
    pub name: String,
    pub data: String,
    pub summary: String,
}

impl SuitesReport {
    /// `suites` measured on the model of checkpoint `checkpoint` at `step`.
    pub fn measure(
        checkpoint: &Path,
        step: usize,
        suites: &RunSuites,
        model: &Measuring,
    ) -> Result<Self> {
        if suites.suites.is_empty() {
            bail!(
                "the run has no eval suites ([[eval.suites]]) and did not train on the built-in data: name a set with --folder, --labels-csv or --pairs"
            );
        }
        let (mut summaries, mut metrics) = (Vec::new(), std::collections::BTreeMap::new());
        for (suite, measured) in suites.suites.iter().zip(suites.measure(model)?) {
            metrics.extend(measured.metrics);
            summaries.push(SuiteSummary {
                name: suite.name.clone(),
                data: suite.description.clone(),
                summary: measured.summary,
            });
        }
        Ok(Self {
            checkpoint: checkpoint.display().to_string(),
            step,
            suites: summaries,
            metrics,
        })
    }

    pub fn table(&self) -> String {
        let mut out = format!("{} (step {})\n", self.checkpoint, self.step);
        for suite in &self.suites {
            out += &format!("  {}\n    {}\n", suite.data, suite.summary);
        }
        out
    }
}
