//! The `[data]` config and the endless, shuffled, resumable stream it opens.
//!
//! A stream's position is the number of items (samples and skipped-sample errors) it has
//! handed out. Everything upstream of the batcher is a deterministic function of the seed, so
//! re-opening with the same config and skipping that many items continues exactly where a
//! checkpoint left off, without decoding what it skips.

use std::path::{Path, PathBuf};

use crate::shape_tasks::ShapesTask;
use crate::source::{Captions, Labels, QuestionAnswerTexts, TextFormat};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::files::{CsvColumns, CsvSource, FolderSource, csv_separator};
use crate::preprocess::{
    DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, ImageLimits, TrainTransform,
};
use crate::shapes::{Placement, ShapesDataset, Split};
use crate::source::{ImageTextPair, PairSource, SampleError};
use crate::webdataset::{TarSource, expand_braces, expand_shards, shards_for_rank};

/// Where training pairs come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The built-in procedural shapes (no files).
    #[default]
    Shapes,
    /// WebDataset tar shards (`path` = shard patterns).
    Webdataset,
    /// A CSV/TSV of image paths and captions (`path` = the file).
    Csv,
    /// A folder of images with `.txt` captions (`path` = the folder).
    Folder,
}

/// One path or several (shard patterns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    One(String),
    Many(Vec<String>),
}

impl Paths {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Paths::One(p) => vec![p.clone()],
            Paths::Many(ps) => ps.clone(),
        }
    }
}

/// Samples a shuffle buffer may hold (each is an encoded image in memory).
pub const MAX_SHUFFLE_BUFFER: u64 = 100_000;
/// Batches prepared ahead of the step (each is a whole batch of pixels in memory).
pub const MAX_PREFETCH: u64 = 64;
/// Decoding threads.
pub const MAX_WORKERS: u64 = 256;

/// The `[data]` table of a training config. Unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub source: SourceKind,
    /// Shard patterns (`data/{00000..00127}.tar`, globs), a CSV file or a folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Paths>,
    /// CSV column with the image path (open_clip's `--csv-img-key`).
    #[serde(default = "default_img_key")]
    pub csv_img_key: String,
    /// CSV column with the caption (`--csv-caption-key`).
    #[serde(default = "default_caption_key")]
    pub csv_caption_key: String,
    /// CSV column with the class label (classification tasks only; as `--csv-caption-key`).
    #[serde(default = "default_label_key")]
    pub csv_label_key: String,
    /// Which built-in data `source = "shapes"` streams: captioned pictures (`pairs`), or the
    /// two-modality classification tasks `matching` and `question`.
    #[serde(default)]
    pub shapes_task: ShapesTask,
    /// Where the built-in pictures' shapes are drawn: `centred` (one place and size) or
    /// `anywhere` (any position, radius 0.15-0.40 of the side; see [`Placement`]). Held-out
    /// pictures are drawn the same way.
    #[serde(default)]
    pub shapes_placement: Placement,
    /// The text a sample trains on: its caption, or (`question_answer`) VQA rows' question
    /// (the caption) and answer (the label: `csv_label_key`, a shard's `.cls`, the folder)
    /// as `question: ... answer: ...`.
    #[serde(default, skip_serializing_if = "TextFormat::is_caption")]
    pub text_format: TextFormat,
    /// CSV field separator, one character (`--csv-separator`); by default `,` for a `.csv`
    /// file and tab otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_separator: Option<String>,
    /// Samples held for shuffling a stream (0: no shuffling). Shard order is also reshuffled
    /// every epoch.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Augmentation of training images.
    #[serde(default)]
    pub train_transform: TrainTransform,
    /// Threads decoding and transforming images (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Images whose header declares more pixels are skipped unread (decompression bombs).
    #[serde(default = "default_max_pixels")]
    pub max_image_pixels: u64,
    /// Image files (and tar members) larger than this are skipped unread.
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: u64,
    /// A stream that yields this many unusable samples in a row is broken (every image
    /// missing, the wrong CSV column): training stops with an error naming it.
    #[serde(default = "default_max_consecutive_skips")]
    pub max_consecutive_skips: usize,
    /// This process's rank and the number of ranks training together, from the communicator
    /// (never from the config file: see [`DataConfig::for_rank`]).
    #[serde(skip)]
    pub rank: usize,
    #[serde(skip, default = "default_world_size")]
    pub world_size: usize,
    /// Whether samples need captions: set by commands that read images only (`embed`),
    /// never from the config file.
    #[serde(skip)]
    pub captions: Captions,
    /// Whether samples need class labels: set by the classify objective, never from the
    /// config file.
    #[serde(skip)]
    pub labels: Labels,
    /// One fold of a k-fold split (`mm-train cv` writes it): train on the other folds' samples,
    /// or (`held_out`) read only this fold's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<Fold>,
}

