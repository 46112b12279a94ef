//! Text generation from next-token logits: greedy, beam search (width, length penalty) and
//! sampling (temperature, top-k, top-p), with a repetition penalty, a minimum length, a maximum
//! length and the end token; batched. The model side is a [`NextTokens`]: CoCa's cached
//! decoding ([`CachedCaptioner`], one position per token) or its full re-run
//! ([`UncachedCaptioner`], the reference the cache must match).

use std::cmp::Ordering;

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::coca::{CocaModel, DecodingState};

/// How each next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoding {
    /// The most probable token.
    Greedy,
    /// The `width` best continuations by total log-probability; finished texts compete by
    /// `log p / length^length_penalty` (HF's `length_penalty`: above 0 favours longer ones).
    Beam { width: usize, length_penalty: f32 },
    /// A draw from the distribution at `temperature`, limited to the `top_k` most probable
    /// tokens (0: all) and to the smallest set holding `top_p` of the probability (1: all).
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
    },
}

/// What to generate (the ids are the tokenizer's).
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub decoding: Decoding,
    /// New tokens at most (the end token counted).
    pub max_new_tokens: usize,
    /// The end token is not allowed before this many new tokens.
    pub min_new_tokens: usize,
    /// CTRL's penalty (HF's `repetition_penalty`) on tokens already in the text: positive
    /// logits divided by it, negative ones multiplied. 1: none.
    pub repetition_penalty: f32,
    pub end_id: u32,
}

impl Generation {
    /// Checks the values no decoding can honour; the message names the option.
    pub fn check(&self) -> Result<(), String> {
        if self.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return Err(format!(
                "min_new_tokens ({}) must not exceed max_new_tokens ({})",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!(
                "repetition_penalty must be a positive number, got {}",
                self.repetition_penalty
            ));
        }
        match self.decoding {
            Decoding::Greedy => Ok(()),
            Decoding::Beam {
                width,
                length_penalty,
            } => match (width, length_penalty.is_finite()) {
                (0, _) => Err("beam width must be at least 1".into()),
                (1025.., _) => Err(format!("beam width {width} is beyond 1024")),
                (_, false) => Err(format!(
                    "length_penalty must be finite, got {length_penalty}"
                )),
                _ => Ok(()),
            },
            Decoding::Sample {
                temperature, top_p, ..
            } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(format!(
                        "temperature must be a positive number, got {temperature}"
                    ));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(format!("top_p must be in (0, 1], got {top_p}"));
                }
                Ok(())
            }
        }
    }
}

/// One generated text: the new ids (the end token last if it was reached) and their score
/// (total log-probability under the processed distributions; for beams, divided by
/// `length^length_penalty`).
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub ids: Vec<u32>,
    pub score: f32,
}

/// The model side of generation: next-token logits after each row's ids.
pub trait NextTokens {
    /// `rows[r]` is row `r`'s ids so far (all rows equally long); returns each row's
    /// next-token logits.
    fn logits(&mut self, rows: &[Vec<u32>]) -> Vec<Vec<f32>>;
    /// Keeps rows `rows` in that order (beams reordered or copied, finished rows dropped).
    fn select(&mut self, rows: &[usize]);
}

/// CoCa's cached decoding: each call feeds only the ids not yet seen.
pub struct CachedCaptioner<'a> {
    model: &'a CocaModel,
    state: DecodingState,
    fed: usize,
}

impl<'a> CachedCaptioner<'a> {
    /// Over image tokens (`[rows, n, width]`, [`CocaModel::encode_image`]).
    pub fn new(model: &'a CocaModel, image_tokens: Tensor<3>) -> Self {
        Self {
            state: model.start_decoding(image_tokens),
            model,
            fed: 0,
        }
    }
}

impl NextTokens for CachedCaptioner<'_> {
    fn logits(&mut self, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let new: Vec<Vec<u32>> = rows.iter().map(|row| row[self.fed..].to_vec()).collect();
        self.fed = rows.first().map_or(0, Vec::len);
        host_rows(self.model.decode_step(&mut self.state, &new))
    }

    fn select(&mut self, rows: &[usize]) {
        self.state.select(rows);
    }
}

/// CoCa's logits recomputed over the whole prefix at every step (open_clip's `generate`).
pub struct UncachedCaptioner<'a> {
    model: &'a CocaModel,
    image_tokens: Tensor<3>,
}

impl<'a> UncachedCaptioner<'a> {
    pub fn new(model: &'a CocaModel, image_tokens: Tensor<3>) -> Self {
        Self {
            model,
            image_tokens,
        }
    }
}

impl NextTokens for UncachedCaptioner<'_> {
    fn logits(&mut self, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let device = self.image_tokens.device();
        let seq = rows.first().map_or(0, Vec::len);
        let flat: Vec<i64> = rows.iter().flatten().map(|&id| id as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), seq]), &device);
        let logits = self.model.caption_logits(self.image_tokens.clone(), ids);
        let [batch, _, vocab] = logits.dims();
        host_rows(
            logits
                .slice([0..batch, seq - 1..seq, 0..vocab])
                .reshape([batch, vocab]),
        )
    }

    fn select(&mut self, rows: &[usize]) {
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
            &self.image_tokens.device(),
        );
        self.image_tokens = self.image_tokens.clone().select(0, index);
    }
}

