//! The operator that merges two modalities' [`Features`] into one vector.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::attention::CoAttention;
use super::concat::concat;
use super::gated::GatedUnit;
use super::product::product;
use super::sum::WeightedSum;
use super::{Features, FusionOperator};

/// One [`FusionOperator`] with its parameters (only the operator's own are present).
#[derive(Module, Debug)]
pub struct Merge {
    pub sum: Option<WeightedSum>,
    pub gated: Option<GatedUnit>,
    pub attention: Option<CoAttention>,
    #[module(skip)]
    pub operator: FusionOperator,
}

impl Merge {
    /// `operator` on `width`-wide features; `alpha` / `learn_alpha` for the sum, `heads` for
    /// attention.
    pub fn new(
        operator: FusionOperator,
        width: usize,
        (alpha, learn_alpha): (f64, bool),
        heads: usize,
        device: &Device,
    ) -> Self {
        use FusionOperator::*;
        Self {
            sum: (operator == Sum).then(|| WeightedSum::new(alpha, learn_alpha, device)),
            gated: (operator == Gated).then(|| GatedUnit::new(width, device)),
            attention: (operator == Attention).then(|| CoAttention::new(width, heads, device)),
            operator,
        }
    }

    /// The merged vector's width for `width`-wide inputs.
    pub fn output_width(operator: FusionOperator, width: usize) -> usize {
        match operator {
            FusionOperator::Concat | FusionOperator::Attention => 2 * width,
            FusionOperator::Sum | FusionOperator::Product | FusionOperator::Gated => width,
        }
    }

    /// `[batch, output_width]`.
    pub fn forward(&self, image: &Features, text: &Features) -> Tensor<2> {
        let (a, b) = (image.pooled.clone(), text.pooled.clone());
        let present = "Merge::new builds the operator's module";
        match self.operator {
            FusionOperator::Sum => self.sum.as_ref().expect(present).forward(a, b),
            FusionOperator::Concat => concat(a, b),
            FusionOperator::Product => product(a, b),
            FusionOperator::Gated => self.gated.as_ref().expect(present).forward(a, b),
            FusionOperator::Attention => {
                self.attention.as_ref().expect(present).forward(image, text)
            }
        }
    }
}
