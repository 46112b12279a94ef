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

/// With patch dropout, each micro-batch keeps the same patches when it is re-encoded for its
/// backward pass: the accumulated gradient equals one graph over all micro-batches' features,
/// each from the patches its seed keeps. Dropout changes the gradient, the same batch gives
/// the same one twice, and out-of-range shares are errors naming the key.
#[test]
fn patch_dropout_keeps_each_batchs_patches_through_accumulation() {
    use burn::optim::GradientsParams;
    use burn::tensor::Tensor;
    use mm_encoders::PatchDropout;
    use mm_train::task::StepOptions;

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 1);
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let plain = Learner::new(&config, &model_config).unwrap();
    config.train.patch_dropout = 0.5;
    config.validate("test").unwrap();
    let learner = Learner::from_model(&config, plain.model.clone());
    let big = common::shapes_batches(&model_config, 1).remove(0);
    let micro: Vec<ClipBatch> = (0..2)
        .map(|i| ClipBatch {
            stream_position: i as u64,
            ..common::rows_of(&big, 8 * i..8 * (i + 1))
        })
        .collect();

    let (loss, grads) = learner.gradients(&micro).unwrap();
    let options = StepOptions {
        local_loss: false,
        patch_dropout: PatchDropout::new(0.5).unwrap(),
        seed: config.seed,
        ..Default::default()
    };
    let model = &learner.model;
    let device = model.logit_scale.val().device();
    let patches = model.vision_model.num_patches();
    let (mut image, mut text) = (Vec::new(), Vec::new());
    for batch in &micro {
        let seed = options.patch_seed(0, batch);
        let kept = PatchDropout::new(0.5).unwrap().unwrap().sample(
            batch.batch_size,
            patches,
            seed,
            &device,
        );
        assert_eq!(kept.dims(), [8, patches / 2]);
        image.push(model.image_features_kept(batch.pixels_tensor(&device), Some(kept)));
        text.push(model.text_features(batch.input_ids_tensor(&device)));
    }
    let by_hand = mm_contrastive::clip_loss(
        Tensor::cat(image, 0),
        Tensor::cat(text, 0),
        model.logit_scale.val(),
    );
    assert!((by_hand.clone().into_scalar::<f32>() - loss).abs() < 1e-5);
    let want = GradientsParams::from_grads(by_hand.backward(), model);
    let (worst, scale) = common::compare_grads(model, &want, &grads);
    println!("patch dropout through accumulation: {worst:.2e} (largest {scale:.2e})");
    assert!(worst <= 1e-5, "accumulated gradients differ by {worst}");

    let (_, again) = learner.gradients(&micro).unwrap();
    assert_eq!(common::compare_grads(model, &grads, &again).0, 0.0);
    let (_, full) = plain.gradients(&micro).unwrap();
    assert!(
        common::compare_grads(model, &grads, &full).0 > 1e-4,
        "dropout changed nothing"
    );

    for bad in [1.0, -0.1, f64::NAN] {
        config.train.patch_dropout = bad;
        let err = config.validate("run.toml").unwrap_err().to_string();
        assert!(err.contains("key `train.patch_dropout`"), "{err}");
    }
}

/// `train.grad_checkpointing` recomputes each block during the backward pass: a step's loss and
/// gradients are the plain ones, with accumulation (features cached, then re-encoded) and patch
/// dropout too.
#[test]
fn grad_checkpointing_gives_the_plain_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 1);
    config.train.patch_dropout = 0.5;
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let plain = Learner::new(&config, &model_config).unwrap();
    config.train.grad_checkpointing = true;
    let checkpointed = Learner::from_model(&config, plain.model.clone());
    assert!(checkpointed.model.vision_model.encoder.grad_checkpointing);
    assert!(checkpointed.model.text_model.encoder.grad_checkpointing);

    let big = common::shapes_batches(&model_config, 1).remove(0);
    let micro: Vec<ClipBatch> = (0..2)
        .map(|i| common::rows_of(&big, 8 * i..8 * (i + 1)))
        .collect();
    for batches in [vec![big], micro] {
        let (loss_plain, grads_plain) = plain.gradients(&batches).unwrap();
        let (loss, grads) = checkpointed.gradients(&batches).unwrap();
        assert!((loss_plain - loss).abs() < 1e-6, "{loss_plain} vs {loss}");
        let (worst, scale) = common::compare_grads(&plain.model, &grads_plain, &grads);
        println!(
            "{} micro-batches: max |plain - checkpointed| = {worst:.2e} (largest {scale:.2e})",
            batches.len()
        );
        assert!(
            worst <= 1e-5 * scale.max(1.0),
            "gradients differ by {worst}"
        );
    }
}
