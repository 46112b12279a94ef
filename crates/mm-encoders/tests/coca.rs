//! CoCa: parity with open_clip's `CoCa` on the fixtures made by
//! `scripts/make_open_clip_fixtures.py`; cached decoding against the full re-run; beam search
//! against brute force; the config's checks.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mm_encoders::generate::{
    CachedCaptioner, Decoding, Generated, Generation, NextTokens, UncachedCaptioner, generate,
};
use mm_encoders::{ClipConfig, CocaModel, from_toml_str, open_clip};
use safetensors::{Dtype, SafeTensors};

const MODELS: [&str; 2] = ["coca_separate_kv", "coca_packed_kv"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/open_clip")
}

/// A reference tensor as (shape, values).
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

/// Largest |ours - theirs| relative to the reference's largest magnitude (at least 1).
fn max_error<const D: usize>(ours: Tensor<D>, theirs: &(Vec<usize>, Vec<f64>)) -> f64 {
    assert_eq!(ours.dims().to_vec(), theirs.0);
    let ours = ours.into_data().try_into_vec_as::<f32>().unwrap();
    let scale = theirs.1.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    ours.iter()
        .zip(&theirs.1)
        .map(|(a, b)| (*a as f64 - b).abs() / scale)
        .fold(0.0, f64::max)
}

struct Fixture {
    model: CocaModel,
    config: ClipConfig,
    pixels: Tensor<4>,
    ids: Tensor<2, Int>,
    st_bytes: Vec<u8>,
}

fn load(name: &str, device: &Device) -> Fixture {
    let (config, model) = open_clip::load_coca(&fixtures().join(name), device).unwrap();
    let st_bytes = std::fs::read(fixtures().join(format!("{name}.reference.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&st_bytes).unwrap();
    let (shape, pixels) = reference(&st, "pixel_values");
    let pixels: Vec<f32> = pixels.iter().map(|&v| v as f32).collect();
    let pixels = Tensor::<4>::from_data(TensorData::new(pixels, shape), device);
    let (shape, ids) = reference(&st, "input_ids");
    let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), device);
    Fixture {
        model,
        config,
        pixels,
        ids,
        st_bytes,
    }
}

#[test]
fn features_tokens_and_caption_logits_match_open_clip() {
    let device = Device::flex();
    for name in MODELS {
        let f = load(name, &device);
        let st = SafeTensors::deserialize(&f.st_bytes).unwrap();
        let (image, tokens) = f.model.encode_image(f.pixels.clone());
        let out = f.model.forward(f.pixels.clone(), f.ids.clone());
        let errors = [
            (
                "image features",
                max_error(image, &reference(&st, "image_features")),
            ),
            (
                "image tokens",
                max_error(tokens, &reference(&st, "image_tokens")),
            ),
            (
                "text features",
                max_error(out.text_features.clone(), &reference(&st, "text_features")),
            ),
            (
                "text features (CLIP path)",
                max_error(
                    f.model.clip.text_features(f.ids.clone()),
                    &reference(&st, "text_features"),
                ),
            ),
            (
                "caption logits",
                max_error(out.logits, &reference(&st, "logits")),
            ),
            (
                "logit scale",
                max_error(
                    f.model.clip.logit_scale.val().exp(),
                    &reference(&st, "logit_scale"),
                ),
            ),
        ];
        for (what, error) in errors {
            println!("{name}: {what}: max relative |mm - open_clip| {error:.2e}");
            assert!(error <= 1e-4, "{name}: {what} differ by {error:.2e}");
        }
        assert!(f.config.multimodal.is_some());
    }
}

#[test]
fn greedy_captions_match_open_clip_cached_and_not() {
    let device = Device::flex();
    for name in MODELS {
        let f = load(name, &device);
        let st = SafeTensors::deserialize(&f.st_bytes).unwrap();
        let (shape, expected) = reference(&st, "greedy_ids");
        let vocab = f.config.text.vocab_size as u32;
        let (start, end) = (vocab - 2, vocab - 1);
        let generation = Generation {
            decoding: Decoding::Greedy,
            max_new_tokens: shape[1] - 1,
            min_new_tokens: 0,
            repetition_penalty: 1.0,
            end_id: end,
        };
        let (_, tokens) = f.model.encode_image(f.pixels.clone());
        let prompts = vec![vec![start]; shape[0]];
        let cached = generate(
            &mut CachedCaptioner::new(&f.model, tokens.clone()),
            &prompts,
            &generation,
        );
        let uncached = generate(
            &mut UncachedCaptioner::new(&f.model, tokens),
            &prompts,
            &generation,
        );
        for (row, (c, u)) in cached.iter().zip(&uncached).enumerate() {
            // open_clip's loop pads finished rows with 0; mm stops at the end token.
            let theirs: Vec<u32> = expected[row * shape[1] + 1..(row + 1) * shape[1]]
                .iter()
                .map(|&v| v as u32)
                .collect();
            assert_eq!(c.ids, theirs[..c.ids.len()], "{name} row {row}");
            assert!(theirs[c.ids.len()..].iter().all(|&id| id == 0));
            assert_eq!(c.ids, u.ids, "{name} row {row}: cached vs uncached");
            assert!((c.score - u.score).abs() <= 1e-4 * c.score.abs().max(1.0));
        }
    }
}

/// Wraps a [`NextTokens`], recording every row's logits at every step.
struct Recording<'a> {
    inner: &'a mut dyn NextTokens,
    steps: Vec<Vec<Vec<f32>>>,
}

