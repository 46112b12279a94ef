//! Output shapes, causal masking, end-of-text pooling and HF parameter names.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mm_encoders::{ClipConfig, eot_index, from_toml_str};

fn small_config() -> ClipConfig {
    from_toml_str(
        r#"
        embed_dim = 16
        [vision]
        image_size = 32
        patch_size = 8
        width = 24
        layers = 2
        heads = 3
        intermediate_size = 48
        [text]
        context_length = 10
        vocab_size = 100
        width = 16
        layers = 2
        heads = 2
        intermediate_size = 32
        activation = "gelu"
        eos_token_id = 99
        "#,
        "test config",
    )
    .unwrap()
}

fn ids(rows: &[[i64; 10]], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 10]), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

#[test]
fn towers_produce_the_documented_shapes() {
    let device = Device::flex();
    let config = small_config();
    let model = config.init(&device);
    let vision = model
        .vision_model
        .forward(Tensor::zeros([3, 3, 32, 32], &device));
    assert_eq!(vision.last_hidden_state.dims(), [3, 17, 24]); // 16 patches + class token
    assert_eq!(vision.pooled.dims(), [3, 24]);
    let text = model.text_model.forward(ids(&[[5; 10], [6; 10]], &device));
    assert_eq!(text.last_hidden_state.dims(), [2, 10, 16]);
    assert_eq!(text.pooled.dims(), [2, 16]);
    assert_eq!(
        model
            .image_features(Tensor::zeros([3, 3, 32, 32], &device))
            .dims(),
        [3, 16]
    );
    assert_eq!(
        model.text_features(ids(&[[5; 10]], &device)).dims(),
        [1, 16]
    );
}

#[test]
fn text_attention_is_causal() {
    let device = Device::flex();
    let model = small_config().init(&device);
    let a = [1, 2, 3, 4, 99, 7, 8, 9, 10, 11];
    let mut b = a;
    b[6] = 50; // change a later token
    b[9] = 51;
    let out = model
        .text_model
        .forward(ids(&[a, b], &device))
        .last_hidden_state;
    let hidden = values(out);
    let (row, width) = (10 * 16, 16);
    for pos in 0..10 {
        let diff: f32 = (0..width)
            .map(|k| (hidden[pos * width + k] - hidden[row + pos * width + k]).abs())
            .fold(0.0, f32::max);
        if pos < 6 {
            assert!(
                diff < 1e-6,
                "position {pos} changed by {diff} after editing position 6"
            );
        } else {
            assert!(diff > 1e-4, "position {pos} should see the edit");
        }
    }
}

#[test]
fn text_features_are_pooled_at_the_first_end_token() {
    let device = Device::flex();
    let model = small_config().init(&device);
    let rows = [
        [1, 2, 99, 99, 99, 99, 99, 99, 99, 99],
        [1, 2, 3, 4, 5, 99, 99, 99, 99, 99],
    ];
    let eot = eot_index(ids(&rows, &device), 99)
        .into_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    assert_eq!(eot, vec![2, 5]);
    let text = model.text_model.forward(ids(&rows, &device));
    let hidden = values(text.last_hidden_state);
    let pooled = values(text.pooled);
    assert_eq!(&pooled[..16], &hidden[2 * 16..3 * 16]);
    assert_eq!(&pooled[16..], &hidden[10 * 16 + 5 * 16..10 * 16 + 6 * 16]);
    // Padding after the end token does not change the features.
    let repadded = [[1, 2, 99, 0, 0, 0, 0, 0, 0, 0], rows[1]];
    let again = values(model.text_model.forward(ids(&repadded, &device)).pooled);
    for (x, y) in pooled.iter().zip(&again) {
        assert!((x - y).abs() < 1e-6);
    }
}

#[test]
fn image_tower_sees_every_patch() {
    let device = Device::flex();
    let model = small_config().init(&device);
    let blank = Tensor::<4>::zeros([1, 3, 32, 32], &device);
    let mut corner = vec![0.0f32; 3 * 32 * 32];
    corner[32 * 32 - 1] = 1.0; // the bottom-right pixel of the red channel
    let corner = Tensor::from_data(TensorData::new(corner, [1, 3, 32, 32]), &device);
    let a = values(model.image_features(blank));
    let b = values(model.image_features(corner));
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-5));
}

