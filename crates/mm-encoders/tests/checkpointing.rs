//! Activation checkpointing per transformer block gives the plain backward pass's gradients.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mm_encoders::{ClipConfig, ClipModel, MatmulPrecision, from_toml_str, with_matmul_precision};

fn config() -> ClipConfig {
    from_toml_str(
        r#"
        embed_dim = 16
        [vision]
        image_size = 32
        patch_size = 8
        width = 24
        layers = 3
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

struct Inputs {
    pixels: Tensor<4>,
    ids: Tensor<2, Int>,
    image_weights: Tensor<2>,
    text_weights: Tensor<2>,
}

/// Fixed pseudo-random values (burn's generator is global: parallel tests would interleave).
fn wave<const D: usize>(shape: [usize; D], phase: f32, device: &Device) -> Tensor<D> {
    let n = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7311 + phase).sin()).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn inputs(device: &Device) -> Inputs {
    let ids: Vec<i64> = (0..40)
        .map(|i| {
            if i % 10 == 9 {
                99
            } else {
                (i * 37 % 98) as i64
            }
        })
        .collect();
    Inputs {
        pixels: wave([4, 3, 32, 32], 0.0, device),
        ids: Tensor::from_data(TensorData::new(ids, [4, 10]), device),
        image_weights: wave([4, 16], 1.0, device),
        text_weights: wave([4, 16], 2.0, device),
    }
}

/// A loss through both towers, every block and the embeddings.
fn gradients(model: &ClipModel, inputs: &Inputs) -> (f32, GradientsParams) {
    let images = model.image_features(inputs.pixels.clone());
    let texts = model.text_features(inputs.ids.clone());
    let loss = (images.tanh() * inputs.image_weights.clone()).sum()
        + (texts.tanh() * inputs.text_weights.clone()).sum();
    let value = loss.clone().into_scalar::<f32>();
    (value, GradientsParams::from_grads(loss.backward(), model))
}

/// Each float parameter's path and gradient (`None`: it got none).
type PathGrads = Vec<(String, Option<Vec<f32>>)>;

/// Every float parameter's path and gradient (`None`: it got none).
fn grads_by_path(model: &ClipModel, grads: &GradientsParams) -> PathGrads {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        out: PathGrads,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = self
                .grads
                .get::<D>(param.id)
                .map(|g| g.into_data().try_into_vec_as::<f32>().unwrap());
            self.out.push((self.path.join("."), grad));
        }
    }
    let mut collect = Collect {
        grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut collect);
    collect.out
}

fn assert_same_gradients(
    want: &[(String, Option<Vec<f32>>)],
    got: &[(String, Option<Vec<f32>>)],
    tolerance: f32,
) {
    assert_eq!(want.len(), got.len());
    let mut failures = Vec::new();
    for ((path, want), (_, got)) in want.iter().zip(got) {
        match (want, got) {
            (None, None) => {}
            (Some(want), Some(got)) => {
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let worst = want
                    .iter()
                    .zip(got)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                if worst > tolerance * scale {
                    failures.push(format!(
                        "{path}: gradients differ by {worst} (largest {scale})"
                    ));
                }
            }
            _ => failures.push(format!("{path}: gradient present in one run only")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn run(checkpointing: bool, freeze_image: bool, precision: MatmulPrecision) -> (f32, PathGrads) {
    let device = Device::flex().autodiff();
    let mut model = config().init_seeded(&device, 3);
    if freeze_image {
        model.vision_model = model.vision_model.no_grad();
    }
    model.set_grad_checkpointing(checkpointing);
    let inputs = inputs(&device);
    let (loss, grads) = with_matmul_precision(precision, || gradients(&model, &inputs));
    (loss, grads_by_path(&model, &grads))
}

#[test]
fn checkpointed_blocks_give_the_plain_gradients() {
    assert!(mm_kernels::checkpointing_on(&Device::flex()));
    let (plain_loss, plain) = run(false, false, MatmulPrecision::Fp32);
    let (loss, checkpointed) = run(true, false, MatmulPrecision::Fp32);
    assert_eq!(plain_loss, loss, "the forward pass is the same computation");
    // Every parameter gets a gradient (blocks, and the embeddings below them through the
    // blocks' input gradients) and it is the plain one.
    for (path, grad) in plain.iter().filter(|(p, _)| p != "logit_scale") {
        assert!(grad.is_some(), "{path} got no gradient");
    }
    assert!(
        plain
            .iter()
            .any(|(p, _)| p.contains("encoder.layers.2.mlp.fc1"))
    );
    assert_same_gradients(&plain, &checkpointed, 1e-5);
}

#[test]
fn checkpointing_leaves_frozen_towers_without_gradients() {
    let (_, plain) = run(false, true, MatmulPrecision::Fp32);
    let (_, checkpointed) = run(true, true, MatmulPrecision::Fp32);
    assert!(
        checkpointed
            .iter()
            .filter(|(p, _)| p.starts_with("vision_model"))
            .all(|(_, g)| g.is_none())
    );
    assert!(
        checkpointed
            .iter()
            .filter(|(p, _)| p.starts_with("text_model"))
            .all(|(_, g)| g.is_some())
    );
    assert_same_gradients(&plain, &checkpointed, 1e-5);
}

#[test]
fn the_recomputation_keeps_the_callers_matmul_precision() {
    let (_, fp32) = run(false, false, MatmulPrecision::Fp32);
    let (_, plain) = run(false, false, MatmulPrecision::Bf16);
    let (_, checkpointed) = run(true, false, MatmulPrecision::Bf16);
    assert_same_gradients(&plain, &checkpointed, 1e-5);
    if mm_kernels::bf16_supported() {
        // The bf16 path really ran: its gradients are visibly not fp32's.
        let differs = fp32.iter().zip(&plain).any(|((_, a), (_, b))| {
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
            a.iter()
                .zip(b)
                .any(|(x, y)| (x - y).abs() > 1e-4 * x.abs().max(1e-3))
        });
        assert!(differs);
    }
}

#[test]
fn without_autodiff_checkpointing_is_the_plain_forward_pass() {
    let device = Device::flex();
    let mut model = config().init_seeded(&device, 3);
    let inputs = inputs(&device);
    let plain = model.image_features(inputs.pixels.clone());
    model.set_grad_checkpointing(true);
    let checkpointed = model.image_features(inputs.pixels);
    plain.into_data().assert_eq(&checkpointed.into_data(), true);
}
