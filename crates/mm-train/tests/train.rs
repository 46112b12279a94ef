mod common;

use burn::tensor::Device;
use mm_data::{ShapesDataset, Split};
use mm_train::{TrainConfig, checkpoint, train};

#[test]
fn a_tiny_run_lowers_the_loss_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 80);
    config.train.checkpoint_every = 20;
    let report = train(&config, false).unwrap();
    assert_eq!(report.losses.len(), 80);
    let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len() as f32;
    let (first, last) = (mean(&report.losses[..5]), mean(&report.losses[75..]));
    // ln(16) = 2.77 is chance on a batch of 16; an untrained model (random embeddings scaled by
    // 1/0.07) starts near it.
    let initial = report.losses[0];
    assert!((initial - 16f32.ln()).abs() < 0.5, "initial loss {initial}");
    assert!(last < first - 0.3, "loss did not fall: {first} -> {last}");
    assert!(report.losses.iter().all(|l| l.is_finite()));

    // Periodic checkpoints at 20, 40, 60, 80; only the newest two are kept.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["step-000060", "step-000080"]);
    assert_eq!(
        report.checkpoint,
        dir.path().join("checkpoints/step-000080")
    );
    // A second run never mixes its checkpoints with the first one's.
    let err = train(&config, false).err().unwrap().to_string();
    assert!(err.contains("holds checkpoints of an earlier run"), "{err}");
    let log = std::fs::read_to_string(dir.path().join("train.log")).unwrap();
    assert!(log.contains("held-out zero-shot top-1"), "{log}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        16
    );
    // TensorBoard event file (read back by TensorBoard itself in scripts/read_tensorboard.py):
    // TFRecord framing, 16 loss points and the eval scalar.
    let events: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(events.len(), 1);
    let bytes = std::fs::read(&events[0]).unwrap();
    let count = |tag: &[u8]| bytes.windows(tag.len()).filter(|w| *w == tag).count();
    assert_eq!(count(b"train/loss"), 16);
    assert!(count(b"eval/shapes/top1") >= 1);
    assert!(count(b"eval/shapes/loss") >= 1);
    let first_record = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(bytes.len() > 16 + first_record, "not TFRecord-framed");
}

#[test]
fn a_checkpoint_reloads_to_identical_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::tiny_config(dir.path(), 10);
    let report = train(&config, false).unwrap();
    let device = Device::flex();
    // A run directory resolves to its latest checkpoint.
    let loaded = checkpoint::load(dir.path(), &device).unwrap();
    assert_eq!(loaded.dir, report.checkpoint);
    assert_eq!(loaded.state.step, 10);
    let again = checkpoint::load(&report.checkpoint, &device).unwrap();

    let size = loaded.model_config.vision.image_size;
    let sample = ShapesDataset::new(0, size as u32).sample(Split::HeldOut, 0);
    let mut pixels = vec![0.0; 3 * size * size];
    mm_data::normalize_into(&sample.image, &mut pixels);
    let pixels = mm_data::pixels_tensor(pixels, size, &device);
    let ctx = loaded.model_config.text.context_length;
    let ids = loaded.tokenizer.encode(&sample.caption, ctx).unwrap();
    let ids = mm_data::token_ids_tensor(&ids, ctx, &device);

    let embed = |m: &mm_encoders::ClipModel| {
        let image = m
            .image_features(pixels.clone())
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let text = m
            .text_features(ids.clone())
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        (image, text)
    };
    assert_eq!(embed(&loaded.model), embed(&again.model));
    // A freshly initialised model differs, so the comparison above is not vacuous.
    let fresh = loaded.model_config.init(&device);
    assert_ne!(embed(&loaded.model).0, embed(&fresh).0);
}