impl NextTokens for Recording<'_> {
    fn logits(&mut self, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let logits = self.inner.logits(rows);
        self.steps.push(logits.clone());
        logits
    }

    fn select(&mut self, rows: &[usize]) {
        self.inner.select(rows);
    }
}

fn tiny_coca(vocab: usize, seed: u64) -> (ClipConfig, CocaModel) {
    let text = format!(
        r#"
        embed_dim = 16
        [vision]
        image_size = 16
        patch_size = 8
        width = 24
        layers = 1
        heads = 2
        intermediate_size = 32
        activation = "gelu"
        attentional_pool = true
        attn_pooler_queries = 5
        attn_pooler_heads = 2
        [text]
        context_length = 12
        vocab_size = {vocab}
        width = 16
        layers = 2
        heads = 2
        intermediate_size = 32
        activation = "gelu"
        eos_token_id = {eos}
        embed_cls = true
        pad_id = 0
        [multimodal]
        context_length = 12
        vocab_size = {vocab}
        width = 16
        layers = 2
        heads = 2
        intermediate_size = 32
        activation = "gelu"
        "#,
        eos = vocab - 1
    );
    let config: ClipConfig = from_toml_str(&text, "test").unwrap();
    config.validate("test").unwrap();
    let device = Device::flex();
    device.seed(seed);
    let model = config.init_coca(&device).unwrap();
    (config, model)
}

fn images(batch: usize, seed: u64) -> Tensor<4> {
    let device = Device::flex();
    device.seed(seed);
    Tensor::random(
        [batch, 3, 16, 16],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    )
}

#[test]
fn logits_at_chosen_positions_are_the_full_passes_rows() {
    let (_, model) = tiny_coca(40, 3);
    let ids: Vec<i64> = (0..3 * 12).map(|i| (i * 7 % 39) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [3, 12]), &Device::flex());
    let full = model.forward(images(3, 4), ids.clone());
    // Positions among the 3 x 11 predicted ones, out of order and across rows.
    let rows = [0i64, 5, 10, 11, 20, 32, 13];
    let at = model.forward_at(
        images(3, 4),
        ids,
        Tensor::from_data(
            TensorData::new(rows.to_vec(), [rows.len()]),
            &Device::flex(),
        ),
    );
    assert_eq!(at.logits.dims(), [1, rows.len(), 40]);
    let full = full
        .logits
        .reshape([33, 40])
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let at = at.logits.into_data().try_to_vec::<f32>().unwrap();
    for (i, &row) in rows.iter().enumerate() {
        let want = &full[row as usize * 40..(row as usize + 1) * 40];
        let got = &at[i * 40..(i + 1) * 40];
        let worst = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "position {row}: {worst}");
    }
}

