//! A config small enough to train in seconds in tests.

use std::path::Path;

use mm_train::TrainConfig;

pub fn tiny_config(output_dir: &Path, steps: usize) -> TrainConfig {
    let text = format!(
        r#"
        seed = 3
        output_dir = "{}"
        [model]
        embed_dim = 32
        [model.vision]
        image_size = 16
        patch_size = 8
        width = 32
        layers = 1
        heads = 2
        intermediate_size = 64
        [model.text]
        context_length = 12
        vocab_size = 49408
        width = 32
        layers = 1
        heads = 2
        intermediate_size = 64
        [data]
        train_transform = "center_crop"
        [optim]
        lr = 3e-3
        warmup_steps = 2
        grad_clip_norm = 1.0
        [train]
        steps = {steps}
        batch_size = 16
        log_every = 5
        checkpoint_every = 10
        keep_checkpoints = 2
        [eval]
        heldout_samples = 48
        "#,
        output_dir.display()
    );
    TrainConfig::from_toml(&text, "test config").unwrap()
}