#[test]
fn parameter_names_and_shapes_follow_hf_clip() {
    struct Names(Vec<(String, Vec<usize>)>, Vec<String>);
    impl ModuleVisitor for Names {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self
                .1
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(".");
            self.0.push((path, param.val().dims().to_vec()));
        }
    }
    let device = Device::flex();
    let config = small_config();
    let model = config.init(&device);
    let mut names = Names(Vec::new(), Vec::new());
    model.visit(&mut names);
    let find = |name: &str| {
        names
            .0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    };
    for (name, shape) in [
        (
            "text_model.embeddings.token_embedding.weight",
            vec![100, 16],
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            vec![10, 16],
        ),
        (
            "text_model.encoder.layers.1.self_attn.q_proj.weight",
            vec![16, 16],
        ),
        ("text_model.encoder.layers.0.mlp.fc1.weight", vec![16, 32]),
        ("text_model.encoder.layers.0.layer_norm1.gamma", vec![16]),
        ("text_model.final_layer_norm.beta", vec![16]),
        ("vision_model.embeddings.class_embedding", vec![24]),
        (
            "vision_model.embeddings.patch_embedding.weight",
            vec![24, 3, 8, 8],
        ),
        (
            "vision_model.embeddings.position_embedding.weight",
            vec![17, 24],
        ),
        ("vision_model.pre_layrnorm.gamma", vec![24]),
        ("vision_model.post_layernorm.gamma", vec![24]),
        (
            "vision_model.encoder.layers.1.self_attn.out_proj.bias",
            vec![24],
        ),
        ("visual_projection.weight", vec![24, 16]),
        ("text_projection.weight", vec![16, 16]),
        ("logit_scale", vec![1]),
    ] {
        assert_eq!(find(name), Some(shape), "{name}");
    }
    assert!(find("visual_projection.bias").is_none());
    assert!(find("vision_model.embeddings.patch_embedding.bias").is_none());
}

