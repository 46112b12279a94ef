//! Train-step samples/s and image-encoder images/s for a preset at batch 64 on Flex.
//!
//! `cargo bench -p mm-benches --bench tiny_throughput [-- PRESET [BATCH]]` (default: tiny 64).
//! Prints numbers; asserts nothing.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use mm_data::DataConfig;
use mm_data::{Batcher, ClipTokenizer, ShapesDataset, Split};
use mm_encoders::ClipConfig;
use mm_train::config::{EvalConfig, ModelSpec, OptimConfig, ScheduleConfig};
use mm_train::{Learner, TrainConfig};

fn main() {
    mm_train::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let preset = args.first().map(String::as_str).unwrap_or("tiny");
    let batch_size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let model_config = ClipConfig::preset(preset).expect("known preset");
    let config = TrainConfig {
        device: "flex".into(),
        seed: 0,
        output_dir: std::env::temp_dir().join("mm-bench"),
        model: Some(ModelSpec::Preset(preset.into())),
        init_from: None,
        objective: Default::default(),
        data: DataConfig::default(),
        optim: OptimConfig {
            lr: 1e-4,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            warmup_steps: 0,
            grad_clip_norm: Some(1.0),
        },
        train: ScheduleConfig {
            steps: 1000,
            batch_size,
            log_every: 10,
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 1,
            accum_freq: 1,
            lock_image: false,
            lock_text: false,
            precision: Default::default(),
            local_loss: false,
            patch_dropout: 0.0,
            grad_checkpointing: false,
            early_stop_patience: 0,
            checksum_every: 0,
            collective_timeout_s: 900,
        },
        eval: EvalConfig::default(),
        fusion: None,
        coca: None,
    };
    let size = model_config.vision.image_size;
    let batcher = Batcher::new(
        ClipTokenizer::openai(),
        size,
        model_config.text.context_length,
    );
    let mut source = ShapesDataset::new(0, size as u32).source(Split::Train, 0);
    let mut position = 0;
    let batch = batcher
        .next_batch(&mut source, &mut position, batch_size)
        .unwrap()
        .unwrap();

    // Data pipeline alone: batches/s of procedural images -> normalised tensors + token ids.
    let (warmup, iters) = (3, 20);
    let start = Instant::now();
    for _ in 0..iters {
        batcher
            .next_batch(&mut source, &mut position, batch_size)
            .unwrap()
            .unwrap();
    }
    let data_rate = (iters * batch_size) as f64 / start.elapsed().as_secs_f64();

    let mut learner = Learner::new(&config, &model_config).unwrap();
    for step in 0..warmup {
        learner.step(&batch, step).unwrap();
    }
    let start = Instant::now();
    for step in 0..iters {
        learner.step(&batch, warmup + step).unwrap();
    }
    let train_rate = (iters * batch_size) as f64 / start.elapsed().as_secs_f64();

    // Forward + backward alone, to show what the optimiser update costs on top.
    let start = Instant::now();
    for _ in 0..iters {
        let _grads = learner.loss(&batch).backward();
    }
    let fwd_bwd_rate = (iters * batch_size) as f64 / start.elapsed().as_secs_f64();

    let device = Device::flex();
    let model = learner.model.valid();
    let pixels = batch.pixels_tensor(&device);
    let ids = batch.input_ids_tensor(&device);
    let rate = |f: &dyn Fn()| {
        for _ in 0..warmup {
            f();
        }
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        (iters * batch_size) as f64 / start.elapsed().as_secs_f64()
    };
    let image_rate = rate(&|| {
        model.image_features(pixels.clone()).into_data();
    });
    let text_rate = rate(&|| {
        model.text_features(ids.clone()).into_data();
    });
    println!(
        "preset {preset}, batch {batch_size}, Flex on {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  train step (fwd+bwd+AdamW): {train_rate:8.1} samples/s  ({:.0} ms/step)",
        1000.0 * batch_size as f64 / train_rate
    );
    println!(
        "  forward + backward only:    {fwd_bwd_rate:8.1} samples/s  ({:.0} ms/step)",
        1000.0 * batch_size as f64 / fwd_bwd_rate
    );
    println!("  image encoder (inference):  {image_rate:8.1} images/s");
    println!("  text encoder (inference):   {text_rate:8.1} texts/s");
    println!(
        "  data pipeline (shapes):     {data_rate:8.1} samples/s ({:.1}x the train step)",
        data_rate / train_rate
    );
}
