//! CLIP tokenisation with the `tokenizers` crate and OpenAI's BPE vocabulary.

use std::path::Path;

use serde_json::Value;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer};

use crate::DataError;
use crate::regular_file::{read_capped, read_text_capped};

/// Tokenizer files mm reads (OpenAI's is 3.6 MB; the largest HF vocabularies ~20 MB).
const MAX_TOKENIZER_BYTES: u64 = 128 << 20;

/// OpenAI CLIP's tokenizer, embedded so that nothing is downloaded at run time.
const CLIP_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/clip_tokenizer.json");

pub const START_TOKEN: &str = "<|startoftext|>";
pub const END_TOKEN: &str = "<|endoftext|>";

/// Tokenizes captions to fixed-length id rows: `<|startoftext|> ... <|endoftext|>`, truncated
/// to the context length (keeping the end token) and padded with the pad token, as HF's
/// `CLIPTokenizer` does with `padding="max_length", truncation=True`.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// With padding and truncation off: both are done here, at the model's context length.
    inner: Tokenizer,
    sot_id: u32,
    eot_id: u32,
    pad_id: u32,
    /// Characters in the longest vocabulary token: bounds the text that can reach a context.
    max_token_chars: usize,
}

impl ClipTokenizer {
    /// The OpenAI CLIP vocabulary shipped with mm (pads with `<|endoftext|>`).
    pub fn openai() -> Self {
        Self::from_bytes(CLIP_TOKENIZER_JSON, "built-in CLIP tokenizer")
            .expect("the embedded tokenizer is valid")
    }

    /// Loads a `tokenizer.json` (e.g. from an mm checkpoint). The pad token is the one the file
    /// records (mm writes it there), else `<|endoftext|>`.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = read_capped(path, MAX_TOKENIZER_BYTES).map_err(|e| DataError::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// OpenAI's CLIP pipeline (NFC, whitespace collapse, lower-case, CLIP's split regex,
    /// byte-level BPE with `</w>`) over another vocabulary: HF's `vocab.json` + `merges.txt`,
    /// as HF `CLIPTokenizer` builds it from those two files.
    pub fn from_vocab_merges(vocab_path: &Path, merges_path: &Path) -> Result<Self, DataError> {
        let read = |path: &Path| {
            read_text_capped(path, MAX_TOKENIZER_BYTES).map_err(|e| DataError::io(path, e))
        };
        let origin = vocab_path.display().to_string();
        let vocab: Value = serde_json::from_str(&read(vocab_path)?)
            .map_err(|e| DataError::Tokenizer(format!("{origin}: invalid JSON: {e}")))?;
        let id_of = |token: &str| {
            vocab.get(token).and_then(Value::as_u64).ok_or_else(|| {
                DataError::Tokenizer(format!("{origin}: no `{token}` in the vocabulary"))
            })
        };
        let (sot, eot) = (id_of(START_TOKEN)?, id_of(END_TOKEN)?);
        let merges: Vec<String> = read(merges_path)?
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(String::from)
            .collect();
        let mut json: Value =
            serde_json::from_slice(CLIP_TOKENIZER_JSON).expect("the embedded tokenizer is JSON");
        json["model"]["vocab"] = vocab.clone();
        json["model"]["merges"] = Value::from(merges);
        json["added_tokens"][0]["id"] = sot.into();
        json["added_tokens"][1]["id"] = eot.into();
        json["post_processor"]["cls"][1] = sot.into();
        json["post_processor"]["sep"][1] = eot.into();
        Self::from_bytes(json.to_string().as_bytes(), &origin)
    }

    fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, DataError> {
        let mut inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| DataError::Tokenizer(format!("{origin}: {e}")))?;
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                DataError::Tokenizer(format!("{origin}: no `{token}` token in the vocabulary"))
            })
        };
        let (sot_id, eot_id) = (id(START_TOKEN)?, id(END_TOKEN)?);
        let pad_id = inner.get_padding().map_or(eot_id, |p| p.pad_id);
        let max_token_chars = inner
            .get_vocab(true)
            .keys()
            .map(|t| t.trim_end_matches("</w>").chars().count())
            .max()
            .unwrap_or(1);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| DataError::Tokenizer(format!("{origin}: {e}")))?;
        Ok(Self {
            inner,
            sot_id,
            eot_id,
            pad_id,
            max_token_chars,
        })
    }

    /// The same tokenizer padding with `token` (HF's `pad_token`; some CLIP exports pad with
    /// `!` rather than `<|endoftext|>`).
    pub fn with_pad_token(mut self, token: &str) -> Result<Self, DataError> {
        self.pad_id = self.inner.token_to_id(token).ok_or_else(|| {
            DataError::Tokenizer(format!("pad token `{token}` is not in the vocabulary"))
        })?;
        Ok(self)
    }

    /// The same tokenizer padding with id `pad_id` (open_clip's tokenizer pads with 0, which
    /// CoCa's mask and caption loss skip).
    pub fn with_pad_id(mut self, pad_id: u32) -> Result<Self, DataError> {
        if self.inner.id_to_token(pad_id).is_none() {
            return Err(DataError::Tokenizer(format!(
                "pad id {pad_id} is not in the vocabulary of {} tokens",
                self.vocab_size()
            )));
        }
        self.pad_id = pad_id;
        Ok(self)
    }

    /// The text of generated ids: special tokens and padding dropped, BPE merged back into
    /// words (lower case, as the tokenizer normalised it).
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        let ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| id != self.sot_id && id != self.eot_id)
            .collect();
        let text = self
            .inner
            .decode(&ids, true)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        // The byte-level decoder leaves the BPE end-of-word marks: each is a space.
        let text = text.replace("</w>", " ");
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// The ids of a text to continue (a caption prompt): the start token and the text's
    /// tokens, no end token, no padding; an error if that leaves no room in `context_length`
    /// for one more token.
    pub fn encode_prompt(&self, text: &str, context_length: usize) -> Result<Vec<u32>, DataError> {
        let ids = self.encode(text, context_length + 1)?;
        let end = ids
            .iter()
            .position(|&id| id == self.eot_id)
            .unwrap_or(ids.len());
        if end >= context_length {
            return Err(DataError::Tokenizer(format!(
                "the prompt fills the model's {context_length} positions (with the start token): nothing is left to generate"
            )));
        }
        Ok(ids[..end].to_vec())
    }

    /// The JSON form, written into checkpoints so that they are self-contained. The pad token
    /// is recorded as the file's padding parameters.
    pub fn to_json(&self) -> Result<String, DataError> {
        let mut with_pad = self.inner.clone();
        with_pad.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: self.pad_id,
            pad_token: self.pad_token(),
            ..Default::default()
        }));
        with_pad
            .to_string(false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    }

    pub fn sot_id(&self) -> u32 {
        self.sot_id
    }

    pub fn eot_id(&self) -> u32 {
        self.eot_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn pad_token(&self) -> String {
        self.inner.id_to_token(self.pad_id).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of one caption, exactly `context_length` long.
    ///
    /// Tokenising costs memory in proportion to the text (hundreds of bytes per input byte),
    /// so a text longer than what could fill the context is cut first: whitespace produces
    /// no tokens and is collapsed, and every token covers at most `max_token_chars` characters,
    /// so what is cut (with a 4x margin for normalisation) lies beyond the context.
    pub fn encode(&self, text: &str, context_length: usize) -> Result<Vec<u32>, DataError> {
        let mut ids = self.ids(text, context_length)?;
        if ids.len() > context_length {
            ids.truncate(context_length - 1);
            ids.push(self.eot_id);
        }
        ids.resize(context_length, self.pad_id);
        Ok(ids)
    }

    /// [`ClipTokenizer::encode`] for a text that must not be cut (a question-answer text cut
    /// short loses its answer): one that does not fit is an error saying by how much.
    pub fn encode_whole(&self, text: &str, context_length: usize) -> Result<Vec<u32>, DataError> {
        let mut ids = self.ids(text, context_length)?;
        if ids.len() > context_length {
            return Err(DataError::Tokenizer(format!(
                "{} tokens with the start and end tokens, more than the context's {context_length}",
                ids.len()
            )));
        }
        ids.resize(context_length, self.pad_id);
        Ok(ids)
    }

    /// The text's ids with the start and end tokens, not cut to the context (but the text
    /// clipped first, see [`ClipTokenizer::encode`]).
    fn ids(&self, text: &str, context_length: usize) -> Result<Vec<u32>, DataError> {
        let bound = 4 * (context_length + 1) * (self.max_token_chars + 1);
        let clipped;
        let text = if text.len() > bound {
            clipped = clip_text(text, bound);
            clipped.as_str()
        } else {
            text
        };
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| DataError::Tokenizer(format!("caption {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
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

/// The first words of `text` (whitespace collapsed) up to about `bound` bytes; a single word
/// longer than that is cut at a character boundary.
fn clip_text(text: &str, bound: usize) -> String {
    let mut out = String::with_capacity(bound + 1);
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        let room = bound.saturating_sub(out.len());
        if word.len() > room {
            let mut end = room;
            while !word.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&word[..end]);
            break;
        }
        out.push_str(word);
    }
    out
}
