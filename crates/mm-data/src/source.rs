//! The pair-source abstraction every dataset format implements.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use image::DynamicImage;
use serde::{Deserialize, Serialize};

/// An image as a source hands it over. Sources do no decoding: bytes and paths go to the
/// batcher's worker pool, which reads, decodes and transforms in parallel, and skipping ahead
/// in a stream (resume) costs no decoding.
#[derive(Clone, Debug)]
pub enum ImageInput {
    /// Already in memory (the procedural data).
    Decoded(DynamicImage),
    /// Encoded bytes (a tar member).
    Encoded(Vec<u8>),
    /// A file to read (CSV rows, image folders).
    File(PathBuf),
}

/// One training example: an image, its caption, its class label where the source has one, and
/// where it came from (for error reports).
#[derive(Clone, Debug)]
pub struct ImageTextPair {
    pub image: ImageInput,
    pub caption: String,
    pub label: Option<String>,
    pub location: String,
}

/// Why a sample was skipped; streams count these by kind instead of stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleErrorKind {
    /// Corrupt, truncated, empty or unsupported image data.
    BadImage,
    /// Declared dimensions above the configured pixel cap (rejected before decoding).
    ImageTooLarge,
    /// An image with no caption, or an empty one.
    MissingCaption,
    /// A caption with no image, or an image file that does not exist.
    MissingImage,
    /// A caption that is not UTF-8.
    BadCaption,
    /// A shard that ends mid-member or is not a tar file; the rest of it is skipped.
    BadShard,
    /// A sample of a labelled task without a usable label (an empty label column, no `.cls`
    /// member, an image outside every class folder).
    MissingLabel,
    /// A tar member with an absolute path, `..`, or a link: never followed.
    UnsafePath,
}

impl SampleErrorKind {
    pub const ALL: [SampleErrorKind; 8] = [
        Self::BadImage,
        Self::ImageTooLarge,
        Self::MissingCaption,
        Self::MissingImage,
        Self::BadCaption,
        Self::BadShard,
        Self::MissingLabel,
        Self::UnsafePath,
    ];

    /// Snake-case name, as logs and metrics print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadImage => "bad_image",
            Self::ImageTooLarge => "image_too_large",
            Self::MissingCaption => "missing_caption",
            Self::MissingImage => "missing_image",
            Self::BadCaption => "bad_caption",
            Self::BadShard => "bad_shard",
            Self::MissingLabel => "missing_label",
            Self::UnsafePath => "unsafe_path",
        }
    }
}

impl fmt::Display for SampleErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A sample that could not be produced, with where it came from.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
#[error("{kind}: {location}: {message}")]
pub struct SampleError {
    pub kind: SampleErrorKind,
    /// File, shard member or row the sample came from.
    pub location: String,
    pub message: String,
}

impl SampleError {
    pub fn new(
        kind: SampleErrorKind,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            location: location.into(),
            message: message.into(),
        }
    }
}

/// Skipped samples counted by kind, with the first few of each kind kept to say where and
/// why: the one tally that training logs, `data-check` prints and batches report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SkipCounts {
    counts: BTreeMap<SampleErrorKind, usize>,
    examples: BTreeMap<SampleErrorKind, Vec<SampleError>>,
    keep_per_kind: usize,
}

impl SkipCounts {
    /// A tally that keeps the first `keep_per_kind` errors of each kind.
    pub fn new(keep_per_kind: usize) -> Self {
        Self {
            keep_per_kind,
            ..Self::default()
        }
    }

    /// Counts `error`; returns it when it is one of the first `keep_per_kind` of its kind.
    pub fn record(&mut self, error: SampleError) -> Option<&SampleError> {
        let count = self.counts.entry(error.kind).or_insert(0);
        *count += 1;
        if *count > self.keep_per_kind {
            return None;
        }
        let kept = self.examples.entry(error.kind).or_default();
        kept.push(error);
        kept.last()
    }

    pub fn count(&self, kind: SampleErrorKind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Counts of the kinds seen, in kind order.
    pub fn counts(&self) -> &BTreeMap<SampleErrorKind, usize> {
        &self.counts
    }

    /// The kept errors of `kind`.
    pub fn examples(&self, kind: SampleErrorKind) -> &[SampleError] {
        self.examples.get(&kind).map_or(&[], Vec::as_slice)
    }

    pub fn keep_per_kind(&self) -> usize {
        self.keep_per_kind
    }
}

/// Caption bytes kept from a source: far beyond any context length (77 tokens are a few hundred
/// bytes), small enough that a hostile 8 GB "caption" costs nothing.
pub const MAX_CAPTION_BYTES: usize = 64 << 10;

/// A caption from raw bytes, as every source reads one: at most [`MAX_CAPTION_BYTES`] (a
/// character cut at that boundary is dropped), UTF-8, whitespace runs collapsed to one space
/// (as CLIP's tokenizer does), not blank. The error says why it is not a caption.
pub fn caption_from_bytes(bytes: &[u8]) -> Result<String, (SampleErrorKind, &'static str)> {
    let bytes = &bytes[..bytes.len().min(MAX_CAPTION_BYTES)];
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        // Only a character cut by the cap is forgiven; anything else is not UTF-8.
        Err(e) if e.error_len().is_none() && bytes.len() == MAX_CAPTION_BYTES => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return Err((SampleErrorKind::BadCaption, "caption is not UTF-8")),
    };
    let caption = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if caption.is_empty() {
        return Err((SampleErrorKind::MissingCaption, "empty caption"));
    }
    Ok(caption)
}