#[test]
fn cached_decoding_matches_the_full_rerun_for_every_strategy() {
    let (_, model) = tiny_coca(40, 1);
    let (_, tokens) = model.encode_image(images(3, 2));
    // Prompts with padding ids (0) inside: the class-token mask must treat them alike.
    let prompts = vec![vec![38, 5, 0, 7], vec![38, 0, 0, 9], vec![38, 11, 12, 13]];
    for decoding in [
        Decoding::Greedy,
        Decoding::Beam {
            width: 3,
            length_penalty: 1.0,
        },
        Decoding::Sample {
            temperature: 0.8,
            top_k: 10,
            top_p: 0.9,
            seed: 7,
        },
    ] {
        let generation = Generation {
            decoding: decoding.clone(),
            max_new_tokens: 7,
            min_new_tokens: 2,
            repetition_penalty: 1.3,
            end_id: 39,
        };
        generation.check().unwrap();
        let mut cached = CachedCaptioner::new(&model, tokens.clone());
        let mut cached = Recording {
            inner: &mut cached,
            steps: Vec::new(),
        };
        let mut uncached = UncachedCaptioner::new(&model, tokens.clone());
        let mut uncached = Recording {
            inner: &mut uncached,
            steps: Vec::new(),
        };
        let a = generate(&mut cached, &prompts, &generation);
        let b = generate(&mut uncached, &prompts, &generation);
        let texts = |g: &[Generated]| g.iter().map(|g| g.ids.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&a), texts(&b), "{decoding:?}: same texts");
        assert_eq!(cached.steps.len(), uncached.steps.len());
        let mut worst = 0.0f32;
        for (x, y) in cached
            .steps
            .iter()
            .flatten()
            .zip(uncached.steps.iter().flatten())
        {
            for (p, q) in x.iter().zip(y) {
                worst = worst.max((p - q).abs());
            }
        }
        println!(
            "{decoding:?}: {} steps, max |cached - uncached| logit {worst:.2e}",
            cached.steps.len()
        );
        assert!(worst <= 1e-4, "{decoding:?}: logits differ by {worst}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x.score - y.score).abs() <= 1e-3,
                "{decoding:?}: scores {} vs {}",
                x.score,
                y.score
            );
            assert!(x.ids.len() >= 2, "min_new_tokens bars an early end");
        }
    }
}

/// Every text of at most `max` new tokens (ending at `end` or at the length limit) scored by
/// summed log-probability / length^penalty under the model: the exact best.
fn brute_force(
    next: &mut dyn FnMut(&[u32]) -> Vec<f32>,
    prompt: &[u32],
    vocab: u32,
    end: u32,
    max: usize,
    penalty: f32,
) -> (Vec<u32>, f32) {
    let mut best = (Vec::new(), f32::NEG_INFINITY);
    let mut stack = vec![(prompt.to_vec(), 0.0f32)];
    while let Some((ids, total)) = stack.pop() {
        let logits = next(&ids);
        let max_logit = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = max_logit
            + logits
                .iter()
                .map(|l| ((l - max_logit) as f64).exp())
                .sum::<f64>()
                .ln() as f32;
        for token in 0..vocab {
            let total = total + logits[token as usize] - log_sum;
            let mut ids = ids.clone();
            ids.push(token);
            let new = ids.len() - prompt.len();
            if token == end || new == max {
                let score = total / (new as f32).powf(penalty);
                if score > best.1 {
                    best = (ids[prompt.len()..].to_vec(), score);
                }
            } else {
                stack.push((ids, total));
            }
        }
    }
    best
}

#[test]
fn exhaustive_beam_search_finds_the_brute_force_best_text() {
    let vocab = 5u32;
    let (_, model) = tiny_coca(vocab as usize, 3);
    let (_, tokens) = model.encode_image(images(2, 4));
    let max = 4;
    for penalty in [0.0f32, 1.0, -0.5, 2.0] {
        let generation = Generation {
            // Wide enough to keep every unfinished text: exhaustive.
            decoding: Decoding::Beam {
                width: 200,
                length_penalty: penalty,
            },
            max_new_tokens: max,
            min_new_tokens: 0,
            repetition_penalty: 1.0,
            end_id: vocab - 1,
        };
        let prompts = vec![vec![3u32], vec![3u32]];
        let found = generate(
            &mut CachedCaptioner::new(&model, tokens.clone()),
            &prompts,
            &generation,
        );
        for (row, got) in found.iter().enumerate() {
            let index = Tensor::<1, Int>::from_data(
                TensorData::new(vec![row as i64], [1]),
                &Device::flex(),
            );
            let image = tokens.clone().select(0, index);
            let mut reference = UncachedCaptioner::new(&model, image);
            let mut next = |ids: &[u32]| reference.logits(&[ids.to_vec()]).remove(0);
            let (ids, score) =
                brute_force(&mut next, &prompts[row], vocab, vocab - 1, max, penalty);
            println!(
                "penalty {penalty} row {row}: beam {:?} {:.5}, brute force {ids:?} {score:.5}",
                got.ids, got.score
            );
            assert_eq!(got.ids, ids, "penalty {penalty} row {row}");
            assert!((got.score - score).abs() <= 1e-4);
        }
        // A narrow beam never beats the exhaustive one, and width 1 is greedy.
        let narrow = |width| Generation {
            decoding: Decoding::Beam {
                width,
                length_penalty: penalty,
            },
            ..generation.clone()
        };
        let greedy = Generation {
            decoding: Decoding::Greedy,
            ..generation.clone()
        };
        let two = generate(
            &mut CachedCaptioner::new(&model, tokens.clone()),
            &prompts,
            &narrow(2),
        );
        for (n, best) in two.iter().zip(&found) {
            assert!(n.score <= best.score + 1e-5);
        }
        if penalty == 0.0 {
            let one = generate(
                &mut CachedCaptioner::new(&model, tokens.clone()),
                &prompts,
                &narrow(1),
            );
            let greedy = generate(
                &mut CachedCaptioner::new(&model, tokens.clone()),
                &prompts,
                &greedy,
            );
            for (b, g) in one.iter().zip(&greedy) {
                assert_eq!(b.ids, g.ids);
            }
        }
    }
}

