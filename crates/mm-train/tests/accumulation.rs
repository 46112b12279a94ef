//! Gradient accumulation with cached features (open_clip's `accum_freq`) gives the gradient of
//! the one big batch.

mod common;

use mm_data::ClipBatch;
use mm_train::Learner;
use mm_train::task::Objective;

#[test]
fn accumulated_micro_batches_give_the_big_batch_gradient() {
    for objective in [Objective::Clip, Objective::Siglip] {
        accumulation_is_exact(objective);
    }
}

fn accumulation_is_exact(objective: Objective) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 1);
    config.objective = objective;
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let learner = Learner::new(&config, &model_config).unwrap();
    assert_eq!(
        learner.model.logit_bias.is_some(),
        objective == Objective::Siglip
    );
    let big = common::shapes_batches(&model_config, 1).remove(0);
    let micro: Vec<ClipBatch> = (0..4)
        .map(|i| common::rows_of(&big, 4 * i..4 * (i + 1)))
        .collect();

    let (loss_big, grads_big) = learner.gradients(std::slice::from_ref(&big)).unwrap();
    let (loss_acc, grads_acc) = learner.gradients(&micro).unwrap();
    assert!(
        (loss_big - loss_acc).abs() < 1e-5,
        "{loss_big} vs {loss_acc}"
    );
    let (worst, scale) = common::compare_grads(&learner.model, &grads_big, &grads_acc);
    println!(
        "{objective:?}: max |grad(16) - grad(4 x 4)| = {worst:.2e} (largest gradient {scale:.2e})"
    );
    assert!(
        worst <= 1e-5,
        "{objective:?}: accumulated gradients differ by {worst}"
    );

    // Control: summing four independent 4-sample losses (negatives only within each
    // micro-batch) is a different gradient, and the comparison sees it.
    let mut naive = burn::optim::GradientsAccumulator::<mm_encoders::ClipModel>::new();
    for batch in &micro {
        naive.accumulate(
            &learner.model,
            learner.gradients(std::slice::from_ref(batch)).unwrap().1,
        );
    }
    let (worst_naive, _) = common::compare_grads(&learner.model, &grads_big, &naive.grads());
    assert!(
        worst_naive > 1e-3,
        "{objective:?}: the control should differ, got {worst_naive}"
    );
}

#[test]
fn a_locked_image_tower_does_not_move() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 3);
    config.train.lock_image = true;
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let mut learner = Learner::new(&config, &model_config).unwrap();
    let snapshot = |model: &mm_encoders::ClipModel| {
        (
            model.vision_model.encoder.layers[0]
                .mlp
                .fc1
                .weight
                .val()
                .into_data(),
            model.visual_projection.weight.val().into_data(),
            model.text_model.encoder.layers[0]
                .mlp
                .fc1
                .weight
                .val()
                .into_data(),
        )
    };
    let before = snapshot(&learner.model);
    for (step, batch) in common::shapes_batches(&model_config, 3).iter().enumerate() {
        learner.step(batch, step).unwrap();
    }
    let after = snapshot(&learner.model);
    assert_eq!(before.0, after.0, "locked vision weights moved");
    assert_eq!(before.1, after.1, "locked visual projection moved");
    assert_ne!(before.2, after.2, "the text tower should train");

    config.train.lock_text = true;
    let err = config.validate("run.toml").unwrap_err().to_string();
    assert!(err.contains("key `train.lock_text`"), "{err}");
}

#[test]
fn bf16_steps_keep_fp32_master_weights_and_track_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 20);
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let batches = common::shapes_batches(&model_config, 20);

    let fp32 = Learner::new(&config, &model_config).unwrap();
    config.train.precision = mm_train::precision::Precision::Bf16;
    config.validate("test").unwrap();
    // The same model (weights and parameter ids) trained in bf16: gradients approximate fp32's.
    let mut bf16 = Learner::from_model(&config, fp32.model.clone());
    let (loss32, grads32) = fp32.gradients(std::slice::from_ref(&batches[0])).unwrap();
    let (loss16, grads16) = bf16.gradients(std::slice::from_ref(&batches[0])).unwrap();
    assert!((loss32 - loss16).abs() < 0.05, "{loss32} vs {loss16}");
    let (worst, scale) = common::compare_grads(&fp32.model, &grads32, &grads16);
    println!(
        "bf16 vs fp32: loss {loss16} vs {loss32}; max gradient difference {worst:.3e} (largest {scale:.3e})"
    );
    assert!(
        worst < 0.05 * scale,
        "bf16 gradients off by {worst} (scale {scale})"
    );

    let mut losses = Vec::new();
    for (step, batch) in batches.iter().enumerate() {
        losses.push(bf16.step(batch, step).unwrap().loss);
    }
    let dtype = bf16.model.text_model.encoder.layers[0]
        .mlp
        .fc1
        .weight
        .val()
        .dtype();
    assert_eq!(dtype, burn::tensor::DType::F32, "master weights stay fp32");
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    println!(
        "bf16 losses: {:.3} (first 5) -> {:.3} (last 5)",
        mean(&losses[..5]),
        mean(&losses[15..])
    );
    assert!(mean(&losses[15..]) < mean(&losses[..5]) - 0.2, "{losses:?}");
}
