//! Where one mm training step spends its time, phase by phase, on Flex.
//!
//! `cargo bench -p mm-benches --bench step_breakdown [-- bench|vit-b-32]`: image-tower forward,
//! text-tower forward, loss, backward, gradient clipping and the AdamW update, each timed
//! alone (Flex computes eagerly, so each phase's work is done when it returns), as ms per
//! step and share of the step. Prints a table; asserts nothing.

use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use burn::tensor::Device;
use mm_benches::{shape_arg, synthetic_batch, train_config};
use mm_contrastive::clip_loss;
use mm_train::Learner;
use mm_train::optim::clip_grad_norm;

const PHASES: [&str; 6] = [
    "image forward",
    "text forward",
    "loss",
    "backward",
    "clip grad norm",
    "AdamW update",
];

fn main() {
    let shape = shape_arg("bench");
    let (model_config, batch) = mm_benches::shape(&shape);
    let data = synthetic_batch(&model_config, batch);
    let config = train_config(batch);
    let mut learner = Learner::new(&config, &model_config).unwrap();
    let device = Device::flex().autodiff();
    let (warmup, iters) = (3, 10);
    let mut totals = [Duration::ZERO; PHASES.len()];
    for step in 0..warmup + iters {
        let mut times = [Duration::ZERO; PHASES.len()];
        let mut clock = Instant::now();
        let mut lap = |phase: usize| {
            times[phase] = clock.elapsed();
            clock = Instant::now();
        };
        let model = &learner.model;
        let image = model.image_features(data.pixels_tensor(&device));
        let _ = image.clone().into_data(); // already computed: a copy, no work queued
        lap(0);
        let text = model.text_features(data.input_ids_tensor(&device));
        let _ = text.clone().into_data();
        lap(1);
        let loss = clip_loss(image, text, model.logit_scale.val());
        let _ = loss.clone().into_scalar::<f32>();
        lap(2);
        let mut grads = GradientsParams::from_grads(loss.backward(), model);
        lap(3);
        clip_grad_norm(model, &mut grads, 1.0);
        lap(4);
        let model = learner.model.clone();
        learner.model = learner.optim.step(1e-4, model, grads);
        lap(5);
        if step >= warmup {
            for (total, t) in totals.iter_mut().zip(times) {
                *total += t;
            }
        }
    }
    let step_ms: f64 = totals.iter().map(|t| t.as_secs_f64()).sum::<f64>() * 1e3 / iters as f64;
    println!("shape {shape}, batch {batch}, fp32, Flex; mean of {iters} steps");
    for (name, total) in PHASES.iter().zip(totals) {
        let ms = total.as_secs_f64() * 1e3 / iters as f64;
        println!("{name:<16} {ms:>9.1} ms {:>6.1}%", 100.0 * ms / step_ms);
    }
    println!(
        "{:<16} {step_ms:>9.1} ms  ({:.1} samples/s)",
        "step",
        batch as f64 * 1e3 / step_ms
    );
}
