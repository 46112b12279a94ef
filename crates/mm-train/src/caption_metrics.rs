//! Caption metrics as the COCO caption evaluation (pycocoevalcap) computes them, so mm's
//! numbers compare with papers': corpus BLEU-1..4 (brevity penalty against the closest
//! reference length) and CIDEr-D (tf-idf weighted n-gram cosine against every reference, with
//! candidate counts clipped by the reference's and a Gaussian length penalty, σ = 6, x10).
//! Texts are compared as lowercase words split at anything not alphanumeric (pycocoevalcap's
//! PTB tokenizer drops punctuation too).

use std::collections::HashMap;

use mm_data::shapes::SHAPES;
use serde::Serialize;

/// n-grams up to this length (BLEU-4, CIDEr-D's n = 1..4).
const N: usize = 4;
/// CIDEr-D's length penalty width.
const SIGMA: f64 = 6.0;

/// The words metrics compare: lowercased, split at non-alphanumerics.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Counts of every 1..=4-gram of `words`.
fn ngrams(words: &[String]) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for n in 1..=N {
        for gram in words.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus BLEU-1..4 of `candidates[i]` against `references[i]` (pycocoevalcap's `Bleu(4)`:
/// clipped n-gram counts and lengths summed over the corpus, then one geometric mean and one
/// brevity penalty; its smoothing constants kept so scores match to rounding).
pub fn bleu(candidates: &[String], references: &[Vec<String>]) -> [f64; N] {
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let (mut correct, mut guess) = ([0usize; N], [0usize; N]);
    let (mut test_len, mut ref_len) = (0usize, 0usize);
    for (candidate, refs) in candidates.iter().zip(references) {
        let candidate = words(candidate);
        let refs: Vec<Vec<String>> = refs.iter().map(|r| words(r)).collect();
        let mut max_ref: HashMap<&[String], usize> = HashMap::new();
        for r in &refs {
            for (gram, count) in ngrams(r) {
                let slot = max_ref.entry(gram).or_insert(0);
                *slot = (*slot).max(count);
            }
        }
        for (gram, count) in ngrams(&candidate) {
            correct[gram.len() - 1] += count.min(max_ref.get(gram).copied().unwrap_or(0));
        }
        for (k, g) in guess.iter_mut().enumerate() {
            *g += (candidate.len() + 1).saturating_sub(k + 1);
        }
        // The closest reference length; ties go to the shorter.
        let closest = refs
            .iter()
            .map(|r| (r.len().abs_diff(candidate.len()), r.len()))
            .min()
            .map_or(0, |(_, len)| len);
        test_len += candidate.len();
        ref_len += closest;
    }
    let ratio = (test_len as f64 + TINY) / (ref_len as f64 + SMALL);
    let brevity = if ratio < 1.0 {
        (1.0 - 1.0 / ratio).exp()
    } else {
        1.0
    };
    let mut product = 1.0;
    std::array::from_fn(|k| {
        product *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        product.powf(1.0 / (k + 1) as f64) * brevity
    })
}

/// One text's tf-idf vectors (one per n), their norms, and its "length" as pycocoevalcap
/// measures it (its count of bigrams, so the length penalty sees word-count differences).
struct Weighted<'a> {
    vectors: [HashMap<&'a [String], f64>; N],
    norms: [f64; N],
    length: usize,
}

impl<'a> Weighted<'a> {
    fn new(words: &'a [String], idf: &impl Fn(&[String]) -> f64) -> Self {
        let mut vectors: [HashMap<&[String], f64>; N] = Default::default();
        let mut norms = [0.0; N];
        let mut length = 0;
        for (gram, tf) in ngrams(words) {
            let n = gram.len() - 1;
            let w = tf as f64 * idf(gram);
            vectors[n].insert(gram, w);
            norms[n] += w * w;
            if n == 1 {
                length += tf;
            }
        }
        Self {
            vectors,
            norms: norms.map(f64::sqrt),
            length,
        }
    }

    /// Per-n clipped cosine with `reference`, times the length penalty.
    fn similarity(&self, reference: &Weighted) -> [f64; N] {
        let delta = self.length as f64 - reference.length as f64;
        let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
        std::array::from_fn(|n| {
            let mut value: f64 = self.vectors[n]
                .iter()
                .map(|(gram, &w)| {
                    let r = reference.vectors[n].get(gram).copied().unwrap_or(0.0);
                    w.min(r) * r
                })
                .sum();
            if self.norms[n] != 0.0 && reference.norms[n] != 0.0 {
                value /= self.norms[n] * reference.norms[n];
            }
            value * penalty
        })
    }
}

/// CIDEr-D of each `candidates[i]` against `references[i]`, with document frequencies taken
/// over this corpus's references (pycocoevalcap's `Cider`, which is CIDEr-D). Their mean is
/// the corpus score.
pub fn cider_d(candidates: &[String], references: &[Vec<String>]) -> Vec<f64> {
    let refs: Vec<Vec<Vec<String>>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| words(r)).collect())
        .collect();
    let mut document_frequency: HashMap<&[String], usize> = HashMap::new();
    for image in &refs {
        let mut seen: Vec<&[String]> = image.iter().flat_map(|r| ngrams(r).into_keys()).collect();
        seen.sort();
        seen.dedup();
        for gram in seen {
            *document_frequency.entry(gram).or_insert(0) += 1;
        }
    }
    let log_images = (refs.len() as f64).ln();
    let idf = |gram: &[String]| {
        let df = document_frequency.get(gram).copied().unwrap_or(0).max(1);
        log_images - (df as f64).ln()
    };
    candidates
        .iter()
        .zip(&refs)
        .map(|(candidate, image_refs)| {
            let candidate = words(candidate);
            let weighted = Weighted::new(&candidate, &idf);
            let mut total = [0.0; N];
            for r in image_refs {
                let sim = weighted.similarity(&Weighted::new(r, &idf));
                for (t, s) in total.iter_mut().zip(sim) {
                    *t += s;
                }
            }
            let mean = total.iter().sum::<f64>() / N as f64;
            10.0 * mean / image_refs.len().max(1) as f64
        })
        .collect()
}