/// Fold `index` of `of` folds. A sample's fold is a hash of where it comes from (its file,
/// row or shard key), so folds are disjoint, cover the data, and do not move between epochs
/// or when shard order is shuffled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fold {
    pub index: usize,
    pub of: usize,
    /// Read this fold only (evaluation) instead of every other fold (training).
    #[serde(default)]
    pub held_out: bool,
}

impl Fold {
    /// The fold a sample from `location` belongs to.
    pub fn of_location(location: &str, folds: usize) -> usize {
        // FNV-1a, then a mixer: stable across runs and platforms.
        let hash = location.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        (mix(hash, 0x464f_4c44) % folds as u64) as usize
    }

    /// Whether a sample from `location` is read.
    pub fn keeps(&self, location: &str) -> bool {
        (Self::of_location(location, self.of) == self.index) == self.held_out
    }
}

/// The samples of a source in `fold`'s part (skipped samples' reports pass through).
struct FoldFilter {
    inner: Box<dyn PairSource>,
    fold: Fold,
}

impl Iterator for FoldFilter {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.inner.next()? {
                Ok(pair) if !self.fold.keeps(&pair.location) => continue,
                item => return Some(item),
            }
        }
    }
}

impl PairSource for FoldFilter {
    fn describe(&self) -> String {
        let part = match self.fold.held_out {
            true => format!("fold {} of {}", self.fold.index + 1, self.fold.of),
            false => format!("all but fold {} of {}", self.fold.index + 1, self.fold.of),
        };
        format!("{} ({part})", self.inner.describe())
    }
}

/// CSV column of class labels when none is named.
pub fn default_label_key() -> String {
    "label".into()
}

/// CSV column of image paths when none is named (open_clip's `--csv-img-key` default).
pub fn default_img_key() -> String {
    "filepath".into()
}
/// CSV column of captions when none is named (open_clip's `--csv-caption-key` default).
pub fn default_caption_key() -> String {
    "title".into()
}
fn default_shuffle_buffer() -> usize {
    1000
}
fn default_prefetch() -> usize {
    4
}
fn default_max_pixels() -> u64 {
    DEFAULT_MAX_IMAGE_PIXELS
}
fn default_max_image_bytes() -> u64 {
    DEFAULT_MAX_IMAGE_BYTES
}
fn default_max_consecutive_skips() -> usize {
    1000
}
fn default_world_size() -> usize {
    1
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Shapes,
            path: None,
            csv_img_key: default_img_key(),
            csv_caption_key: default_caption_key(),
            csv_label_key: default_label_key(),
            shapes_task: ShapesTask::Pairs,
            shapes_placement: Placement::Centred,
            text_format: TextFormat::Caption,
            csv_separator: None,
            shuffle_buffer: default_shuffle_buffer(),
            train_transform: TrainTransform::default(),
            workers: 0,
            prefetch: default_prefetch(),
            max_image_pixels: default_max_pixels(),
            max_image_bytes: default_max_image_bytes(),
            max_consecutive_skips: default_max_consecutive_skips(),
            rank: 0,
            world_size: 1,
            captions: Captions::Required,
            labels: Labels::Ignored,
            fold: None,
        }
    }
}

