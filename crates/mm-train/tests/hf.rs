//! Hugging Face CLIP directories end to end: zero-shot on one directly, import -> export
//! round trip, fine-tuning from an import, and refusals that leave nothing behind.

mod common;

use common::mm_train;

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The reference file's metadata entry `key` (a JSON list of strings).
fn metadata_list(bytes: &[u8], key: &str) -> Vec<String> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
    serde_json::from_str(&metadata.metadata().as_ref().unwrap()[key]).unwrap()
}

fn f32_values(st: &SafeTensors, name: &str) -> Vec<f32> {
    let view = st.tensor(name).unwrap();
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn zero_shot_on_an_hf_directory_matches_transformers() {
    // The CLI tokenises, preprocesses and scores on its own; transformers' logits_per_image
    // for the same images and captions give the probabilities it must print.
    let name = "quick_gelu_legacy_eos";
    let bytes = std::fs::read(fixtures().join(format!("{name}.reference.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let captions = metadata_list(&bytes, "captions");
    let images = metadata_list(&bytes, "images");
    let logits = f32_values(&st, "logits_per_image");
    let columns = st.tensor("logits_per_image").unwrap().shape()[1];

    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, captions.join("\n")).unwrap();
    let image_paths: Vec<String> = images
        .iter()
        .map(|i| path(&fixtures().join(format!("images/{i}.png"))).to_string())
        .collect();
    let mut args = vec![
        "zero-shot",
        "--checkpoint",
        path(&fixtures().join(name)).to_string().leak(),
        "--classes-file",
        path(&classes),
        "--template",
        "{}",
        "--top-k",
        "5",
    ];
    args.extend(image_paths.iter().map(String::as_str));
    let (ok, stdout, stderr) = mm_train(&args);
    assert!(ok, "{stderr}");

    let blocks: Vec<&str> = stdout.split_inclusive('\n').collect();
    assert_eq!(
        blocks.len(),
        images.len() * (1 + captions.len()),
        "{stdout}"
    );
    for (i, block) in blocks.chunks(1 + captions.len()).enumerate() {
        let row = &logits[i * columns..i * columns + captions.len()];
        let max = row.iter().cloned().fold(f32::MIN, f32::max);
        let total: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
        for line in &block[1..] {
            let (percent, class) = line.trim().split_once("%  ").unwrap();
            let c = captions.iter().position(|c| c.trim() == class).unwrap();
            let expected = 100.0 * ((row[c] - max) as f64).exp() / total;
            let printed: f64 = percent.trim().parse().unwrap();
            assert!(
                (printed - expected).abs() <= 0.006,
                "{}: {class}: {printed} vs {expected}",
                images[i]
            );
        }
    }
}

/// Every tensor of `a` and `b`: same names, dtypes, shapes and bytes.
fn assert_same_tensors(a: &Path, b: &Path) -> usize {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    let mut other = b.names();
    other.sort();
    assert_eq!(names, other);
    for name in &names {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{name}");
        assert!(x.data() == y.data(), "{name}: bytes differ");
    }
    names.len()
}

#[test]
fn import_then_export_is_bit_identical() {
    let source = fixtures().join("quick_gelu_legacy_eos");
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, exported) = (dir.path().join("ckpt"), dir.path().join("hf"));
    let (ok, stdout, stderr) = mm_train(&["import-hf", path(&source), "--out", path(&ckpt)]);
    assert!(ok && stdout.contains("imported"), "{stderr}");
    let (ok, _, stderr) = mm_train(&["export-hf", path(&ckpt), "--out", path(&exported)]);
    assert!(ok, "{stderr}");

    let count = assert_same_tensors(
        &source.join("model.safetensors"),
        &exported.join("model.safetensors"),
    );
    assert_eq!(count, 78); // every parameter of the 2 + 2 layer model
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    ] {
        assert!(exported.join(file).exists(), "{file} not exported");
    }
    // The export reads back as the same model config and tokenizer.
    let device = burn::tensor::Device::flex();
    let original = mm_train::checkpoint::load(&source, &device).unwrap();
    let again = mm_train::checkpoint::load(&exported, &device).unwrap();
    assert_eq!(original.model_config, again.model_config);
    assert_eq!(again.tokenizer.pad_id(), original.tokenizer.pad_id());
    let text = "Café & crème brûlée 🍮";
    assert_eq!(
        again.tokenizer.encode(text, 77).unwrap(),
        original.tokenizer.encode(text, 77).unwrap()
    );
}

#[test]
fn fine_tuning_starts_from_an_imported_checkpoint_and_the_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("imported");
    mm_train::hf::import(
        &fixtures().join("quick_gelu_legacy_eos"),
        &ckpt,
        &burn::tensor::Device::flex(),
    )
    .unwrap();
    let mut config = common::tiny_config(&dir.path().join("run"), 40);
    config.model = None;
    config.init_from = Some(ckpt.clone());
    config.optim.lr = 2e-3;
    config.validate("test").unwrap();

    // The run starts from the imported weights, not a fresh init.
    let start = mm_train::starting_point(&config).unwrap();
    let imported = mm_train::checkpoint::load(&ckpt, &burn::tensor::Device::flex()).unwrap();
    assert_eq!(start.model_config, imported.model_config);
    assert_eq!(
        start
            .learner
            .model
            .logit_scale
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        imported
            .model
            .logit_scale
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    );

    let report = mm_train::train(&config, false).unwrap();
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (first, last) = (mean(&report.losses[..5]), mean(&report.losses[35..]));
    assert!(last < first - 0.2, "loss {first} -> {last}");
    // Its checkpoints keep the imported shape and say where they started.
    let saved =
        mm_train::checkpoint::load(&report.checkpoint, &burn::tensor::Device::flex()).unwrap();
    assert_eq!(saved.model_config, imported.model_config);
    assert_eq!(saved.train_config.unwrap().init_from, Some(ckpt));
}

