//! Where one mm training step spends its time, phase by phase, on Flex.
//!
//! `cargo bench -p mm-benches --bench step_breakdown [-- bench|vit-b-32] [--precision bf16]`
//! (bf16: the GEMMs in bf16, as `precision = "bf16"` trains on Flex): image-tower forward,
//! text-tower forward, loss, backward, gradient clipping and the AdamW update, each timed
//! alone (Flex computes eagerly, so each phase's work is done when it returns), as the median
//! ms per step over 15 steps (this 2-core VM's timings vary by ~10% run to run) and share of
//! the step. Prints a table; asserts nothing.

use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use burn::tensor::Device;
use mm_benches::{flag_value, shape_arg, synthetic_batch, train_config};
use mm_contrastive::clip_loss;
use mm_encoders::{MatmulPrecision, set_matmul_precision};
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
    mm_train::allocator::keep_freed_memory();
    let shape = shape_arg("bench");
    let precision = flag_value("--precision").unwrap_or_else(|| "fp32".into());
    let _scope = set_matmul_precision(match precision.as_str() {
        "fp32" => MatmulPrecision::Fp32,
        "bf16" => MatmulPrecision::Bf16,
        other => panic!("--precision {other}: fp32 or bf16"),
    });
    let (model_config, batch) = mm_benches::shape(&shape);
    let data = synthetic_batch(&model_config, batch);
    let config = train_config(batch);
    let mut learner = Learner::new(&config, &model_config).unwrap();
    let device = Device::flex().autodiff();
    let (warmup, iters) = (3, 15);
    let mut samples: Vec<[Duration; PHASES.len()]> = Vec::new();
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
            samples.push(times);
        }
    }
    let median_ms = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2] * 1e3
    };
    let mut steps: Vec<f64> = samples
        .iter()
        .map(|t| t.iter().map(Duration::as_secs_f64).sum())
        .collect();
    let step_ms = median_ms(&mut steps);
    println!("shape {shape}, batch {batch}, {precision}, Flex; median of {iters} steps");
    for (phase, name) in PHASES.iter().enumerate() {
        let mut times: Vec<f64> = samples.iter().map(|t| t[phase].as_secs_f64()).collect();
        let ms = median_ms(&mut times);
        println!("{name:<16} {ms:>9.1} ms {:>6.1}%", 100.0 * ms / step_ms);
    }
    println!(
        "{:<16} {step_ms:>9.1} ms  ({:.1} samples/s)",
        "step",
        batch as f64 * 1e3 / step_ms
    );
}