#[test]
fn presets_parse_and_vit_b_32_has_openai_sizes() {
    let b32 = ClipConfig::preset("vit-b-32").unwrap();
    assert_eq!(
        (
            b32.vision.image_size,
            b32.vision.patch_size,
            b32.vision.width
        ),
        (224, 32, 768)
    );
    assert_eq!((b32.vision.layers, b32.vision.heads), (12, 12));
    assert_eq!(
        (b32.text.width, b32.text.layers, b32.text.heads),
        (512, 12, 8)
    );
    assert_eq!(
        (b32.text.context_length, b32.text.vocab_size, b32.embed_dim),
        (77, 49408, 512)
    );
    assert!(ClipConfig::preset("tiny").is_ok());
    let err = ClipConfig::preset("vit-h-14").unwrap_err().to_string();
    assert!(
        err.contains("vit-h-14") && err.contains("vit-b-32"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let base = toml_of(&small_config());
    let cases = [
        (
            base.replace("patch_size = 8", "patch_sise = 8"),
            "vision.patch_sise",
        ),
        (base.replace("heads = 2", "heads = \"two\""), "text.heads"),
        (
            base.replace("activation = \"gelu\"", "activation = \"relu\""),
            "text.activation",
        ),
        (format!("colour = 1\n{base}"), "colour"),
    ];
    for (text, key) in cases {
        let err = from_toml_str::<ClipConfig>(&text, "my.toml").unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(err.to_string().starts_with("my.toml: key `"), "{err}");
    }
    let mut bad = small_config();
    bad.vision.patch_size = 7;
    let err = bad.validate("my.toml").unwrap_err();
    assert_eq!(err.key, "vision.patch_size");
    bad = small_config();
    bad.text.heads = 3;
    assert_eq!(bad.validate("my.toml").unwrap_err().key, "text.heads");
}

fn toml_of(config: &ClipConfig) -> String {
    toml::to_string(config).unwrap()
}

#[test]
fn patch_embedding_is_a_per_patch_linear_map() {
    let device = Device::flex();
    let config = small_config();
    let model = config.init(&device);
    let embeddings = &model.vision_model.embeddings;
    let pixels: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let tokens = values(embeddings.forward(Tensor::from_data(
        TensorData::new(pixels.clone(), [1, 3, 32, 32]),
        &device,
    )));
    let weight = values(embeddings.patch_embedding.weight.val()); // [24, 3, 8, 8]
    let class = values(embeddings.class_embedding.val());
    let position = values(embeddings.position_embedding.weight.val()); // [17, 24]
    let (width, grid, patch) = (24, 4, 8);
    for token in 0..17 {
        for out in 0..width {
            let content = if token == 0 {
                class[out]
            } else {
                let (py, px) = ((token - 1) / grid, (token - 1) % grid);
                let mut sum = 0.0f32;
                for c in 0..3 {
                    for dy in 0..patch {
                        for dx in 0..patch {
                            let pixel = pixels[c * 1024 + (py * patch + dy) * 32 + px * patch + dx];
                            sum += pixel * weight[((out * 3 + c) * patch + dy) * patch + dx];
                        }
                    }
                }
                sum
            };
            let expected = content + position[token * width + out];
            let got = tokens[token * width + out];
            assert!(
                (got - expected).abs() < 1e-4,
                "token {token} channel {out}: {got} vs {expected}"
            );
        }
    }
}

#[test]
fn the_parameter_count_is_known_before_allocating() {
    let device = Device::flex();
    for config in [
        ClipConfig::preset("tiny").unwrap(),
        from_toml_str::<ClipConfig>(
            r#"
            embed_dim = 24
            [vision]
            image_size = 30
            patch_size = 10
            width = 20
            layers = 2
            heads = 4
            intermediate_size = 36
            [text]
            context_length = 9
            vocab_size = 77
            width = 16
            layers = 3
            heads = 2
            intermediate_size = 40
            eos_token_id = 2
            "#,
            "test",
        )
        .unwrap(),
    ] {
        assert_eq!(
            config.num_params(),
            config.init(&device).num_params() as u64
        );
    }
    // Caps refuse sizes no real model has, naming the key, before anything is allocated.
    let mut config = ClipConfig::preset("tiny").unwrap();
    config.vision.intermediate_size = 0;
    let err = config.validate("x.toml").unwrap_err().to_string();
    assert!(
        err.contains("vision.intermediate_size") && err.contains("positive"),
        "{err}"
    );
    config.vision.intermediate_size = 1 << 30;
    let err = config.validate("x.toml").unwrap_err().to_string();
    assert!(err.contains("beyond any real model"), "{err}");
    let mut config = ClipConfig::preset("vit-b-32").unwrap();
    config.text.width = 16384;
    config.text.heads = 16;
    config.text.layers = 256;
    let err = config.validate("x.toml").unwrap_err().to_string();
    assert!(err.contains("parameters is beyond any real model"), "{err}");
}

#[test]
fn patch_dropout_keeps_open_clips_share_drawn_from_the_seed() {
    use mm_encoders::PatchDropout;
    let device = Device::flex();
    assert!(PatchDropout::new(0.0).unwrap().is_none(), "0 drops nothing");
    for bad in [1.0, -0.5, f64::NAN] {
        let err = PatchDropout::new(bad).unwrap_err();
        assert!(err.contains("[0, 1)"), "{err}");
    }
    let half = PatchDropout::new(0.5).unwrap().unwrap();
    assert_eq!(half.kept(49), 24, "⌊49 · 0.5⌋, as open_clip");
    assert_eq!(
        PatchDropout::new(0.99).unwrap().unwrap().kept(49),
        1,
        "at least one patch"
    );
    let rows = |seed| {
        let kept = half.sample(4, 16, seed, &device);
        assert_eq!(kept.dims(), [4, 8]);
        let flat = kept.into_data().try_into_vec_as::<i64>().unwrap();
        flat.chunks(8).map(<[i64]>::to_vec).collect::<Vec<_>>()
    };
    let first = rows(7);
    for row in &first {
        assert!(
            row.windows(2).all(|w| w[0] < w[1]),
            "distinct, ascending: {row:?}"
        );
        assert!(row.iter().all(|&i| (0..16).contains(&i)));
    }
    assert_ne!(first[0], first[1], "each image draws its own patches");
    assert_eq!(rows(7), first, "the same seed keeps the same patches");
    assert_ne!(rows(8), first);
}

/// Kept patches are the only ones the tower sees: the class token and those patches give the
/// same features as a model run on them by hand; the pixels of a dropped patch get no
/// gradient, those of a kept one do.
#[test]
fn patch_dropout_runs_the_tower_on_the_class_token_and_kept_patches() {
    let device = Device::flex().autodiff();
    let model = small_config().init(&device);
    let vision = &model.vision_model;
    assert_eq!(vision.num_patches(), 16);
    let pixels = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device)
        .require_grad();
    let kept_rows = [[0i64, 5, 15], [3, 4, 9]];
    let kept = Tensor::<2, Int>::from_data(
        TensorData::new(kept_rows.iter().flatten().copied().collect(), [2, 3]),
        &device,
    );
    let dropped = vision.forward_kept(pixels.clone(), Some(kept)).pooled;
    assert_eq!(
        vision
            .forward_kept(pixels.clone(), None)
            .last_hidden_state
            .dims(),
        [2, 17, 24]
    );
    for (b, row) in kept_rows.iter().enumerate() {
        let tokens = vision.embeddings.forward(pixels.clone().slice(b..b + 1));
        let positions: Vec<i64> = std::iter::once(0)
            .chain(row.iter().map(|i| i + 1))
            .collect();
        let tokens = tokens.select(
            1,
            Tensor::from_data(TensorData::new(positions, [4]), &device),
        );
        let by_hand = model_by_hand(vision, tokens);
        let got = values(dropped.clone().slice(b..b + 1));
        let worst = got
            .iter()
            .zip(values(by_hand))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "image {b}: {worst}");
    }
    // Not a plain sum: the pooled output leaves a LayerNorm (unit gain at init), whose
    // outputs sum to 0 whatever its input, so a plain sum's gradient is rounding noise.
    let width = dropped.dims()[1];
    let weights: Vec<f32> = (0..width).map(|i| (0.37 * i as f32).sin()).collect();
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [1, width]), &device);
    let grads = (dropped * weights).sum().backward();
    let grad = pixels.grad(&grads).unwrap();
    // Patch p covers rows 8 (p / 4).. and columns 8 (p % 4).. of every channel.
    let patch_grad = |b: usize, p: usize| {
        let (r, c) = (8 * (p / 4), 8 * (p % 4));
        let block = grad.clone().slice([b..b + 1, 0..3, r..r + 8, c..c + 8]);
        block.abs().sum().into_scalar::<f32>()
    };
    for (b, row) in kept_rows.iter().enumerate() {
        for p in 0..16 {
            let kept = row.contains(&(p as i64));
            assert_eq!(patch_grad(b, p) > 0.0, kept, "image {b} patch {p}");
        }
    }
}