/// Generated captions of a set, scored against its references.
#[derive(Clone, Debug, Serialize)]
pub struct CaptionScores {
    pub images: usize,
    /// BLEU-1..4.
    pub bleu: [f64; N],
    pub cider_d: f64,
    /// On the built-in data: how often a caption names the figure's colour, its shape, both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<AttributeAccuracy>,
}

/// Shares of captions whose figure ([`mm_data::described_figure`]) has the right attribute.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AttributeAccuracy {
    pub colour: f64,
    pub shape: f64,
    pub colour_and_shape: f64,
}

impl CaptionScores {
    /// `generated[i]` against `references[i]`; `classes[i]`, where given, is image i's
    /// built-in class (colour x shape) whose words its caption should name.
    pub fn new(
        generated: &[String],
        references: &[Vec<String>],
        classes: Option<&[usize]>,
    ) -> Self {
        let cider = cider_d(generated, references);
        let n = generated.len().max(1) as f64;
        let attributes = classes.map(|classes| {
            let (mut colour, mut shape, mut both) = (0, 0, 0);
            for (text, &class) in generated.iter().zip(classes) {
                let (c, s) = mm_data::described_figure(text);
                let c = c == Some(class / SHAPES.len());
                let s = s == Some(class % SHAPES.len());
                colour += c as usize;
                shape += s as usize;
                both += (c && s) as usize;
            }
            AttributeAccuracy {
                colour: colour as f64 / n,
                shape: shape as f64 / n,
                colour_and_shape: both as f64 / n,
            }
        });
        Self {
            images: generated.len(),
            bleu: bleu(generated, references),
            cider_d: cider.iter().sum::<f64>() / n,
            attributes,
        }
    }
}

/// Share of `generated` answers equal to `answers` word for word (case and punctuation
/// aside): VQA's exact match.
pub fn answer_accuracy(generated: &[String], answers: &[String]) -> f64 {
    let right = generated
        .iter()
        .zip(answers)
        .filter(|(g, a)| words(g) == words(a))
        .count();
    right as f64 / generated.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_and_split_at_punctuation() {
        assert_eq!(
            words("An image of a STAR, coloured red."),
            ["an", "image", "of", "a", "star", "coloured", "red"]
        );
        assert!(words(" ,. ").is_empty());
    }

    #[test]
    fn identical_texts_score_one_and_disjoint_ones_zero() {
        let refs = vec![vec!["a red star on a white background".to_string()]];
        let same = bleu(&["a red star on a white background".into()], &refs);
        assert!(same.iter().all(|b| (b - 1.0).abs() < 1e-9), "{same:?}");
        let other = bleu(&["the blue circle".into()], &refs);
        assert!(other[3] < 1e-6, "{other:?}");
    }

    #[test]
    fn attributes_are_read_from_the_captions_words() {
        // Class 3 is a red star, 47 a white cross.
        let generated = [
            "a red star on a white background".to_string(),
            "a picture of a cross that is white".into(),
            "a white star".into(),
        ];
        let refs = vec![vec!["a red star".to_string()]; 3];
        let scores = CaptionScores::new(&generated, &refs, Some(&[3, 47, 3]));
        let a = scores.attributes.unwrap();
        assert_eq!(
            (a.colour, a.shape, a.colour_and_shape),
            (2.0 / 3.0, 1.0, 2.0 / 3.0)
        );
        assert_eq!(
            answer_accuracy(
                &["Red.".into(), "red star".into()],
                &["red".into(), "red".into()]
            ),
            0.5
        );
    }
}
