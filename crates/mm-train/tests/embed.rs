//! `mm-train embed`: every usable image embedded once, in source order, with its key, equal to
//! the model's own features; bad files skipped and counted; a killed run resumes to the same
//! bytes; outputs never overwritten and parts never mixed across commands.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use common::mm_train;
use mm_data::{Batcher, Captions, FolderSource, TrainTransform};

/// `n` pictures of the built-in data under `dir` (half in a subfolder), plus junk: a corrupt
/// PNG and a file that is not an image.
fn picture_folder(dir: &Path, n: usize) -> PathBuf {
    let root = dir.join("images");
    std::fs::create_dir_all(root.join("more")).unwrap();
    let data = mm_data::ShapesDataset::new(3, 40);
    for i in 0..n {
        let sub = if i % 2 == 0 { "" } else { "more" };
        let path = root.join(sub).join(format!("{i:05}.png"));
        data.sample(mm_data::Split::HeldOut, i as u64)
            .image
            .save(path)
            .unwrap();
    }
    std::fs::write(root.join("broken.png"), b"\x89PNG not really").unwrap();
    std::fs::write(root.join("notes.md"), b"not an image").unwrap();
    root
}

/// `mm-train embed` of `images` with `run`'s checkpoint into `out`, and `extra` arguments.
fn embed_args(run: &Path, images: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let paths = [run, images, out].map(|p| p.to_str().unwrap().to_string());
    let [run, images, out] = paths;
    let mut args: Vec<String> = ["embed", "--checkpoint", &run, &images, "--out", &out]
        .map(String::from)
        .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn embed(args: &[String]) -> (bool, String, String) {
    mm_train(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), values)
}

fn keys(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn embed_writes_each_images_key_and_the_models_normalised_features() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    mm_train::train(&common::tiny_config(&run, 2), false).unwrap();
    let images = picture_folder(dir.path(), 37);
    let out = dir.path().join("emb.safetensors");
    let extra = ["--batch-size", "8", "--part-samples", "10", "--no-progress"];
    let (ok, stdout, stderr) = embed(&embed_args(&run, &images, &out, &extra));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("37 samples x") && stdout.contains("1 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bad_image: 1") && stdout.contains("broken.png"),
        "{stdout}"
    );
    assert!(
        !dir.path().join("emb.safetensors.parts").exists(),
        "parts are removed"
    );

    let device = Device::flex();
    let ckpt = mm_train::checkpoint::load(&run, &device).unwrap();
    let (shape, values) = tensor(&out, "image_embeds");
    assert_eq!(shape, [37, ckpt.model_config.embed_dim]);
    let written_keys = keys(&dir.path().join("emb.keys.jsonl"));

    // The same images through the model directly, in one batch.
    let (size, context) = (
        ckpt.model_config.vision.image_size,
        ckpt.model_config.text.context_length,
    );
    let batcher = Batcher::new(ckpt.tokenizer.clone(), size, context)
        .with_transform(TrainTransform::CenterCrop, 0);
    let mut source = FolderSource::open_with(&images, Captions::Optional).unwrap();
    let batch = batcher
        .next_batch_or_rest(&mut source, &mut 0, 100)
        .unwrap()
        .unwrap();
    assert_eq!(
        batch.batch_size, 37,
        "the last samples come as a smaller batch"
    );
    assert_eq!(written_keys, batch.keys);
    assert!(written_keys[0].ends_with("00000.png"));
    let want =
        mm_contrastive::l2_normalize(ckpt.model.image_features(batch.pixels_tensor(&device)))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
    let worst = values
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        worst < 1e-5,
        "embeddings differ from the model's by {worst}"
    );

    // Outputs are never overwritten; the name says the format.
    let (ok, _, stderr) = embed(&embed_args(&run, &images, &out, &[]));
    assert!(!ok && stderr.contains("exists"), "{stderr}");
    let txt = dir.path().join("emb.txt");
    let (ok, _, stderr) = embed(&embed_args(&run, &images, &txt, &[]));
    assert!(!ok && stderr.contains(".safetensors or .npy"), "{stderr}");
    // Captions are needed to embed them: a folder without .txt files has none.
    let text = dir.path().join("text.npy");
    let (ok, _, stderr) = embed(&embed_args(&run, &images, &text, &["--modality", "text"]));
    assert!(!ok && stderr.contains("missing_caption"), "{stderr}");
}