/// The tower after its embeddings, on tokens chosen by hand.
fn model_by_hand(vision: &mm_encoders::VisionTransformer, tokens: Tensor<3>) -> Tensor<2> {
    let hidden = vision.pre_layrnorm.forward(tokens);
    let out = vision.encoder.forward(hidden);
    let [batch, _, width] = out.dims();
    vision.post_layernorm.forward(
        out.slice([0..batch, 0..1, 0..width])
            .reshape([batch, width]),
    )
}

#[test]
fn a_conv_stem_keeps_the_grid_and_its_parameters_are_counted() {
    let device = Device::flex();
    let mut config = small_config();
    config.vision.conv_stem = vec![6, 12];
    config.validate("stem").unwrap();
    let model = config.init(&device);
    assert_eq!(config.num_params(), model.num_params() as u64);
    // Two halvings of 32 px leave 8 x 8; the patch embedding takes 2 x 2 of the 12 channels,
    // so the grid (and the position table) is the plain tower's 4 x 4.
    let patch = model.vision_model.embeddings.patch_embedding.weight.dims();
    assert_eq!(patch, [24, 12, 2, 2]);
    let stem: Vec<[usize; 4]> = model
        .vision_model
        .embeddings
        .conv_stem
        .iter()
        .map(|c| c.weight.dims())
        .collect();
    assert_eq!(stem, [[6, 3, 3, 3], [12, 6, 3, 3]]);
    let out = model
        .vision_model
        .forward(Tensor::zeros([2, 3, 32, 32], &device));
    assert_eq!(out.last_hidden_state.dims(), [2, 17, 24]);
    // The stem is translation-equivariant: a picture shifted by a whole patch gives the same
    // patch features, shifted (the borders aside).
    let pixels: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| ((i * 7919) % 13) as f32 / 13.0)
        .collect();
    let image = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, 32, 32]), &device);
    let shifted = image.clone().slice([0..1, 0..3, 0..32, 8..32]);
    let shifted = Tensor::cat(vec![shifted, Tensor::zeros([1, 3, 32, 8], &device)], 3);
    let stem = |x: Tensor<4>| {
        let e = &model.vision_model.embeddings;
        let x = e
            .conv_stem
            .iter()
            .fold(x, |x, c| burn::tensor::activation::relu(c.forward(x)));
        e.patch_embedding.forward(x)
    };
    let (a, b) = (stem(image), stem(shifted));
    // Grid column 2 of the original is column 1 of the shifted picture (interior cells).
    let a = values(a.slice([0..1, 0..24, 1..3, 2..3]));
    let b = values(b.slice([0..1, 0..24, 1..3, 1..2]));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    // HF's CLIPVisionModel has no stem: no export pretends otherwise.
    let dir = std::env::temp_dir().join(format!("mm-stem-export-{}", std::process::id()));
    let err = mm_encoders::hf::save_weights(&model, &dir.join("model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv_stem"), "{err}");
    assert!(!dir.join("model.safetensors").exists());
    // A stem that does not divide the patch, or one too deep, is refused by key.
    config.vision.conv_stem = vec![6, 12, 12, 12];
    let err = config.validate("stem.toml").unwrap_err().to_string();
    assert!(
        err.contains("vision.conv_stem") && err.contains("multiple of 16"),
        "{err}"
    );
    config.vision.conv_stem = vec![0];
    let err = config.validate("stem.toml").unwrap_err().to_string();
    assert!(
        err.contains("vision.conv_stem") && err.contains("0 channels"),
        "{err}"
    );
}

