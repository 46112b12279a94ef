//! The pair-source abstraction every dataset format implements.

use image::DynamicImage;

/// One training example: a decoded image (any colour type) and its caption.
#[derive(Clone, Debug)]
pub struct ImageTextPair {
    pub image: DynamicImage,
    pub caption: String,
}

/// Why a sample was skipped; streams count these by kind instead of stopping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleErrorKind {
    BadImage,
    MissingCaption,
    MissingImage,
    Other,
}

/// A sample that could not be produced, with where it came from.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SampleError {
    pub kind: SampleErrorKind,
    /// File, shard member or row the sample came from.
    pub location: String,
    pub message: String,
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
