//! Reading configs: [`from_toml_str`], [`ConfigError`] (file and key), and the caps on a
//! model's sizes that validation checks. Each config sits beside its module (`ClipConfig` in
//! `model.rs`, `VisionConfig` in `vision.rs`, ...).
//!
//! File-facing configs derive serde directly (not burn's `Config`) so that unknown keys are
//! rejected by `deny_unknown_fields`; a typo in a config must never be silently ignored.

use std::fmt;

use serde::de::DeserializeOwned;

/// Caps on a model's sizes: far beyond any real CLIP (ViT-bigG/14: width 1664, 48 layers,
/// 8,192 MLP; 336 px), so that a typo is a clear error and not an allocation of terabytes.
pub const MAX_WIDTH: usize = 16_384;
pub const MAX_LAYERS: usize = 256;
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Patch tokens per image (ViT-bigG/14 at 336 px has 576).
pub const MAX_PATCHES: usize = 65_536;
pub const MAX_CONTEXT_LENGTH: usize = 16_384;
pub const MAX_VOCAB_SIZE: usize = 4 << 20;
/// ViT-bigG/14 CLIP has 2.5 billion.
pub const MAX_PARAMS: u64 = 50_000_000_000;

/// A config that could not be read: names the file (or preset) and the offending key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(origin: &str, key: &str, message: impl Into<String>) -> Self {
        Self {
            origin: origin.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.origin, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses TOML into `T`, reporting the dotted path of the key that failed.
///
/// `origin` names where the text came from (a file path or a preset) for the error message.
pub fn from_toml_str<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new(origin, "", format!("invalid TOML: {}", e.message())))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        // toml's own message may carry a source snippet; the first line is the reason.
        let inner = e.into_inner();
        let message = inner
            .message()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        ConfigError::new(origin, &key, message)
    })
}