/// The patch embedding as a GEMM over unfolded patches gives the convolution's output and
/// weight and bias gradients, on an image whose size the patch does not divide (the last
/// pixels are ignored, as the convolution ignores them).
#[test]
fn patch_embedding_is_the_strided_convolution() {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;
    let device = Device::flex().autodiff();
    let conv = Conv2dConfig::new([3, 24], [8, 8])
        .with_stride([8, 8])
        .with_bias(true)
        .init(&device);
    let pixels = Tensor::<4>::random([2, 3, 35, 42], Distribution::Normal(0.0, 1.0), &device);
    let upstream = Tensor::<3>::random([2, 4 * 5, 24], Distribution::Normal(0.0, 1.0), &device);
    let run = |gemm: bool| {
        let out = match gemm {
            true => mm_encoders::patch_embedding(&conv, pixels.clone()),
            false => {
                let out = conv.forward(pixels.clone());
                let [b, c, gh, gw] = out.dims();
                out.reshape([b, c, gh * gw]).swap_dims(1, 2)
            }
        };
        let grads = (out.clone() * upstream.clone()).sum().backward();
        let weight = conv.weight.val().grad(&grads).unwrap();
        let bias = conv.bias.as_ref().unwrap().val().grad(&grads).unwrap();
        (
            values3(out),
            weight.into_data().try_to_vec::<f32>().unwrap(),
            bias,
        )
    };
    let ((out, dw, db), (want, want_dw, want_db)) = (run(true), run(false));
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3);
    assert_eq!(out.len(), 2 * 4 * 5 * 24);
    assert!(close(&out, &want) && close(&dw, &want_dw));
    let (db, want_db) = (
        db.into_data().try_to_vec::<f32>().unwrap(),
        want_db.into_data().try_to_vec::<f32>().unwrap(),
    );
    assert!(close(&db, &want_db));
}

fn values3(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}
