//! `objective = "siglip"`: a run trains SigLIP's bias and temperature and checkpoints them,
//! zero-shot reads sigmoid probabilities, fine-tuning a CLIP checkpoint adds the bias, and
//! what cannot hold a bias (the softmax loss, HF's CLIPModel) refuses it by name.

mod common;

use burn::tensor::Device;
use mm_contrastive::{SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT};
use mm_train::task::Objective;

fn scalar(t: burn::tensor::Tensor<1>) -> f32 {
    t.into_data().try_into_vec_as::<f32>().unwrap()[0]
}

#[test]
fn a_siglip_run_learns_and_checkpoints_its_bias() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut config = common::tiny_config(&run, 40);
    config.objective = Objective::Siglip;
    let report = mm_train::train(&config, false).unwrap();
    let (first, last) = (&report.losses[..5], &report.losses[35..]);
    let mean = |x: &[f32]| x.iter().sum::<f32>() / x.len() as f32;
    assert!(mean(last) < mean(first) - 0.5, "{first:?} -> {last:?}");

    let ckpt = mm_train::checkpoint::load(&run, &Device::flex()).unwrap();
    assert_eq!(
        ckpt.model_config.logit_bias_init,
        Some(SIGLIP_LOGIT_BIAS_INIT)
    );
    assert_eq!(ckpt.model_config.logit_scale_init, SIGLIP_LOGIT_SCALE_INIT);
    let bias = scalar(ckpt.model.logit_bias.as_ref().unwrap().val());
    assert!(
        bias != SIGLIP_LOGIT_BIAS_INIT as f32 && bias.is_finite(),
        "{bias}"
    );

    // Zero-shot probabilities are per pair (sigmoid), not a softmax over the classes.
    let image = dir.path().join("x.png");
    common::save_shape(&image, 16);
    let (ok, stdout, stderr) = common::mm_train(&[
        "zero-shot",
        "--checkpoint",
        run.to_str().unwrap(),
        "--classes",
        "red circle,blue square,green star",
        image.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let probs = common::printed_probabilities(&stdout);
    assert_eq!(probs.len(), 3);
    assert!(probs.iter().all(|p| (0.0..=100.0).contains(p)), "{stdout}");
    assert!(
        (probs.iter().sum::<f64>() - 100.0).abs() > 0.1,
        "a softmax? {stdout}"
    );

    // HF's CLIPModel has no logit_bias: the export says so and writes nothing.
    let out = dir.path().join("hf");
    let err = mm_train::hf::export(&run, &out, &Device::flex())
        .err()
        .expect("export refused");
    assert!(format!("{err:#}").contains("logit_bias"), "{err:#}");
    assert!(!out.exists());

    // The softmax loss cannot train a bias: resuming or fine-tuning with it is refused.
    let mut clip = common::tiny_config(&dir.path().join("clip"), 2);
    clip.model = None;
    clip.init_from = Some(run.clone());
    let err = mm_train::train(&clip, false).unwrap_err();
    assert!(
        format!("{err:#}").contains("objective = \"siglip\""),
        "{err:#}"
    );
}

#[test]
fn fine_tuning_a_clip_checkpoint_with_the_sigmoid_loss_adds_the_bias() {
    let dir = tempfile::tempdir().unwrap();
    let clip_run = dir.path().join("clip");
    mm_train::train(&common::tiny_config(&clip_run, 2), false).unwrap();
    let mut config = common::tiny_config(&dir.path().join("siglip"), 2);
    config.model = None;
    config.init_from = Some(clip_run);
    config.objective = Objective::Siglip;
    let start = mm_train::starting_point(&config).unwrap();
    let bias = start.learner.model.logit_bias.as_ref().unwrap().val();
    assert_eq!(scalar(bias), SIGLIP_LOGIT_BIAS_INIT as f32);
    assert_eq!(
        start.model_config.logit_bias_init,
        Some(SIGLIP_LOGIT_BIAS_INIT)
    );
}

#[test]
fn a_bias_without_the_sigmoid_loss_is_a_config_error() {
    let text = common::tiny_toml(std::path::Path::new("run"), 2).replacen(
        "embed_dim = 32",
        "embed_dim = 32\nlogit_bias_init = -10.0",
        1,
    );
    let err = mm_train::TrainConfig::from_toml(&text, "run.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run.toml: key `model.logit_bias_init`") && err.contains("siglip"),
        "{err}"
    );
    let text = text.replacen("seed = 3", "seed = 3\nobjective = \"siglip\"", 1);
    assert!(mm_train::TrainConfig::from_toml(&text, "run.toml").is_ok());
    let text = text.replacen("objective = \"siglip\"", "objective = \"sigmoid\"", 1);
    let err = mm_train::TrainConfig::from_toml(&text, "run.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("key `objective`"), "{err}");
}
