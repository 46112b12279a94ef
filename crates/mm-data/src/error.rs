use std::path::{Path, PathBuf};

/// Errors of the data path; each names the file or item it is about.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A configuration file mm cannot honour; the message names the file and key.
    #[error("{0}")]
    Config(String),
    /// A stream that yields nothing usable: every image missing, the wrong column, ...
    #[error(
        "{source_name}: {count} samples in a row were unusable (data.max_consecutive_skips); the last: {last}"
    )]
    NoUsableSamples {
        source_name: String,
        count: usize,
        last: String,
    },
    #[error(
        "{source_name}: the data ended after {count} unusable samples and no usable one; the last: {last}"
    )]
    Exhausted {
        source_name: String,
        count: usize,
        last: String,
    },
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