impl DataConfig {
    /// Checks keys against each other; returns (key, message) for the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.source != SourceKind::Shapes && self.path.is_none() {
            return Err((
                "data.path",
                format!("required for source = {:?}", self.source),
            ));
        }
        if self.source == SourceKind::Webdataset {
            // Counted before anything is read: a typo'd range is a config error, not an OOM.
            for pattern in self.path.iter().flat_map(Paths::to_vec) {
                expand_braces(&pattern).map_err(|e| ("data.path", e))?;
            }
        }
        if self.text_format == TextFormat::QuestionAnswer
            && self.source == SourceKind::Shapes
            && self.shapes_task == ShapesTask::Pairs
        {
            return Err((
                "data.text_format",
                "the built-in pairs are captions, not questions: set data.shapes_task = \"question\"".into(),
            ));
        }
        if let Some(fold) = self.fold {
            if fold.of < 2 || fold.index >= fold.of {
                return Err((
                    "data.fold",
                    format!(
                        "fold index {} of {} (need 0 <= index < of, of >= 2)",
                        fold.index, fold.of
                    ),
                ));
            }
            if self.source == SourceKind::Shapes {
                return Err((
                    "data.fold",
                    "the built-in data is endless: folds split a dataset of files".into(),
                ));
            }
        }
        let csv_path = self.path.as_ref().map(Paths::to_vec).unwrap_or_default();
        let csv_path = Path::new(csv_path.first().map_or("", String::as_str));
        csv_separator(self.csv_separator.as_deref(), csv_path)
            .map_err(|e| ("data.csv_separator", e))?;
        if self.source == SourceKind::Csv && self.csv_img_key == self.csv_caption_key {
            return Err((
                "data.csv_caption_key",
                format!(
                    "is the same column as data.csv_img_key ({:?})",
                    self.csv_img_key
                ),
            ));
        }
        for (key, value, max) in [
            ("data.max_image_pixels", self.max_image_pixels, 1 << 36),
            ("data.max_image_bytes", self.max_image_bytes, 1 << 34),
            (
                "data.shuffle_buffer",
                self.shuffle_buffer as u64,
                MAX_SHUFFLE_BUFFER,
            ),
            ("data.prefetch", self.prefetch as u64, MAX_PREFETCH),
            ("data.workers", self.workers as u64, MAX_WORKERS),
            (
                "data.max_consecutive_skips",
                self.max_consecutive_skips as u64,
                1 << 32,
            ),
        ] {
            if value > max {
                return Err((key, format!("at most {max}, got {value}")));
            }
        }
        for (key, value) in [
            ("data.max_image_pixels", self.max_image_pixels),
            ("data.max_image_bytes", self.max_image_bytes),
            ("data.prefetch", self.prefetch as u64),
            (
                "data.max_consecutive_skips",
                self.max_consecutive_skips as u64,
            ),
        ] {
            if value == 0 {
                return Err((key, "must be positive".into()));
            }
        }
        Ok(())
    }

    /// This config as rank `rank` of `world_size` reads it: whole shards for WebDataset (every
    /// `world_size`-th, as open_clip splits them), every `world_size`-th row or picture
    /// otherwise, so ranks see disjoint data and, unshuffled, step s of all ranks together
    /// reads the same samples as step s of one process with the whole global batch.
    pub fn for_rank(&self, rank: usize, world_size: usize) -> Self {
        Self {
            rank,
            world_size,
            ..self.clone()
        }
    }

    /// The caps on an image file this config sets.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_pixels: self.max_image_pixels,
            max_bytes: self.max_image_bytes,
        }
    }

    fn csv_columns(&self, path: &Path) -> CsvColumns {
        CsvColumns {
            image: self.csv_img_key.clone(),
            caption: self.csv_caption_key.clone(),
            label: (self.wanted_labels() == Labels::Required).then(|| self.csv_label_key.clone()),
            // Checked in `check`.
            separator: csv_separator(self.csv_separator.as_deref(), path).unwrap_or(b'\t'),
        }
    }

    /// The built-in pictures this config draws (its placement), at `image_size`.
    pub fn shapes_dataset(&self, seed: u64, image_size: usize) -> ShapesDataset {
        ShapesDataset::new(seed, image_size as u32).with_placement(self.shapes_placement)
    }

    /// Whether this is one of the built-in two-modality tasks (`shapes_task` other than
    /// `pairs`).
    pub fn is_builtin_task(&self) -> bool {
        self.source == SourceKind::Shapes && self.shapes_task != ShapesTask::Pairs
    }

    /// Whether samples need labels: for the classify objective, or as question-answer
    /// rows' answers.
    pub fn wanted_labels(&self) -> Labels {
        match self.text_format {
            TextFormat::QuestionAnswer => Labels::Required,
            TextFormat::Caption => self.labels,
        }
    }

    /// One pass over the data (epoch `epoch`: shard order shuffled by it), unshuffled within,
    /// its texts as `text_format` says. Missing shards, files, folders or CSV columns are
    /// errors here.
    pub fn open_epoch(
        &self,
        seed: u64,
        epoch: u64,
        image_size: usize,
    ) -> Result<Box<dyn PairSource>, DataError> {
        let source = self.open_pairs(seed, epoch, image_size)?;
        Ok(match self.text_format {
            TextFormat::Caption => source,
            TextFormat::QuestionAnswer => Box::new(QuestionAnswerTexts(source)),
        })
    }

    fn open_pairs(
        &self,
        seed: u64,
        epoch: u64,
        image_size: usize,
    ) -> Result<Box<dyn PairSource>, DataError> {
        let paths = self.path.as_ref().map(Paths::to_vec).unwrap_or_default();
        let folded = |source: Box<dyn PairSource>| -> Box<dyn PairSource> {
            match self.fold {
                Some(fold) => Box::new(FoldFilter {
                    inner: source,
                    fold,
                }),
                None => source,
            }
        };
        let share = |source: Box<dyn PairSource>| -> Box<dyn PairSource> {
            let source = folded(source);
            match self.world_size {
                0 | 1 => source,
                world => Box::new(RankShare::new(source, self.rank, world)),
            }
        };
        Ok(match self.source {
            SourceKind::Shapes => {
                let dataset = self.shapes_dataset(seed, image_size);
                share(match self.shapes_task {
                    ShapesTask::Pairs => Box::new(dataset.source(Split::Train, 0)),
                    task => Box::new(task.source(dataset, Split::Train, 0)),
                })
            }
            SourceKind::Webdataset => {
                let mut shards =
                    shards_for_rank(&expand_shards(&paths)?, self.rank, self.world_size);
                if shards.is_empty() {
                    return Err(DataError::Config(format!(
                        "no shards for rank {} of {}",
                        self.rank, self.world_size
                    )));
                }
                shards.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch)));
                // Whole shards per rank already; only a fold filter applies.
                folded(Box::new(TarSource::reading(
                    shards,
                    self.image_limits(),
                    (self.captions, self.wanted_labels()),
                )))
            }
            SourceKind::Csv => {
                let path = PathBuf::from(&paths[0]);
                let columns = self.csv_columns(&path);
                share(Box::new(CsvSource::open_with(
                    &path,
                    &columns,
                    self.captions,
                )?))
            }
            SourceKind::Folder => share(Box::new(
                FolderSource::open_with(&PathBuf::from(&paths[0]), self.captions)?
                    .with_labels(self.wanted_labels()),
            )),
        })
    }

    /// The endless training stream: epochs one after another, each through a shuffle buffer.
    pub fn open_stream(&self, seed: u64, image_size: usize) -> Result<DataStream, DataError> {
        let first = self.open_epoch(seed, 0, image_size)?;
        let description = first.describe();
        Ok(DataStream {
            config: self.clone(),
            seed,
            image_size,
            epoch: 0,
            current: self.shuffled(first, seed, 0),
            good_this_epoch: 0,
            position: 0,
            description,
        })
    }

    fn shuffled(&self, source: Box<dyn PairSource>, seed: u64, epoch: u64) -> Box<dyn PairSource> {
        if self.shuffle_buffer <= 1 || self.source == SourceKind::Shapes {
            return source; // The procedural data is already random.
        }
        Box::new(ShuffleBuffer::new(
            source,
            self.shuffle_buffer,
            mix(seed ^ 0x5348_5546, epoch),
        ))
    }
}