#[test]
fn sampling_follows_top_k_top_p_and_seed() {
    let (_, model) = tiny_coca(30, 5);
    let (_, tokens) = model.encode_image(images(2, 6));
    let prompts = vec![vec![28u32], vec![28u32]];
    let run = |top_k, top_p, seed| {
        let generation = Generation {
            decoding: Decoding::Sample {
                temperature: 1.0,
                top_k,
                top_p,
                seed,
            },
            max_new_tokens: 6,
            min_new_tokens: 6,
            repetition_penalty: 1.0,
            end_id: 29,
        };
        generate(
            &mut CachedCaptioner::new(&model, tokens.clone()),
            &prompts,
            &generation,
        )
    };
    assert_eq!(run(0, 1.0, 1), run(0, 1.0, 1), "a seed repeats");
    let greedy = generate(
        &mut CachedCaptioner::new(&model, tokens.clone()),
        &prompts,
        &Generation {
            decoding: Decoding::Greedy,
            max_new_tokens: 6,
            min_new_tokens: 6,
            repetition_penalty: 1.0,
            end_id: 29,
        },
    );
    // Top-1 and a tiny nucleus are greedy, whatever the seed.
    for seed in 0..3 {
        let ids = |g: Vec<Generated>| g.into_iter().map(|g| g.ids).collect::<Vec<_>>();
        let greedy_ids = ids(greedy.clone());
        assert_eq!(ids(run(1, 1.0, seed)), greedy_ids);
        assert_eq!(ids(run(0, 1e-6, seed)), greedy_ids);
    }
    let distinct: std::collections::BTreeSet<Vec<u32>> = (0..8)
        .map(|seed| run(0, 1.0, seed)[0].ids.clone())
        .collect();
    assert!(distinct.len() > 1, "full sampling varies with the seed");
}

#[test]
fn generation_options_are_checked() {
    let base = Generation {
        decoding: Decoding::Greedy,
        max_new_tokens: 5,
        min_new_tokens: 0,
        repetition_penalty: 1.0,
        end_id: 1,
    };
    let cases = [
        (
            Generation {
                max_new_tokens: 0,
                ..base.clone()
            },
            "max_new_tokens",
        ),
        (
            Generation {
                min_new_tokens: 6,
                ..base.clone()
            },
            "min_new_tokens",
        ),
        (
            Generation {
                repetition_penalty: 0.0,
                ..base.clone()
            },
            "repetition_penalty",
        ),
        (
            Generation {
                decoding: Decoding::Beam {
                    width: 0,
                    length_penalty: 1.0,
                },
                ..base.clone()
            },
            "beam width",
        ),
        (
            Generation {
                decoding: Decoding::Sample {
                    temperature: 0.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed: 0,
                },
                ..base.clone()
            },
            "temperature",
        ),
        (
            Generation {
                decoding: Decoding::Sample {
                    temperature: 1.0,
                    top_k: 0,
                    top_p: 1.5,
                    seed: 0,
                },
                ..base.clone()
            },
            "top_p",
        ),
    ];
    base.check().unwrap();
    for (generation, key) in cases {
        let err = generation.check().unwrap_err();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn coca_presets_build_with_the_counted_parameters() {
    for name in ["coca-tiny", "coca-vit-b-32"] {
        let config = ClipConfig::preset(name).unwrap();
        assert!(config.multimodal.is_some());
        if name == "coca-tiny" {
            let model = config.init_coca(&Device::flex()).unwrap();
            assert_eq!(model.num_params() as u64, config.num_params_with_decoder());
            assert_eq!(model.clip.num_params() as u64, config.num_params());
        }
    }
    // `open_clip.create_model("coca_ViT-B-32")` counts 253,560,065 parameters.
    let b32 = ClipConfig::preset("coca-vit-b-32").unwrap();
    assert_eq!(b32.num_params_with_decoder(), 253_560_065);
}

#[test]
fn coca_configs_that_cannot_wire_are_errors_naming_the_key() {
    let base = ClipConfig::preset("coca-tiny").unwrap();
    type Change = Box<dyn Fn(&mut ClipConfig)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|c| c.vision.attentional_pool = false),
            "vision.attentional_pool",
        ),
        (Box::new(|c| c.text.embed_cls = false), "text.embed_cls"),
        (
            Box::new(|c| c.multimodal.as_mut().unwrap().width = 64),
            "multimodal.width",
        ),
        (
            Box::new(|c| c.multimodal.as_mut().unwrap().vocab_size = 100),
            "multimodal.vocab_size",
        ),
        (
            Box::new(|c| c.multimodal.as_mut().unwrap().heads = 3),
            "multimodal.heads",
        ),
        (
            Box::new(|c| c.vision.attn_pooler_heads = 3),
            "vision.attn_pooler_heads",
        ),
        (
            Box::new(|c| c.vision.attn_pooler_queries = 1),
            "vision.attn_pooler_queries",
        ),
        (
            Box::new(|c| c.multimodal.as_mut().unwrap().layers = 100_000),
            "multimodal.layers",
        ),
    ];
    for (change, key) in cases {
        let mut config = base.clone();
        change(&mut config);
        let err = config.validate("coca.toml").unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
    let clip = ClipConfig::preset("tiny").unwrap();
    let err = clip.init_coca(&Device::flex()).unwrap_err();
    assert_eq!(err.key, "multimodal");
}

