//! AdamW with CLIP's parameter groups, the learning-rate schedule and global-norm clipping.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use mm_kernels::FusedAdamW;

use crate::config::OptimConfig;

/// AdamW that decays only matrices: biases, LayerNorm gains, the class embedding and
/// `logit_scale` (every parameter with fewer than 2 dimensions) get no weight decay, as in
/// open_clip. The parameters in `scaled` (e.g. pretrained towers under a new head) learn at
/// `scale` times the schedule's rate.
pub fn clip_adamw<M: Module>(
    config: &OptimConfig,
    model: &M,
    (scaled, scale): (&[ParamId], f64),
) -> ModuleOptimizer {
    let adamw = |weight_decay, scale| {
        FusedAdamW::new(
            config.beta1 as f32,
            config.beta2 as f32,
            config.eps as f32,
            weight_decay,
        )
        .with_lr_scale(scale)
    };
    let no_decay = no_decay_params(model);
    let optimizer = ModuleOptimizer::from(adamw(config.weight_decay, 1.0)).with_group(
        ParamGroup::from_ids(no_decay.clone()),
        adamw(0.0, 1.0),
        None,
    );
    if scaled.is_empty() || scale == 1.0 {
        return optimizer;
    }
    let (scaled_no_decay, scaled_decay): (Vec<ParamId>, Vec<ParamId>) =
        scaled.iter().partition(|id| no_decay.contains(id));
    optimizer
        .with_group(
            ParamGroup::from_ids(scaled_decay),
            adamw(config.weight_decay, scale),
            None,
        )
        .with_group(
            ParamGroup::from_ids(scaled_no_decay),
            adamw(0.0, scale),
            None,
        )
}

/// Ids of every parameter of `model`.
pub fn param_ids<M: Module>(model: &M) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// Ids of parameters with fewer than two dimensions.
pub fn no_decay_params<M: Module>(model: &M) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D < 2 {
                self.0.push(param.id);
            }
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// Linear warm-up to `lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`
/// (open_clip's `cosine_lr`). `step` counts from 0.
pub fn learning_rate(lr: f64, warmup_steps: usize, total_steps: usize, step: usize) -> f64 {
    if step < warmup_steps {
        return lr * (step + 1) as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps).max(1);
    let progress = (step - warmup_steps) as f64 / decay_steps as f64;
    0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()) * lr
}

/// Global L2 norm of all gradients of `model`'s parameters (one host read).
pub fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                let sq = grad.square().sum();
                self.total = Some(match self.total.take() {
                    Some(total) => total + sq,
                    None => sq,
                });
            }
        }
    }
    let mut visitor = SquaredNorm { grads, total: None };
    model.visit(&mut visitor);
    visitor
        .total
        .map(|t| (t.into_scalar::<f32>() as f64).sqrt())
        .unwrap_or(0.0)
}

/// Scales all gradients so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = grad_norm(model, grads);
    if norm > max_norm {
        struct Scale<'a> {
            grads: &'a mut GradientsParams,
            factor: f64,
        }
        impl ModuleVisitor for Scale<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(grad) = self.grads.remove::<D>(param.id) {
                    self.grads.register(param.id, grad.mul_scalar(self.factor));
                }
            }
        }
        model.visit(&mut Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_linearly_then_decays_to_zero() {
        let lr = |step| learning_rate(1.0, 10, 110, step);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.5).abs() < 1e-12);
        assert!(lr(109) < 1e-3 && lr(109) > 0.0);
        assert!((1..110).all(|s| s <= 10 || lr(s) <= lr(s - 1)));
    }
}
