//! Patch dropout (FLIP, Li et al. 2023; open_clip's `PatchDropout`): during training each image
//! keeps a random share of its patch tokens (the class token always), so the image tower's
//! cost falls with the tokens dropped. Evaluation keeps every patch.
//!
//! The kept patches are drawn on the host from a seed, not from the device's generator, so
//! that the same batch keeps the same patches when it is encoded twice (feature-cached
//! accumulation) and after a resume.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The share of patches to drop, in `[0, 1)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchDropout {
    prob: f64,
}

impl PatchDropout {
    /// Dropping the share `prob` of the patches: `None` for 0 (nothing dropped), an error
    /// outside `[0, 1)`.
    pub fn new(prob: f64) -> Result<Option<Self>, String> {
        if !(0.0..1.0).contains(&prob) {
            return Err(format!(
                "patch dropout must be a share of patches in [0, 1), got {prob}"
            ));
        }
        Ok((prob > 0.0).then_some(Self { prob }))
    }

    /// Patches kept of `patches`: `max(1, ⌊patches · (1 - prob)⌋)`, as open_clip.
    pub fn kept(&self, patches: usize) -> usize {
        ((patches as f64 * (1.0 - self.prob)) as usize).clamp(1, patches.max(1))
    }

    /// `[batch, kept]` indices of the patches each image keeps (0-based among the patches,
    /// ascending), drawn from `seed`.
    pub fn sample(
        &self,
        batch: usize,
        patches: usize,
        seed: u64,
        device: &Device,
    ) -> Tensor<2, Int> {
        let kept = self.kept(patches);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut indices = Vec::with_capacity(batch * kept);
        for _ in 0..batch {
            let mut row = rand::seq::index::sample(&mut rng, patches, kept).into_vec();
            row.sort_unstable();
            indices.extend(row.into_iter().map(|i| i as i64));
        }
        Tensor::from_data(TensorData::new(indices, [batch, kept]), device)
    }
}

/// `tokens` (`[batch, 1 + patches, width]`, class token first) with only the class token and
/// the patches at `kept` (`[batch, k]`): `[batch, 1 + k, width]`.
pub fn keep_patches(tokens: Tensor<3>, kept: Tensor<2, Int>) -> Tensor<3> {
    let [batch, seq, width] = tokens.dims();
    let k = kept.dims()[1];
    let class = tokens.clone().slice([0..batch, 0..1, 0..width]);
    let patches = tokens.slice([0..batch, 1..seq, 0..width]);
    let index = kept.unsqueeze_dim::<3>(2).expand([batch, k, width]);
    Tensor::cat(vec![class, patches.gather(1, index)], 1)
}
