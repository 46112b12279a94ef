//! CLIP's image and text towers on burn, with HF transformers' `CLIPModel` parameter names.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use mm_encoders::ClipConfig;
//!
//! let device = Device::flex();
//! let config = ClipConfig::preset("tiny").unwrap();
//! let model = config.init(&device);
//! let size = config.vision.image_size;
//! let images = model.image_features(Tensor::zeros([2, 3, size, size], &device));
//! let ids = Tensor::<2, Int>::zeros([2, config.text.context_length], &device);
//! let texts = model.text_features(ids);
//! assert_eq!(images.dims(), texts.dims());
//! ```

pub mod coca;
pub mod config;
pub mod decoder;
pub mod fusion;
pub mod generate;
pub mod hf;
pub mod model;
pub mod open_clip;
mod ops;
pub mod patch_dropout;
pub mod pooler;
pub mod text;
pub mod transformer;
pub mod vision;
pub mod weights_file;

pub use coca::{CocaModel, CocaOutput, DecodingState};
pub use config::{ConfigError, from_toml_str};
pub use decoder::{MultimodalConfig, MultimodalDecoder};
pub use fusion::{FusionClassifier, FusionConfig, FusionOperator, FusionStage, Modalities};
pub use hf::HfError;
pub use model::{ClipConfig, ClipModel, initialised};
pub use ops::{
    MatmulPrecision, MatmulPrecisionGuard, fused_on, patch_embedding, set_matmul_precision,
    with_matmul_precision,
};
pub use patch_dropout::PatchDropout;
pub use text::{TextConfig, TextTransformer, eot_index, text_padding};
pub use transformer::{Activation, ContextKeys, Encoder, KvCache, TransformerConfig};
pub use vision::{TowerOutput, VisionConfig, VisionTransformer};
