//! Parity with Hugging Face transformers' `CLIPModel` on the reference fixtures made by
//! `scripts/make_hf_fixtures.py`, and the config mapping's refusals.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use mm_encoders::hf;
use mm_encoders::{Activation, ClipModel};
use safetensors::{Dtype, SafeTensors};

const MODELS: [&str; 2] = ["quick_gelu_legacy_eos", "gelu_new_eos"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf")
}

/// A reference tensor as (shape, f32 or i64-as-f64 values).
fn reference(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f64>) {
    let view = st.tensor(name).unwrap();
    let values = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I64 => view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (view.shape().to_vec(), values)
}

fn max_abs_diff(ours: Tensor<2>, theirs: &(Vec<usize>, Vec<f64>)) -> f64 {
    assert_eq!(ours.dims().to_vec(), theirs.0);
    let ours = ours.into_data().try_into_vec_as::<f32>().unwrap();
    ours.iter()
        .zip(&theirs.1)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

fn logits_per_image(model: &ClipModel, image: Tensor<2>, text: Tensor<2>) -> Tensor<2> {
    mm_contrastive::clip_logits(image, text, model.logit_scale.val()).logits_per_image
}

#[test]
fn embeddings_and_logits_match_transformers() {
    let device = Device::flex();
    for name in MODELS {
        let (config, model) = hf::load(&fixtures().join(name), &device).unwrap();
        let bytes =
            std::fs::read(fixtures().join(format!("{name}.reference.safetensors"))).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();

        let (shape, pixels) = reference(&st, "pixel_values");
        let pixels: Vec<f32> = pixels.iter().map(|&v| v as f32).collect();
        let pixels = Tensor::<4>::from_data(TensorData::new(pixels, shape), &device);
        let (shape, ids) = reference(&st, "input_ids");
        let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device);

        let image = model.image_features(pixels);
        let text = model.text_features(ids);
        let errors = [
            max_abs_diff(image.clone(), &reference(&st, "image_features")),
            max_abs_diff(text.clone(), &reference(&st, "text_features")),
            max_abs_diff(
                logits_per_image(&model, image, text),
                &reference(&st, "logits_per_image"),
            ),
        ];
        println!(
            "{name}: max |mm - transformers| image {:.2e} text {:.2e} logits {:.2e}",
            errors[0], errors[1], errors[2]
        );
        for (what, err) in ["image features", "text features", "logits"]
            .iter()
            .zip(errors)
        {
            assert!(
                err <= 1e-4,
                "{name}: {what} differ from transformers by {err}"
            );
        }
        // The two fixtures exercise both activations and both pooling rules.
        let legacy = config.text.eos_token_id == hf::LEGACY_EOS_TOKEN_ID;
        assert_eq!(legacy, name == "quick_gelu_legacy_eos");
        assert_eq!(config.text.activation == Activation::QuickGelu, legacy);
    }
}

#[test]
fn config_maps_every_hf_field() {
    let config = hf::read_config(&fixtures().join("gelu_new_eos")).unwrap();
    let (v, t) = (&config.vision, &config.text);
    assert_eq!(config.embed_dim, 16);
    assert!((config.logit_scale_init - 2.3).abs() < 1e-12);
    assert_eq!(
        (
            v.image_size,
            v.patch_size,
            v.width,
            v.layers,
            v.heads,
            v.intermediate_size
        ),
        (40, 10, 48, 3, 3, 96)
    );
    assert_eq!(
        (
            t.context_length,
            t.vocab_size,
            t.width,
            t.layers,
            t.heads,
            t.intermediate_size
        ),
        (24, 1000, 32, 3, 4, 80)
    );
    assert_eq!(
        (v.activation, t.activation),
        (Activation::Gelu, Activation::Gelu)
    );
    assert_eq!((v.layer_norm_eps, t.layer_norm_eps), (1e-6, 1e-6));
    assert_eq!(t.eos_token_id, 7);

    // mm -> HF -> mm is the identity.
    let json = hf::config_to_hf(&config, 5, 7);
    assert_eq!(hf::config_from_hf(&json, "round trip").unwrap(), config);
}

/// An HF config.json with one field replaced, read back through `read_config`'s mapping.
fn config_error(section: &str, key: &str, value: serde_json::Value) -> String {
    let path = fixtures().join("quick_gelu_legacy_eos/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let target = if section.is_empty() {
        &mut json
    } else {
        &mut json[section]
    };
    target[key] = value;
    hf::config_from_hf(&json, "dir/config.json")
        .unwrap_err()
        .to_string()
}