#[test]
fn init_from_and_model_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 5);
    config.init_from = Some(dir.path().join("x"));
    let err = config.validate("cfg.toml").unwrap_err().to_string();
    assert!(
        err.contains("cfg.toml: key `init_from`: give either `model`"),
        "{err}"
    );
    config.model = None;
    config.init_from = Some(dir.path().join("missing"));
    let err = format!("{:#}", mm_train::train(&config, false).err().unwrap());
    assert!(
        err.contains("init_from") && err.contains("no such file or directory"),
        "{err}"
    );
}

/// A copy of the legacy fixture with `edit` applied, for bad-input tests.
fn broken_copy(root: &Path, edit: impl Fn(&Path)) -> PathBuf {
    let dir = root.join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join("quick_gelu_legacy_eos")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    edit(&dir);
    dir
}

fn assert_import_refused(root: &Path, source: &Path, needle: &str) {
    let out = root.join("out");
    let (ok, _, stderr) = mm_train(&["import-hf", path(source), "--out", path(&out)]);
    assert!(!ok, "import succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(needle),
        "expected {needle:?}: {stderr}"
    );
    assert!(!out.exists(), "{} was created", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains("tmp")),
        "{leftovers:?}"
    );
}

fn edit_json(file: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(file, json.to_string()).unwrap();
}

fn rewrite_weights(dir: &Path, edit: impl Fn(&str, &mut Vec<usize>, &mut Vec<u8>) -> bool) {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, view) in st.tensors() {
        let (mut shape, mut data) = (view.shape().to_vec(), view.data().to_vec());
        if edit(&name, &mut shape, &mut data) {
            kept.push((name, view.dtype(), shape, data));
        }
    }
    let views: Vec<_> = kept
        .iter()
        .map(|(n, t, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
}

#[test]
fn bad_hf_directories_are_refused_by_name_and_nothing_is_written() {
    type Breakage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breakage)> = vec![
        (
            "key `text_config.hidden_act`: unsupported activation `gelu_new`",
            Box::new(|d| {
                edit_json(&d.join("config.json"), |j| {
                    j["text_config"]["hidden_act"] = "gelu_new".into()
                })
            }),
        ),
        (
            "missing tensor `vision_model.post_layernorm.weight`",
            Box::new(|d| {
                rewrite_weights(d, |name, _, _| name != "vision_model.post_layernorm.weight")
            }),
        ),
        (
            "tensor `text_projection.weight` has shape [23, 8] but config.json implies [24, 8]",
            Box::new(|d| {
                rewrite_weights(d, |name, shape, data| {
                    if name == "text_projection.weight" {
                        shape[0] -= 1; // [24, 8] -> [23, 8]
                        data.truncate(data.len() - 8 * 4);
                    }
                    true
                })
            }),
        ),
        (
            "key `crop_size`",
            Box::new(|d| {
                edit_json(&d.join("processor_config.json"), |j| {
                    j["image_processor"]["crop_size"] =
                        serde_json::json!({"height": 30, "width": 30})
                })
            }),
        ),
        (
            "no tokenizer (neither tokenizer.json nor vocab.json + merges.txt)",
            Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
        ),
        (
            "config.json: No such file",
            Box::new(|d| std::fs::remove_file(d.join("config.json")).unwrap()),
        ),
    ];
    for (needle, edit) in cases {
        let root = tempfile::tempdir().unwrap();
        let source = broken_copy(root.path(), edit);
        assert_import_refused(root.path(), &source, needle);
    }
    // The fixture without a tokenizer (small vocabulary) cannot be imported either.
    let root = tempfile::tempdir().unwrap();
    assert_import_refused(
        root.path(),
        &fixtures().join("gelu_new_eos"),
        "no tokenizer",
    );
}

#[test]
fn existing_outputs_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("taken");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let source = fixtures().join("quick_gelu_legacy_eos");
    for args in [
        ["import-hf", path(&source), "--out", path(&out)],
        ["export-hf", path(&source), "--out", path(&out)],
    ] {
        let (ok, _, stderr) = mm_train(&args);
        assert!(!ok && stderr.contains("already exists"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(out.join("keep.txt")).unwrap(),
            "mine"
        );
    }
}