fn host_rows(logits: Tensor<2>) -> Vec<Vec<f32>> {
    let vocab = logits.dims()[1];
    let values = logits
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap_or_default();
    values.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect()
}

/// Generates a continuation of each prompt (equally long; the model's rows are the prompts
/// in order, one each). Call [`Generation::check`] first.
pub fn generate(
    next: &mut dyn NextTokens,
    prompts: &[Vec<u32>],
    generation: &Generation,
) -> Vec<Generated> {
    match generation.decoding {
        Decoding::Beam {
            width,
            length_penalty,
        } => beam_search(next, prompts, generation, width, length_penalty),
        _ => one_path(next, prompts, generation),
    }
}

/// Greedy decoding and sampling: one continuation per prompt; finished rows leave the batch.
fn one_path(
    next: &mut dyn NextTokens,
    prompts: &[Vec<u32>],
    generation: &Generation,
) -> Vec<Generated> {
    let mut rng = match generation.decoding {
        Decoding::Sample { seed, .. } => StdRng::seed_from_u64(seed),
        _ => StdRng::seed_from_u64(0),
    };
    let mut out: Vec<Generated> = prompts
        .iter()
        .map(|_| Generated {
            ids: Vec::new(),
            score: 0.0,
        })
        .collect();
    // Rows still generating: (index into `out`, ids so far).
    let mut rows: Vec<(usize, Vec<u32>)> = prompts.iter().cloned().enumerate().collect();
    for step in 0..generation.max_new_tokens {
        if rows.is_empty() {
            break;
        }
        let ids: Vec<Vec<u32>> = rows.iter().map(|(_, ids)| ids.clone()).collect();
        let logits = next.logits(&ids);
        let mut keep = Vec::with_capacity(rows.len());
        for (position, ((index, ids), logits)) in rows.iter_mut().zip(logits).enumerate() {
            let log_probs = log_softmax(&processed(logits, ids, step, generation));
            let token = match &generation.decoding {
                Decoding::Sample {
                    temperature,
                    top_k,
                    top_p,
                    ..
                } => sample(&log_probs, *temperature, *top_k, *top_p, &mut rng),
                _ => argmax(&log_probs),
            };
            ids.push(token as u32);
            out[*index].ids.push(token as u32);
            out[*index].score += log_probs[token];
            let done = token as u32 == generation.end_id;
            if !done {
                keep.push(position);
            }
        }
        if keep.len() < rows.len() {
            let kept: Vec<(usize, Vec<u32>)> = keep.iter().map(|&k| rows[k].clone()).collect();
            rows = kept;
            if !rows.is_empty() {
                next.select(&keep);
            }
        }
    }
    out
}

/// One prompt's beam search: its live beams (ids so far, total log-probability) and finished
/// texts (ids, score), the best `width` of each kept.
struct Beams {
    live: Vec<(Vec<u32>, f32)>,
    finished: Vec<Generated>,
    done: bool,
}