#[test]
fn open_clip_configs_mm_cannot_run_are_refused_naming_the_key() {
    let good: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("coca_separate_kv/open_clip_config.json"))
            .unwrap(),
    )
    .unwrap();
    open_clip::config_from_open_clip(&good, "x.json").unwrap();
    let cases = [
        (
            "/model_cfg/vision_cfg/attentional_pool",
            serde_json::json!("parallel"),
            "vision_cfg.attentional_pool",
        ),
        (
            "/model_cfg/vision_cfg/ls_init_value",
            serde_json::json!(0.1),
            "vision_cfg.ls_init_value",
        ),
        (
            "/model_cfg/text_cfg/hf_model_name",
            serde_json::json!("roberta-base"),
            "text_cfg.hf_model_name",
        ),
        (
            "/model_cfg/vision_cfg/image_size",
            serde_json::json!([32, 48]),
            "vision_cfg.image_size",
        ),
        (
            "/model_cfg/multimodal_cfg/width",
            serde_json::json!(40),
            "multimodal_cfg.width",
        ),
        (
            "/model_cfg/text_cfg/mlp_ratio",
            serde_json::json!(-1.0),
            "text_cfg.mlp_ratio",
        ),
    ];
    for (pointer, value, key) in cases {
        let mut json = good.clone();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        json.pointer_mut(parent).unwrap()[field] = value;
        let err = open_clip::config_from_open_clip(&json, "x.json").unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
}

#[test]
fn open_clip_weights_that_do_not_fit_are_errors_naming_the_tensor() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("coca_packed_kv");
    std::fs::copy(
        source.join("open_clip_config.json"),
        dir.path().join("open_clip_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(source.join("open_clip_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let rewrite = |drop: &str, extra: Option<&str>| {
        let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .filter(|(name, _)| name != drop)
            .collect();
        if let Some(extra) = extra {
            let view = st.tensor("logit_scale").unwrap();
            tensors.push((extra.to_string(), view));
        }
        let out = safetensors::serialize(tensors, None).unwrap();
        std::fs::write(dir.path().join("open_clip_model.safetensors"), out).unwrap();
        open_clip::load_coca(dir.path(), &device)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = rewrite("text_decoder.cross_attn.0.ln_1_kv.weight", None);
    assert!(
        err.contains("missing tensor `text_decoder.cross_attn.0.ln_1_kv.weight`"),
        "{err}"
    );
    let err = rewrite("", Some("visual.extra"));
    assert!(err.contains("unexpected tensor `visual.extra`"), "{err}");
    std::fs::write(
        dir.path().join("open_clip_model.safetensors"),
        b"not safetensors",
    )
    .unwrap();
    let err = open_clip::load_coca(dir.path(), &device)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not safetensors"), "{err}");
}
