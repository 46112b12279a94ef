//! A config small enough to train in seconds in tests.

use std::path::Path;

use mm_train::TrainConfig;

#[allow(dead_code)] // Not every test binary builds configs in-process.
pub fn tiny_config(output_dir: &Path, steps: usize) -> TrainConfig {
    TrainConfig::from_toml(&tiny_toml(output_dir, steps), "test config").unwrap()
}

/// The TOML text of [`tiny_config`], for tests that edit it or hand it to the binary.
#[allow(dead_code)] // Not every test binary edits configs.
pub fn tiny_toml(output_dir: &Path, steps: usize) -> String {
    format!(
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
    )
}

/// [`tiny_toml`] as a CoCa run: CoCa's towers (attentional pooler, text class token padded
/// with id 0) and a one-layer caption decoder.
#[allow(dead_code)]
pub fn coca_toml(output_dir: &Path, steps: usize) -> String {
    tiny_toml(output_dir, steps)
        .replace("[model.vision]", "[model.vision]\nattentional_pool = true\nattn_pooler_queries = 5\nattn_pooler_heads = 2")
        .replace("[model.text]", "[model.text]\nembed_cls = true\npad_id = 0")
        .replace(
            "[data]",
            "[model.multimodal]\ncontext_length = 12\nvocab_size = 49408\nwidth = 32\nlayers = 1\nheads = 2\nintermediate_size = 64\n[data]",
        )
        .replace("seed = 3", "seed = 3\nobjective = \"coca\"")
}

/// Runs the `mm-train` binary: (success, stdout, stderr).
#[allow(dead_code)] // Not every test binary runs the CLI.
pub fn mm_train(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mm-train"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `n` successive batches of 16 training pictures of the built-in data (seed 5), preprocessed
/// for `model` (texts padded with its pad id if it is a CoCa, as a run pads them).
#[allow(dead_code)]
pub fn shapes_batches(model: &mm_encoders::ClipConfig, n: usize) -> Vec<mm_data::ClipBatch> {
    let size = model.vision.image_size;
    let tokenizer = match model.multimodal {
        Some(_) => mm_data::ClipTokenizer::openai()
            .with_pad_id(model.text.pad_id)
            .unwrap(),
        None => mm_data::ClipTokenizer::openai(),
    };
    let batcher = mm_data::Batcher::new(tokenizer, size, model.text.context_length);
    let mut source = mm_data::ShapesDataset::new(5, size as u32).source(mm_data::Split::Train, 0);
    let mut position = 0;
    (0..n)
        .map(|_| {
            batcher
                .next_batch(&mut source, &mut position, 16)
                .unwrap()
                .unwrap()
        })
        .collect()
}

/// Saves held-out picture 1 of the built-in data (seed 9) at `size` px as a PNG at `path`.
#[allow(dead_code)]
pub fn save_shape(path: &Path, size: u32) {
    mm_data::ShapesDataset::new(9, size)
        .sample(mm_data::Split::HeldOut, 1)
        .image
        .save(path)
        .unwrap();
}

/// The percentages `mm-train zero-shot` prints (its indented lines), in order.
#[allow(dead_code)]
pub fn printed_probabilities(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().split('%').next().unwrap().trim().parse().unwrap())
        .collect()
}

/// Every tensor of a safetensors file as (name, raw bytes), sorted by name: equal lists mean
/// bit-identical weights.
#[allow(dead_code)]
pub fn safetensors_tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    tensors.sort();
    tensors
}

/// Rows `rows` of a batch, as a batch.
#[allow(dead_code)]
pub fn rows_of(batch: &mm_data::ClipBatch, rows: std::ops::Range<usize>) -> mm_data::ClipBatch {
    batch.select_rows(&rows.collect::<Vec<_>>())
}

/// Largest |a - b| over every parameter's gradient, and the largest |a|.
#[allow(dead_code)]
pub fn compare_grads(
    model: &impl burn::module::Module,
    a: &burn::optim::GradientsParams,
    b: &burn::optim::GradientsParams,
) -> (f32, f32) {
    struct Diff<'a> {
        a: &'a burn::optim::GradientsParams,
        b: &'a burn::optim::GradientsParams,
        worst: f32,
        scale: f32,
        count: usize,
    }
    impl burn::module::ModuleVisitor for Diff<'_> {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            let (x, y) = match (self.a.get::<D>(param.id), self.b.get::<D>(param.id)) {
                (Some(x), Some(y)) => (x, y),
                (None, None) => return, // e.g. a classifier's unused temperature
                _ => panic!("a parameter has a gradient on one side only"),
            };
            self.count += 1;
            let diff = (x.clone() - y).abs().max().into_scalar::<f32>();
            self.worst = self.worst.max(diff);
            self.scale = self.scale.max(x.abs().max().into_scalar::<f32>());
        }
    }
    let mut diff = Diff {
        a,
        b,
        worst: 0.0,
        scale: 0.0,
        count: 0,
    };
    model.visit(&mut diff);
    assert!(diff.count > 30, "only {} parameters compared", diff.count);
    (diff.worst, diff.scale)
}

/// The weights of `run`'s checkpoint at `step`, as [`safetensors_tensors`].
#[allow(dead_code)]
pub fn final_tensors(run: &Path, step: usize) -> Vec<(String, Vec<u8>)> {
    safetensors_tensors(&run.join(format!("checkpoints/step-{step:06}/model.safetensors")))
}

/// The step of `run`'s newest checkpoint, once it has one.
#[allow(dead_code)]
pub fn latest_step(run: &Path) -> Option<usize> {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    name.trim().strip_prefix("step-")?.parse().ok()
}

/// Runs the binary on `config_file` (a run into `run`) and kills it (SIGKILL) once it has
/// checkpointed step `step` or later; returns the step of its newest checkpoint.
#[allow(dead_code)]
pub fn kill_after_checkpoint(config_file: &Path, run: &Path, step: usize) -> usize {
    use std::time::{Duration, Instant};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mm-train"))
        .args(["--config", config_file.to_str().unwrap(), "--no-progress"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while latest_step(run).is_none_or(|s| s < step) {
        assert!(
            Instant::now() < deadline,
            "the child never reached step {step}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited early"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    latest_step(run).unwrap()
}