#[test]
fn a_missing_or_incomplete_checkpoint_is_a_clear_error() {
    let device = Device::flex();
    let err = checkpoint::load(std::path::Path::new("/no/such/run"), &device)
        .err()
        .unwrap();
    assert!(err.to_string().contains("/no/such/run"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let config = common::tiny_config(dir.path(), 1);
    let report = train(&config, false).unwrap();
    // A checkpoint trained on a GPU loads in a CPU-only build.
    let config_path = report.checkpoint.join("config.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("device = \"flex\"", "device = \"cuda:1\""),
    )
    .unwrap();
    assert_eq!(
        checkpoint::load(&report.checkpoint, &device)
            .unwrap()
            .train_config
            .unwrap()
            .device,
        "cuda:1"
    );
    std::fs::remove_file(report.checkpoint.join("model.safetensors")).unwrap();
    let err = checkpoint::load(&report.checkpoint, &device).err().unwrap();
    assert!(
        err.to_string().contains("missing model.safetensors"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = toml::to_string(&common::tiny_config(dir.path(), 5)).unwrap();
    let cases = [
        (good.replace("steps = 5", "stepz = 5"), "train.stepz"),
        (good.replace("lr = 0.003", "lr = -1.0"), "optim.lr"),
        (
            good.replace("patch_size = 8", "patch_size = 5"),
            "vision.patch_size",
        ),
        (
            good.replace("[model.vision]\n", "[model.vision]\nwidht = 3\n"),
            "model.vision.widht",
        ),
        (
            good.replace("device = \"flex\"", "device = \"tpu\""),
            "device",
        ),
        (
            good.replace("batch_size = 16", "batch_size = 1"),
            "train.batch_size",
        ),
    ];
    for (text, key) in cases {
        assert_ne!(text, good, "case for {key} did not change the config");
        let err = TrainConfig::from_toml(&text, "run.toml").unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(err.to_string().starts_with("run.toml: key `"), "{err}");
    }
    let preset = "output_dir = \"r\"\nmodel = \"huge\"\n[optim]\nlr = 1e-3\n[train]\nsteps = 1\nbatch_size = 4\n";
    let err = TrainConfig::from_toml(preset, "run.toml").unwrap_err();
    assert_eq!(err.key, "model");
    assert!(err.to_string().contains("unknown preset `huge`"), "{err}");
    let err = TrainConfig::load(std::path::Path::new("no_such_config.toml")).unwrap_err();
    assert!(err.to_string().contains("no_such_config.toml"), "{err}");
}

#[test]
fn shipped_configs_parse() {
    for name in [
        "tiny_shapes.toml",
        "tiny_shards.toml",
        "clip_base.toml",
        "finetune_hf.toml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs")
            .join(name);
        let config = TrainConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        match (&config.model, &config.init_from) {
            (Some(spec), None) => drop(spec.resolve().unwrap()),
            (None, Some(from)) => {
                let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../..")
                    .join(from);
                let device = burn::tensor::Device::flex();
                mm_train::checkpoint::load(&from, &device).unwrap();
            }
            _ => unreachable!("validate() accepts exactly one"),
        }
    }
    let base = TrainConfig::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/clip_base.toml"),
    )
    .unwrap();
    assert_eq!(
        base.model.as_ref().unwrap().resolve().unwrap(),
        mm_encoders::ClipConfig::preset("vit-b-32").unwrap()
    );
}

#[test]
fn a_nan_loss_stops_the_step_and_leaves_the_model_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::tiny_config(dir.path(), 5);
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let mut learner = mm_train::Learner::new(&config, &model_config).unwrap();
    let batcher = mm_data::Batcher::new(
        mm_data::ClipTokenizer::openai(),
        model_config.vision.image_size,
        model_config.text.context_length,
    );
    let mut source =
        ShapesDataset::new(0, model_config.vision.image_size as u32).source(Split::Train, 0);
    let mut batch = batcher.next_batch(&mut source, &mut 0, 8).unwrap().unwrap();
    batch.pixels[0] = f32::NAN;
    let before = learner.model.logit_scale.val().into_data();
    let err = learner.step(&batch, 0).err().unwrap();
    // Steps are counted from 1, as the log counts them.
    assert!(err.to_string().contains("step 1: the loss is NaN"), "{err}");
    assert_eq!(learner.model.logit_scale.val().into_data(), before);
}

/// `train.early_stop_patience`: a run whose selected metric stops improving ends at the
/// evaluation that used up the patience, checkpointed there; configs that could not stop at
/// a checkpoint are errors naming the key.
#[test]
fn early_stopping_ends_a_run_that_stopped_improving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(&dir.path().join("run"), 40);
    config.optim.lr = 1e-12; // the metric cannot move: every evaluation after the first is stale
    config.optim.warmup_steps = 0;
    config.train.eval_every = 4;
    config.train.checkpoint_every = 4;
    config.train.early_stop_patience = 2;
    config.validate("test").unwrap();
    let report = mm_train::train(&config, false).unwrap();
    assert_eq!(
        report.stopped_early,
        Some(12),
        "best at 4, stale at 8 and 12"
    );
    assert_eq!(report.steps, 12);
    assert_eq!(report.losses.len(), 12);
    assert!(
        report.checkpoint.ends_with("step-000012"),
        "{}",
        report.checkpoint.display()
    );
    let log = std::fs::read_to_string(dir.path().join("run/train.log")).unwrap();
    assert!(log.contains("stopping early"), "{log}");

    config.train.checkpoint_every = 3;
    let err = config.validate("run.toml").unwrap_err().to_string();
    assert!(err.contains("key `train.early_stop_patience`"), "{err}");
}
