//! CLIP tokenisation with the `tokenizers` crate and OpenAI's BPE vocabulary.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::DataError;

/// OpenAI CLIP's tokenizer, embedded so that nothing is downloaded at run time.
const CLIP_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/clip_tokenizer.json");

/// Tokenizes captions to fixed-length id rows: `<|startoftext|> ... <|endoftext|>`, truncated
/// to the context length (keeping the end token) and padded with `<|endoftext|>` as HF's
/// `CLIPTokenizer` does.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    eot_id: u32,
}

impl ClipTokenizer {
    /// The OpenAI CLIP vocabulary shipped with mm.
    pub fn openai() -> Self {
        Self::from_bytes(CLIP_TOKENIZER_JSON, "built-in CLIP tokenizer")
            .expect("the embedded tokenizer is valid")
    }

    /// Loads a `tokenizer.json` (e.g. from an HF CLIP directory or an mm checkpoint).
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, DataError> {
        let inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| DataError::Tokenizer(format!("{origin}: {e}")))?;
        let eot_id = inner.token_to_id("<|endoftext|>").ok_or_else(|| {
            DataError::Tokenizer(format!(
                "{origin}: no `<|endoftext|>` token in the vocabulary"
            ))
        })?;
        Ok(Self { inner, eot_id })
    }

    /// The JSON form, written into checkpoints so that they are self-contained.
    pub fn to_json(&self) -> Result<String, DataError> {
        self.inner
            .to_string(false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    }

    pub fn eot_id(&self) -> u32 {
        self.eot_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of one caption, exactly `context_length` long.
    pub fn encode(&self, text: &str, context_length: usize) -> Result<Vec<u32>, DataError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| DataError::Tokenizer(format!("caption {text:?}: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > context_length {
            ids.truncate(context_length - 1);
            ids.push(self.eot_id);
        }
        ids.resize(context_length, self.eot_id);
        Ok(ids)
    }

    /// Row-major `[texts.len(), context_length]` ids.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        context_length: usize,
    ) -> Result<Vec<u32>, DataError> {
        let mut ids = Vec::with_capacity(texts.len() * context_length);
        for text in texts {
            ids.extend(self.encode(text.as_ref(), context_length)?);
        }
        Ok(ids)
    }
}
