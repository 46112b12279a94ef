//! Late (decision) fusion: a classifier per modality, their decisions merged by the operator.
//!
//! With `p`, `q` the two heads' class probabilities and `a`, `b` their pooled features:
//! - sum: the mixture `α p + (1-α) q` (α fixed or learned);
//! - product: the normalised product of experts `p^α q^(1-α) / Z`;
//! - concat: a linear layer over both heads' logits (stacking);
//! - gated: the mixture `z p + (1-z) q` with `z = sigmoid(w · [a; b])` per input;
//! - attention: the mixture weighted by `softmax(score(a), score(b))` per input.
//!
//! The output is log-probabilities, so cross-entropy on it (which applies `log_softmax`,
//! leaving normalised log-probabilities unchanged) trains every variant alike.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Device, Tensor};

use super::concat::concat;
use super::head::Head;
use super::sum::WeightedSum;
use super::{Features, FusionOperator};
use crate::ops;
use crate::transformer::linear;

#[derive(Module, Debug)]
pub struct LateFusion {
    pub image_head: Head,
    pub text_head: Head,
    /// Sum and product: the image side's weight.
    pub sum: Option<WeightedSum>,
    /// Concat: classes from both heads' logits.
    pub stack: Option<Linear>,
    /// Gated: the image side's weight from both features.
    pub gate: Option<Linear>,
    /// Attention: each side's score from its features.
    pub score: Option<Linear>,
    #[module(skip)]
    pub operator: FusionOperator,
}

impl LateFusion {
    /// Heads on `width`-wide pooled features.
    pub fn new(
        operator: FusionOperator,
        width: usize,
        (hidden, classes): (usize, usize),
        (alpha, learn_alpha): (f64, bool),
        device: &Device,
    ) -> Self {
        use FusionOperator::*;
        let std = |fan_in: usize| (fan_in as f64).powf(-0.5);
        Self {
            image_head: Head::new(width, hidden, classes, device),
            text_head: Head::new(width, hidden, classes, device),
            sum: matches!(operator, Sum | Product)
                .then(|| WeightedSum::new(alpha, learn_alpha, device)),
            stack: (operator == Concat)
                .then(|| linear(2 * classes, classes, std(2 * classes), true, device)),
            gate: (operator == Gated).then(|| linear(2 * width, 1, std(2 * width), true, device)),
            score: (operator == Attention).then(|| linear(width, 1, std(width), true, device)),
            operator,
        }
    }

    /// `[batch, classes]` log-probabilities.
    pub fn forward(&self, image: &Features, text: &Features) -> Tensor<2> {
        let (a, b) = (image.pooled.clone(), text.pooled.clone());
        let (image_logits, text_logits) = (
            self.image_head.forward(a.clone()),
            self.text_head.forward(b.clone()),
        );
        let (p, q) = (
            log_softmax(image_logits.clone(), 1),
            log_softmax(text_logits.clone(), 1),
        );
        let present = "LateFusion::new builds the operator's parameters";
        match self.operator {
            FusionOperator::Sum => {
                let alpha = self.sum.as_ref().expect(present).alpha(&p.device());
                let log_alpha = alpha.clone().log().reshape([1, 1]);
                let log_beta = alpha.neg().add_scalar(1.0).log().reshape([1, 1]);
                mixture(p + log_alpha, q + log_beta)
            }
            FusionOperator::Product => {
                log_softmax(self.sum.as_ref().expect(present).forward(p, q), 1)
            }
            FusionOperator::Concat => {
                let stack = self.stack.as_ref().expect(present);
                log_softmax(
                    ops::linear_rows(stack, concat(image_logits, text_logits)),
                    1,
                )
            }
            FusionOperator::Gated => {
                let logit = ops::linear_rows(self.gate.as_ref().expect(present), concat(a, b));
                mixture(p + log_sigmoid(logit.clone()), q + log_sigmoid(logit.neg()))
            }
            FusionOperator::Attention => {
                let score = self.score.as_ref().expect(present);
                let scores = concat(ops::linear_rows(score, a), ops::linear_rows(score, b));
                let weights = log_softmax(scores, 1);
                let [batch, _] = weights.dims();
                let weight = |i: usize| weights.clone().slice([0..batch, i..i + 1]);
                mixture(p + weight(0), q + weight(1))
            }
        }
    }
}

/// `log(exp(x) + exp(y))` element-wise, stably: the log of a two-part mixture whose parts'
/// logs (weight included) are `x` and `y`.
fn mixture(x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let max = x.clone().max_pair(y.clone()).detach();
    let sum = (x - max.clone()).exp() + (y - max.clone()).exp();
    sum.log() + max
}
