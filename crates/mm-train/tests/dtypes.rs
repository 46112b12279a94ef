//! Weights in any float dtype load, and half precision runs every command.
//!
//! Published checkpoints are often fp16 or bf16 (sometimes f64): mm's own, HF and open_clip
//! directories whose tensors are all f16, bf16 or f64 load converted to f32, giving the very
//! model an f32 file of the same values gives; an integer tensor where a weight belongs is
//! refused by name. Training and inference in `fp16` work for every objective.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData, bf16, f16};
use mm_encoders::{ClipConfig, ClipModel, CocaModel};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Copies directory `from` to `to` (files only, one level).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Rewrites every f32 tensor of every safetensors file in `dir` as `dtype`; with `as_f32`,
/// keeps f32 but with the values rounded through `dtype` (what the `dtype` file must load as).
fn rewrite(dir: &Path, dtype: Dtype, as_f32: bool) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                tensors.push((
                    name,
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ));
                continue;
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            let data: Vec<u8> = match (dtype, as_f32) {
                (Dtype::F16, false) => values
                    .flat_map(|v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                (Dtype::BF16, false) => values
                    .flat_map(|v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
                (Dtype::F64, false) => values.flat_map(|v| (v as f64).to_le_bytes()).collect(),
                (Dtype::F16, true) => values
                    .flat_map(|v| f16::from_f32(v).to_f32().to_le_bytes())
                    .collect(),
                (Dtype::BF16, true) => values
                    .flat_map(|v| bf16::from_f32(v).to_f32().to_le_bytes())
                    .collect(),
                (Dtype::F64, true) => values.flat_map(|v| v.to_le_bytes()).collect(),
                (Dtype::I64, _) => values.flat_map(|v| (v as i64).to_le_bytes()).collect(),
                other => panic!("{other:?}"),
            };
            let out = if as_f32 { Dtype::F32 } else { dtype };
            tensors.push((name, out, view.shape().to_vec(), data));
        }
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (
                    name.clone(),
                    TensorView::new(*dtype, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        let out = safetensors::serialize(views, metadata.metadata().clone()).unwrap();
        std::fs::write(&path, out).unwrap();
    }
}

/// The image and text features and (a CoCa's) caption logits of checkpoint `dir` (loaded as
/// every command loads one) on fixed inputs: every tensor of the model takes part.
fn outputs(dir: &Path) -> Vec<Vec<f32>> {
    let ckpt = mm_train::checkpoint::load(dir, &Device::flex()).unwrap_or_else(|e| panic!("{e:#}"));
    match ckpt.captioner() {
        Some(coca) => coca_outputs(&coca, &ckpt.model_config),
        None => clip_outputs(&ckpt.model, &ckpt.model_config),
    }
}

/// [`outputs`] of an open_clip directory through mm-encoders' loader (its fixtures' tiny
/// vocabularies fit no real tokenizer, which `checkpoint::load` insists on).
fn open_clip_outputs(dir: &Path) -> Vec<Vec<f32>> {
    let (config, coca) =
        mm_encoders::open_clip::load_coca(dir, &Device::flex()).unwrap_or_else(|e| panic!("{e:#}"));
    coca_outputs(&coca, &config)
}

fn inputs(config: &ClipConfig) -> (Tensor<4>, Tensor<2, Int>) {
    let device = Device::flex();
    let size = config.vision.image_size;
    let values: Vec<f32> = (0..2 * 3 * size * size)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let pixels = Tensor::from_data(TensorData::new(values, [2, 3, size, size]), &device);
    let context = config.text.context_length;
    let vocab = config.text.vocab_size as i64;
    let ids: Vec<i64> = (0..2 * context as i64)
        .map(|i| (i * 7) % (vocab - 1) + 1)
        .collect();
    let ids = Tensor::from_data(TensorData::new(ids, [2, context]), &device);
    (pixels, ids)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn clip_outputs(model: &ClipModel, config: &ClipConfig) -> Vec<Vec<f32>> {
    let (pixels, ids) = inputs(config);
    vec![
        values(model.image_features(pixels)),
        values(model.text_features(ids)),
    ]
}

fn coca_outputs(coca: &CocaModel, config: &ClipConfig) -> Vec<Vec<f32>> {
    let (pixels, ids) = inputs(config);
    let out = coca.forward(pixels, ids);
    vec![
        values(out.image_features),
        values(out.text_features),
        values(out.logits),
    ]
}

/// For each dtype: `source` rewritten in it loads as the f32 file of the same values does.
fn assert_every_dtype_loads(name: &str, source: &Path, outputs: fn(&Path) -> Vec<Vec<f32>>) {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F64] {
        let (converted, rounded) = (
            dir.path().join(format!("{dtype:?}")),
            dir.path().join(format!("{dtype:?}-as-f32")),
        );
        copy_dir(source, &converted);
        copy_dir(source, &rounded);
        rewrite(&converted, dtype, false);
        rewrite(&rounded, dtype, true);
        assert_eq!(
            outputs(&converted),
            outputs(&rounded),
            "{name}: the {dtype:?} checkpoint loads as another model"
        );
    }
    // A weight stored as integers is no weight: refused, naming the tensor.
    let ints = dir.path().join("ints");
    copy_dir(source, &ints);
    rewrite(&ints, Dtype::I64, false);
    let err = std::panic::catch_unwind(|| outputs(&ints))
        .err()
        .unwrap_or_else(|| panic!("{name}: integer weights loaded"));
    let err = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        err.contains("dtype") || err.contains("DType"),
        "{name}: {err}"
    );
}

