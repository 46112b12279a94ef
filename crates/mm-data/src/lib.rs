//! Image-text pairs for CLIP training: sources, CLIP preprocessing, tokenisation, batching.

pub mod batch;
pub mod error;
pub mod files;
pub mod hf;
pub mod preprocess;
pub mod regular_file;
pub mod resample;
pub mod shape_tasks;
pub mod shapes;
pub mod source;
pub mod stream;
pub mod tokenizer;
pub mod webdataset;

pub use batch::{
    Batcher, ClipBatch, Prefetcher, ScanReport, image_file_tensor, pixels_tensor, token_ids_tensor,
};
pub use error::DataError;
pub use files::{CsvColumns, CsvSource, FolderSource, csv_separator};
pub use preprocess::{
    CLIP_MEAN, CLIP_STD, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, ImageLimits,
    TrainTransform, decode_input, load_image, normalize_into, preprocess_into, resize_center_crop,
};
pub use shape_tasks::{ShapesTask, TaskSample, TaskSource};
pub use shapes::{Placement, ShapeSample, ShapesDataset, ShapesSource, Split, described_figure};
pub use source::{
    Captions, ImageInput, ImageTextPair, Labels, MAX_CAPTION_BYTES, MAX_LABEL_BYTES, PairSource,
    QuestionAnswerTexts, SampleError, SampleErrorKind, SkipCounts, TextFormat, caption_from_bytes,
};
pub use stream::{DataConfig, DataStream, Fold, Paths, ShuffleBuffer, SourceKind};
pub use tokenizer::ClipTokenizer;
pub use webdataset::{TarSource, expand_braces, expand_shards, shards_for_rank};