fn beam_search(
    next: &mut dyn NextTokens,
    prompts: &[Vec<u32>],
    generation: &Generation,
    width: usize,
    length_penalty: f32,
) -> Vec<Generated> {
    let prompt_len = prompts.first().map_or(0, Vec::len);
    let score = |log_prob: f32, new_tokens: usize| {
        log_prob / (new_tokens.max(1) as f32).powf(length_penalty)
    };
    // Each prompt starts with one beam: the model's rows are the prompts as given.
    let mut beams: Vec<Beams> = prompts
        .iter()
        .map(|prompt| Beams {
            live: vec![(prompt.clone(), 0.0)],
            finished: Vec::new(),
            done: false,
        })
        .collect();
    for step in 0..generation.max_new_tokens {
        let rows: Vec<Vec<u32>> = beams
            .iter()
            .flat_map(|b| b.live.iter().map(|(ids, _)| ids.clone()))
            .collect();
        if rows.is_empty() {
            break;
        }
        let mut logits = next.logits(&rows).into_iter();
        let mut parents = Vec::new();
        let mut row = 0;
        let last_step = step + 1 == generation.max_new_tokens;
        for item in beams.iter_mut().filter(|b| !b.done) {
            // Every continuation of every live beam, best first.
            let mut candidates: Vec<(f32, usize, usize)> = Vec::new();
            for (beam, (ids, total)) in item.live.iter().enumerate() {
                let Some(logits) = logits.next() else { break };
                let log_probs = log_softmax(&processed(logits, ids, step, generation));
                candidates.extend(
                    log_probs
                        .iter()
                        .enumerate()
                        .filter(|(_, lp)| lp.is_finite())
                        .map(|(token, lp)| (total + lp, beam, token)),
                );
            }
            let keep = (2 * width).min(candidates.len());
            if keep < candidates.len() {
                candidates.select_nth_unstable_by(keep, by_score_desc);
                candidates.truncate(keep);
            }
            candidates.sort_by(by_score_desc);
            let mut live = Vec::with_capacity(width);
            for (rank, &(total, beam, token)) in candidates.iter().enumerate() {
                let mut ids = item.live[beam].0.clone();
                ids.push(token as u32);
                let new_tokens = ids.len() - prompt_len;
                if token as u32 == generation.end_id {
                    // As HF: an end token ranked beyond the beam width does not finish a text.
                    if rank < width {
                        add_finished(
                            &mut item.finished,
                            width,
                            ids,
                            prompt_len,
                            score(total, new_tokens),
                        );
                    }
                } else if live.len() < width {
                    parents.push(row + beam);
                    live.push((ids, total));
                }
                if live.len() == width {
                    break;
                }
            }
            row += item.live.len();
            let continued = live.len();
            if last_step {
                for (ids, total) in live.drain(..) {
                    let new_tokens = ids.len() - prompt_len;
                    add_finished(
                        &mut item.finished,
                        width,
                        ids,
                        prompt_len,
                        score(total, new_tokens),
                    );
                }
            }
            // Done once no live beam can still beat the worst kept text: a beam's total only
            // falls, and its best score is at the length that divides it most kindly.
            let best_live = live
                .iter()
                .map(|(_, t)| *t)
                .fold(f32::NEG_INFINITY, f32::max);
            let new_tokens = step + 1;
            let bound = match length_penalty > 0.0 {
                true => score(best_live, generation.max_new_tokens),
                false => score(best_live, new_tokens + 1),
            };
            let worst = item
                .finished
                .iter()
                .map(|g| g.score)
                .fold(f32::INFINITY, f32::min);
            item.done = live.is_empty() || (item.finished.len() == width && worst >= bound);
            if item.done {
                parents.truncate(parents.len() - continued);
                live.clear();
            }
            item.live = live;
        }
        if parents.is_empty() {
            break;
        }
        next.select(&parents);
    }
    beams
        .into_iter()
        .map(|b| {
            b.finished
                .into_iter()
                .max_by(|a, b| a.score.total_cmp(&b.score))
                .unwrap_or(Generated {
                    ids: Vec::new(),
                    score: f32::NEG_INFINITY,
                })
        })
        .collect()
}

fn by_score_desc(a: &(f32, usize, usize), b: &(f32, usize, usize)) -> Ordering {
    b.0.total_cmp(&a.0)
}

/// Adds a finished text (its new ids), keeping the best `width`.
fn add_finished(
    finished: &mut Vec<Generated>,
    width: usize,
    ids: Vec<u32>,
    prompt_len: usize,
    score: f32,
) {
    finished.push(Generated {
        ids: ids[prompt_len..].to_vec(),
        score,
    });
    if finished.len() > width {
        let worst = finished
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.score.total_cmp(&b.1.score))
            .map(|(i, _)| i)
            .unwrap_or(0);
        finished.swap_remove(worst);
    }
}

/// The logits after the repetition penalty and the minimum length (the end token barred).
fn processed(mut logits: Vec<f32>, ids: &[u32], step: usize, generation: &Generation) -> Vec<f32> {
    let penalty = generation.repetition_penalty;
    if penalty != 1.0 {
        let mut seen = ids.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &id in &seen {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit = if *logit > 0.0 {
                    *logit / penalty
                } else {
                    *logit * penalty
                };
            }
        }
    }
    if step < generation.min_new_tokens
        && let Some(logit) = logits.get_mut(generation.end_id as usize)
    {
        *logit = f32::NEG_INFINITY;
    }
    logits
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_sum = max + sum.ln() as f32;
    logits.iter().map(|&l| l - log_sum).collect()
}

/// The first index of the largest value (NaN never wins).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

/// A draw from `softmax(log_probs / temperature)` restricted to the top `top_k` tokens (0: no
/// limit) and then to the smallest most-probable set whose mass reaches `top_p` (HF's
/// `TopKLogitsWarper` then `TopPLogitsWarper`; at least one token always stays).
fn sample(
    log_probs: &[f32],
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: &mut StdRng,
) -> usize {
    let mut order: Vec<usize> = (0..log_probs.len())
        .filter(|&i| log_probs[i].is_finite())
        .collect();
    order.sort_by(|&a, &b| log_probs[b].total_cmp(&log_probs[a]));
    if top_k > 0 {
        order.truncate(top_k.max(1));
    }
    let scaled: Vec<f32> = order.iter().map(|&i| log_probs[i] / temperature).collect();
    let mut probs: Vec<f64> = log_softmax(&scaled)
        .iter()
        .map(|&l| (l as f64).exp())
        .collect();
    if top_p < 1.0 {
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
        order.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().sum();
    let mut draw = rng.random::<f64>() * total;
    for (i, p) in probs.iter().enumerate() {
        draw -= p;
        if draw <= 0.0 {
            return order[i];
        }
    }
    order.last().copied().unwrap_or(0)
}