#[test]
fn a_killed_embed_resumes_to_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    mm_train::train(&common::tiny_config(&run, 2), false).unwrap();
    let images = picture_folder(dir.path(), 1200);
    let extra = ["--batch-size", "2", "--part-samples", "4", "--no-progress"];
    let args = |out: &Path| embed_args(&run, &images, out, &extra);
    let whole = dir.path().join("whole.npy");
    let (ok, _, stderr) = embed(&args(&whole));
    assert!(ok, "{stderr}");

    let cut = dir.path().join("cut.npy");
    let state = dir.path().join("cut.npy.parts/state.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mm-train"))
        .args(args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !state.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no part written");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!cut.exists(), "a killed run leaves no output");

    // Another command does not mix into these parts.
    let mut other = args(&cut);
    other.push("--no-normalize".into());
    let (ok, _, stderr) = embed(&other);
    assert!(!ok && stderr.contains("another embed command"), "{stderr}");

    // The run trains on: `--checkpoint RUN` now names a newer model. The resumed embed keeps
    // the one it started with, so no output mixes rows of two models.
    mm_train::train_from(&common::tiny_config(&run, 4), false, Some(&run)).unwrap();
    assert_eq!(common::latest_step(&run), Some(4));
    let (ok, _, stderr) = embed(&args(&cut));
    assert!(ok, "{stderr}");
    assert!(stderr.contains("continuing from"), "{stderr}");
    assert!(stderr.contains("step-000002"), "{stderr}");
    assert_eq!(std::fs::read(&cut).unwrap(), std::fs::read(&whole).unwrap());
    assert_eq!(
        keys(&dir.path().join("cut.keys.jsonl")),
        keys(&dir.path().join("whole.keys.jsonl"))
    );
    assert_eq!(keys(&dir.path().join("whole.keys.jsonl")).len(), 1200);
}

#[test]
fn embed_touches_nothing_beside_its_output_and_runs_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    mm_train::train(&common::tiny_config(&run, 1), false).unwrap();
    let images = picture_folder(dir.path(), 6);
    let extra = ["--no-progress"];

    // Files of the user's that happen to bear the names of temporaries stay as they were.
    let out = dir.path().join("x.NPY");
    let mine = [dir.path().join("x.tmp"), dir.path().join("x.keys.tmp")];
    for file in &mine {
        std::fs::write(file, b"the user's").unwrap();
    }
    let (ok, _, stderr) = embed(&embed_args(&run, &images, &out, &extra));
    assert!(ok, "{stderr}");
    for file in &mine {
        assert_eq!(
            std::fs::read(file).unwrap(),
            b"the user's",
            "{}",
            file.display()
        );
    }
    // An upper-case extension is the format all the same.
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"), "not an .npy file");
    assert!(!dir.path().join("x.NPY.parts").exists());

    // A second embed into an output another one is writing is refused, not interleaved.
    let busy = dir.path().join("busy.safetensors");
    let parts = dir.path().join("busy.safetensors.parts");
    std::fs::create_dir(&parts).unwrap();
    let lock = std::fs::File::create(parts.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let (ok, _, stderr) = embed(&embed_args(&run, &images, &busy, &extra));
    assert!(
        !ok && stderr.contains("in use by another mm-train embed"),
        "{stderr}"
    );
    assert!(!busy.exists());
    drop(lock);
    let (ok, _, stderr) = embed(&embed_args(&run, &images, &busy, &extra));
    assert!(ok, "{stderr}");
    let bytes = std::fs::read(&busy).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes);
    assert!(file.is_ok(), "{:?}", file.err());
}