#[test]
fn checkpoints_of_every_float_dtype_load_as_f32() {
    assert_every_dtype_loads(
        "HF CLIP",
        &fixtures().join("hf/quick_gelu_legacy_eos"),
        outputs,
    );
    assert_every_dtype_loads(
        "open_clip CoCa",
        &fixtures().join("open_clip/coca_packed_kv"),
        open_clip_outputs,
    );
    // mm's own, with a caption decoder and a classifier's fusion weights beside the towers.
    let runs = tempfile::tempdir().unwrap();
    let coca = runs.path().join("coca");
    let text = common::coca_toml(&coca, 2);
    let config = mm_train::TrainConfig::from_toml(&text, "coca").unwrap();
    mm_train::train(&config, false).unwrap();
    assert_every_dtype_loads("mm CoCa", &coca.join("checkpoints/step-000002"), outputs);
}

#[test]
fn every_objective_trains_and_every_command_runs_in_fp16() {
    let runs = tempfile::tempdir().unwrap();
    let examples = fixtures().join("../assets/examples");
    let images: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let classes = fixtures().join("../assets/shapes_classes.txt");
    for (name, extra) in [
        ("clip", ""),
        ("coca", "coca"),
        ("siglip", "objective = \"siglip\"\n"),
        (
            "classify",
            "objective = \"classify\"\n[fusion]\nstage = \"mid\"\noperator = \"attention\"\nheads = 2\nhead_hidden = 16\n",
        ),
    ] {
        let run = runs.path().join(name);
        let text = match extra {
            "coca" => common::coca_toml(&run, 3),
            _ => common::tiny_toml(&run, 3),
        }
        .replace("[train]", "[train]\nprecision = \"fp16\"");
        let text = match extra.split_once("[fusion]") {
            Some((top, fusion)) => format!("{top}{text}\n[fusion]{fusion}"),
            None if extra == "coca" => text,
            None => format!("{extra}{text}"),
        };
        let config = mm_train::TrainConfig::from_toml(&text, name).unwrap();
        let report = mm_train::train(&config, false).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(report.losses.iter().all(|l| l.is_finite()), "{name}");
        let run_s = run.to_str().unwrap();
        let mut zero_shot = vec![
            "zero-shot",
            "--checkpoint",
            run_s,
            "--precision",
            "fp16",
            "--classes-file",
            classes.to_str().unwrap(),
        ];
        zero_shot.extend(images.iter().map(String::as_str));
        let (ok, _, stderr) = common::mm_train(&zero_shot);
        assert!(ok, "{name}: zero-shot in fp16: {stderr}");
        let out = runs.path().join(format!("{name}-eval.json"));
        let (ok, _, stderr) = common::mm_train(&[
            "eval",
            "--checkpoint",
            run_s,
            "--precision",
            "fp16",
            "--samples",
            "48",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{name}: eval in fp16: {stderr}");
        // The commands of a classifier and of a CoCa, in fp16 too.
        let image = images[0].as_str();
        let own: Option<Vec<&str>> = match name {
            "classify" => Some(vec!["predict", "--text", "a red circle", image]),
            "coca" => Some(vec!["caption", image]),
            _ => None,
        };
        if let Some(mut args) = own {
            args.extend(["--checkpoint", run_s, "--precision", "fp16"]);
            let (ok, stdout, stderr) = common::mm_train(&args);
            assert!(
                ok && !stdout.is_empty(),
                "{name}: {} in fp16: {stderr}",
                args[0]
            );
        }
    }
}
