//! Image-text pairs for CLIP training: sources, CLIP preprocessing, tokenisation, batching.

pub mod batch;
pub mod error;
pub mod hf;
pub mod preprocess;
pub mod resample;
pub mod shapes;
pub mod source;
pub mod tokenizer;

pub use batch::{Batcher, ClipBatch, Prefetcher, pixels_tensor, token_ids_tensor};
pub use error::DataError;
pub use preprocess::{
    CLIP_MEAN, CLIP_STD, load_image, normalize_into, preprocess_into, resize_center_crop,
};
pub use shapes::{ShapeSample, ShapesDataset, ShapesSource, Split};
pub use source::{ImageTextPair, PairSource, SampleError, SampleErrorKind};
pub use tokenizer::ClipTokenizer;