/// SplitMix64 of two words: independent seeds for epochs and purposes.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stream shuffled through a buffer of `capacity` items, as WebDataset's `shuffle(n)`:
/// each output is a uniformly random member of the buffer, replaced by the next input.
pub struct ShuffleBuffer {
    inner: Box<dyn PairSource>,
    buffer: Vec<Result<ImageTextPair, SampleError>>,
    capacity: usize,
    rng: StdRng,
}

impl ShuffleBuffer {
    pub fn new(inner: Box<dyn PairSource>, capacity: usize, seed: u64) -> Self {
        Self {
            inner,
            // Grown as filled: a large capacity costs memory only when the data is there.
            buffer: Vec::new(),
            capacity,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl Iterator for ShuffleBuffer {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buffer.len() < self.capacity {
            match self.inner.next() {
                Some(item) => self.buffer.push(item),
                None => break,
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let pick = self.rng.random_range(0..self.buffer.len());
        Some(self.buffer.swap_remove(pick))
    }
}

impl PairSource for ShuffleBuffer {
    fn describe(&self) -> String {
        format!(
            "{}, shuffled in a buffer of {}",
            self.inner.describe(),
            self.capacity
        )
    }
}

/// Items `rank`, `rank + world`, `rank + 2 world`, ... of a source: one rank's share of the rows
/// of a CSV, a folder or the built-in pictures (skipped items are not decoded).
struct RankShare {
    inner: Box<dyn PairSource>,
    rank: usize,
    world: usize,
    started: bool,
}

impl RankShare {
    fn new(inner: Box<dyn PairSource>, rank: usize, world: usize) -> Self {
        Self {
            inner,
            rank,
            world,
            started: false,
        }
    }
}

impl Iterator for RankShare {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.nth(0)
    }

    /// Skips through the inner source's `nth`: fast-forwarding the built-in pictures draws none.
    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        let first = match std::mem::replace(&mut self.started, true) {
            false => self.rank,
            true => self.world - 1,
        };
        self.inner.nth(first + n * self.world)
    }
}

impl PairSource for RankShare {
    fn describe(&self) -> String {
        format!(
            "{} (rank {}'s share: one item in {})",
            self.inner.describe(),
            self.rank,
            self.world
        )
    }
}

/// Epoch after epoch of a [`DataConfig`]'s data, counting the items it hands out.
pub struct DataStream {
    config: DataConfig,
    seed: u64,
    image_size: usize,
    epoch: u64,
    current: Box<dyn PairSource>,
    good_this_epoch: u64,
    position: u64,
    description: String,
}

impl DataStream {
    /// Items handed out so far (the resume position).
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Skips `n` items, to continue from a recorded position. Nothing is decoded.
    pub fn fast_forward(&mut self, n: u64) {
        if self.config.source == SourceKind::Shapes && n > 0 {
            // Endless and indexed: jump without drawing the skipped pictures.
            self.current.nth(n as usize - 1);
            self.position += n;
            return;
        }
        for _ in 0..n {
            if self.next().is_none() {
                break;
            }
        }
    }
}

impl Iterator for DataStream {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.next() {
                self.position += 1;
                self.good_this_epoch += item.is_ok() as u64;
                return Some(item);
            }
            if self.good_this_epoch == 0 {
                return None; // A whole epoch without one usable sample: stop, do not spin.
            }
            self.epoch += 1;
            self.good_this_epoch = 0;
            // The first epoch opened, so later ones do too unless files vanish mid-run.
            let next = self
                .config
                .open_epoch(self.seed, self.epoch, self.image_size)
                .ok()?;
            self.current = self.config.shuffled(next, self.seed, self.epoch);
        }
    }
}

impl PairSource for DataStream {
    fn describe(&self) -> String {
        self.description.clone()
    }
}
