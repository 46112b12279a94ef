//! Reading configs: [`from_toml_str`], [`ConfigError`] (file and key), and the caps on a
//! model's sizes that validation checks. Each config sits beside its module (`ClipConfig` in
//! `model.rs`, `VisionConfig` in `vision.rs`, ...).
//!
//! File-facing configs derive serde directly (not burn's `Config`) so that unknown keys are
//! rejected by `deny_unknown_fields`; a typo in a config must never be silently ignored.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

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

/// One JSON object of a foreign config (HF's `config.json`, open_clip's model config), with
/// typed getters whose errors name `section.key` in that config's own terms.
pub(crate) struct JsonSection<'a> {
    value: &'a Value,
    name: String,
    origin: &'a str,
}

static NULL: Value = Value::Null;

impl<'a> JsonSection<'a> {
    /// `value` (an object, or null for a section left out) named `name` in `origin`.
    pub(crate) fn new(value: &'a Value, name: &str, origin: &'a str) -> Result<Self, ConfigError> {
        if !(value.is_object() || value.is_null()) {
            return Err(ConfigError::new(origin, name, "expected a JSON object"));
        }
        Ok(Self {
            value,
            name: name.to_string(),
            origin,
        })
    }

    /// The object under `key` (null if absent).
    pub(crate) fn sub(&self, key: &str) -> Result<JsonSection<'a>, ConfigError> {
        let value = self.value.get(key).unwrap_or(&NULL);
        JsonSection::new(value, &self.key(key), self.origin)
    }

    fn key(&self, key: &str) -> String {
        match self.name.is_empty() {
            true => key.to_string(),
            false => format!("{}.{key}", self.name),
        }
    }

    pub(crate) fn error(&self, key: &str, message: String) -> ConfigError {
        ConfigError::new(self.origin, &self.key(key), message)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.error(key, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(key, format!("expected a number, got {v}"))),
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, format!("expected true or false, got {v}"))),
        }
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a string, got {v}"))),
        }
    }

    /// An image/patch size: an integer, or a `[h, w]` pair with h == w.
    pub(crate) fn square_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        if let Some(Value::Array(pair)) = self.get(key) {
            return match pair.as_slice() {
                [h, w] if h == w && h.is_u64() => Ok(h.as_u64().unwrap_or(0) as usize),
                _ => Err(self.error(key, format!("{pair:?}: only square sizes are supported"))),
            };
        }
        self.usize_or(key, default)
    }
}