/// Whether a sample needs a caption: training does; embedding images does not, and there a
/// missing or blank caption is the empty one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Captions {
    #[default]
    Required,
    Optional,
}

impl Captions {
    /// A sample's caption from its bytes, if it has any ([`caption_from_bytes`]); where
    /// captions are optional, a missing or blank one is empty (other faults stay faults).
    pub fn read(self, bytes: Option<&[u8]>) -> Result<String, (SampleErrorKind, &'static str)> {
        let caption = match bytes {
            Some(bytes) => caption_from_bytes(bytes),
            None => Err((SampleErrorKind::MissingCaption, "no caption")),
        };
        match (caption, self) {
            (Err((SampleErrorKind::MissingCaption, _)), Captions::Optional) => Ok(String::new()),
            (caption, _) => caption,
        }
    }
}

/// Longest class label read (bytes): a label is a class name, not a document.
pub const MAX_LABEL_BYTES: usize = 1024;

/// Whether samples need a class label: the classify objective does; everything else ignores
/// labels (and sources do not read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Labels {
    #[default]
    Ignored,
    Required,
}

impl Labels {
    /// A sample's label from its bytes, if it has any: trimmed UTF-8 of at most
    /// [`MAX_LABEL_BYTES`], not empty. `Ok(None)` where labels are ignored.
    pub fn read(self, bytes: Option<&[u8]>) -> Result<Option<String>, (SampleErrorKind, String)> {
        if self == Labels::Ignored {
            return Ok(None);
        }
        let missing = |why: String| Err((SampleErrorKind::MissingLabel, why));
        let Some(bytes) = bytes else {
            return missing("no label".into());
        };
        if bytes.len() > MAX_LABEL_BYTES {
            return missing(format!(
                "a label of {} bytes (at most {MAX_LABEL_BYTES})",
                bytes.len()
            ));
        }
        match std::str::from_utf8(bytes).map(str::trim) {
            Err(_) => missing("the label is not UTF-8".into()),
            Ok("") => missing("an empty label".into()),
            Ok(label) => Ok(Some(label.to_string())),
        }
    }
}

/// The text a sample trains on (`data.text_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// Its caption.
    #[default]
    Caption,
    /// Visual question answering rows: the caption holds a question and the label its answer;
    /// the text is [`TextFormat::question_answer`], which a captioner learns to continue from
    /// [`TextFormat::question_prompt`] (VQA by prompting).
    QuestionAnswer,
}

impl TextFormat {
    /// The prompt a question is asked with.
    pub fn question_prompt(question: &str) -> String {
        format!("question: {question} answer:")
    }

    /// A question and its answer as one text: the prompt, then the answer.
    pub fn question_answer(question: &str, answer: &str) -> String {
        format!("{} {answer}", Self::question_prompt(question))
    }

    pub fn is_caption(&self) -> bool {
        *self == Self::Caption
    }
}

/// A labelled source whose pairs' texts become `question: {caption} answer: {label}`.
pub struct QuestionAnswerTexts(pub Box<dyn PairSource>);

impl Iterator for QuestionAnswerTexts {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.nth(0)
    }

    /// Skipping is the inner source's (index arithmetic where it has it).
    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        Some(self.0.nth(n)?.map(|mut pair| {
            let answer = pair.label.as_deref().unwrap_or_default();
            pair.caption = TextFormat::question_answer(&pair.caption, answer);
            pair
        }))
    }
}

impl PairSource for QuestionAnswerTexts {
    fn describe(&self) -> String {
        format!("{} as question-answer texts", self.0.describe())
    }
}

/// A stream of image-caption pairs.
///
/// Sources are iterators so that streamed formats (tar shards) and indexed ones (CSV,
/// folders, the procedural data) fit the same slot. A bad sample is an `Err` item that the
/// batcher skips and counts; `None` ends the stream (an epoch, for finite sources).
pub trait PairSource: Iterator<Item = Result<ImageTextPair, SampleError>> + Send {
    /// What the source reads, for logs.
    fn describe(&self) -> String;
}