#[test]
fn unsupported_config_values_are_refused_by_key() {
    use serde_json::json;
    let cases = [
        (
            "text_config",
            "hidden_act",
            json!("gelu_new"),
            "key `text_config.hidden_act`: unsupported activation `gelu_new`",
        ),
        (
            "vision_config",
            "hidden_act",
            json!("relu"),
            "key `vision_config.hidden_act`: unsupported activation `relu`",
        ),
        (
            "vision_config",
            "num_channels",
            json!(4),
            "key `vision_config.num_channels`: 4: only RGB",
        ),
        (
            "vision_config",
            "image_size",
            json!([32, 48]),
            "key `vision_config.image_size`",
        ),
        (
            "vision_config",
            "patch_size",
            json!(7),
            "key `vision_config.patch_size`: must divide",
        ),
        (
            "text_config",
            "num_attention_heads",
            json!(3),
            "key `text_config.num_attention_heads`: must divide",
        ),
        (
            "text_config",
            "hidden_size",
            json!("wide"),
            "key `text_config.hidden_size`: expected a non-negative integer",
        ),
        (
            "text_config",
            "eos_token_id",
            json!(50000),
            "key `text_config.eos_token_id`: must be below",
        ),
        (
            "",
            "model_type",
            json!("siglip"),
            "key `model_type`: `siglip` is not a CLIP model",
        ),
        (
            "",
            "architectures",
            json!(["CLIPVisionModel"]),
            "key `architectures`",
        ),
    ];
    for (section, key, value, expected) in cases {
        let message = config_error(section, key, value);
        assert!(message.starts_with("dir/config.json: "), "{message}");
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
}

/// Copies a fixture with its weights rewritten by `edit` (name, shape, bytes -> keep?) plus
/// `extra` zero tensors, and returns the error that loading it gives.
fn weights_error(
    edit: impl Fn(&str, &mut Vec<usize>, &mut Vec<u8>) -> bool,
    extra: &[(&str, usize)],
) -> String {
    let source = fixtures().join("quick_gelu_legacy_eos");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let (mut shape, mut data) = (view.shape().to_vec(), view.data().to_vec());
        if edit(&name, &mut shape, &mut data) {
            tensors.push((name, shape, data));
        }
    }
    for (name, len) in extra {
        tensors.push((name.to_string(), vec![*len], vec![0; 4 * len]));
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, d)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), d).unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    match hf::load(dir.path(), &Device::flex()) {
        Ok(_) => panic!("the edited weights loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_weights_are_refused_naming_the_tensor() {
    let dropped = "text_model.encoder.layers.1.mlp.fc2.bias";
    let missing = weights_error(|name, _, _| name != dropped, &[]);
    assert!(
        missing.contains(&format!("model.safetensors: missing tensor `{dropped}`")),
        "{missing}"
    );

    let wrong_shape = weights_error(
        |name, shape, data| {
            if name == "vision_model.embeddings.class_embedding" {
                shape[0] -= 1;
                data.truncate(data.len() - 4);
            }
            true
        },
        &[],
    );
    assert!(
        wrong_shape.contains("vision_model.embeddings.class_embedding"),
        "{wrong_shape}"
    );
    assert!(
        wrong_shape.contains("has shape [31] but config.json implies [32]"),
        "{wrong_shape}"
    );

    let unexpected = weights_error(|_, _, _| true, &[("text_model.pooler.bias", 8)]);
    assert!(
        unexpected.contains("unexpected tensor `text_model.pooler.bias`"),
        "{unexpected}"
    );
}

#[test]
fn saved_buffers_are_not_unexpected() {
    // Older HF checkpoints also store the `position_ids` buffers; they load.
    let source = fixtures().join("quick_gelu_legacy_eos");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
    let mut views: Vec<_> = st.tensors();
    views.push((
        "text_model.embeddings.position_ids".into(),
        safetensors::tensor::TensorView::new(Dtype::I64, vec![1, 77], &ids).unwrap(),
    ));
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    hf::load(dir.path(), &Device::flex()).unwrap();
}

#[test]
fn weights_round_trip_bit_identical() {
    for name in MODELS {
        let source = fixtures().join(name).join("model.safetensors");
        let (_, model) = hf::load(&fixtures().join(name), &Device::flex()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.safetensors");
        hf::save_weights(&model, &out).unwrap();
        let (a, b) = (
            std::fs::read(&source).unwrap(),
            std::fs::read(&out).unwrap(),
        );
        let (a, b) = (
            SafeTensors::deserialize(&a).unwrap(),
            SafeTensors::deserialize(&b).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{name}");
        for (tensor, view) in a.tensors() {
            let ours = b.tensor(&tensor).unwrap();
            assert_eq!(
                (view.dtype(), view.shape()),
                (ours.dtype(), ours.shape()),
                "{name}: {tensor}"
            );
            assert!(view.data() == ours.data(), "{name}: {tensor} bytes differ");
        }
        // transformers only reads safetensors files that say they are PyTorch's.
        let (_, metadata) = SafeTensors::read_metadata(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");
    }
}
