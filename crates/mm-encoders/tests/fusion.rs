//! Fusion modules: shapes of every stage x operator, padding changes nothing, gradients reach
//! exactly the parameters in use (none for frozen towers), a learned α moves.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mm_encoders::fusion::Features;
use mm_encoders::fusion::sum::WeightedSum;
use mm_encoders::{
    ClipConfig, FusionClassifier, FusionConfig, FusionOperator, FusionStage, Modalities,
    from_toml_str,
};

const OPERATORS: [FusionOperator; 5] = [
    FusionOperator::Sum,
    FusionOperator::Concat,
    FusionOperator::Product,
    FusionOperator::Gated,
    FusionOperator::Attention,
];
const STAGES: [FusionStage; 3] = [FusionStage::Late, FusionStage::Mid, FusionStage::Early];
const CLASSES: usize = 5;

fn clip_config() -> ClipConfig {
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
        width = 20
        layers = 2
        heads = 2
        intermediate_size = 40
        eos_token_id = 99
        "#,
        "test config",
    )
    .unwrap()
}

fn wave<const D: usize>(shape: [usize; D], phase: f32, device: &Device) -> Tensor<D> {
    let n = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7311 + phase).sin()).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Three texts ending (token 99) at positions 3, 6 and 9; after the end, `pad`.
fn ids(pad: i64, device: &Device) -> Tensor<2, Int> {
    let mut rows = Vec::new();
    for (row, end) in [3usize, 6, 9].iter().enumerate() {
        for i in 0..10 {
            rows.push(match i {
                _ if i < *end => 1 + ((row * 13 + i * 7) % 90) as i64,
                _ if i == *end => 99,
                _ => pad,
            });
        }
    }
    Tensor::from_data(TensorData::new(rows, [3, 10]), device)
}

fn classifier(
    stage: FusionStage,
    operator: FusionOperator,
    modalities: Modalities,
    device: &Device,
) -> FusionClassifier {
    let clip = clip_config().init_seeded(device, 1);
    FusionConfig::new(CLASSES)
        .with_stage(stage)
        .with_operator(operator)
        .with_modalities(modalities)
        .with_head_hidden(12)
        .with_heads(2)
        .init(clip, device)
}

fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn every_stage_and_operator_gives_class_scores() {
    let device = Device::flex();
    let pixels = wave([3, 3, 32, 32], 0.0, &device);
    for stage in STAGES {
        for operator in OPERATORS {
            let model = classifier(stage, operator, Modalities::Both, &device);
            let out = model.forward(pixels.clone(), ids(0, &device));
            assert_eq!(out.dims(), [3, CLASSES], "{stage:?} {operator:?}");
            let values = out.clone().into_data().try_into_vec_as::<f32>().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{stage:?} {operator:?}"
            );
            if stage == FusionStage::Late {
                // Decision fusion returns log-probabilities: each row sums to 1.
                let total = out.exp().sum_dim(1).into_data().try_into_vec_as::<f32>();
                for t in total.unwrap() {
                    assert!((t - 1.0).abs() < 1e-5, "{operator:?}: {t}");
                }
            }
        }
    }
}

#[test]
fn padding_after_the_end_token_changes_nothing() {
    let device = Device::flex();
    let pixels = wave([3, 3, 32, 32], 0.0, &device);
    for stage in STAGES {
        for operator in OPERATORS {
            let model = classifier(stage, operator, Modalities::Both, &device);
            let a = model.forward(pixels.clone(), ids(0, &device));
            let b = model.forward(pixels.clone(), ids(57, &device));
            let diff = max_diff(a, b);
            assert!(
                diff < 1e-5,
                "{stage:?} {operator:?}: padding moved logits by {diff}"
            );
        }
    }
    // The control: a token before the end does change them.
    let model = classifier(
        FusionStage::Early,
        FusionOperator::Attention,
        Modalities::Both,
        &device,
    );
    let a = model.forward(pixels.clone(), ids(0, &device));
    let changed = ids(0, &device).slice_assign([0..1, 1..2], Tensor::full([1, 1], 42, &device));
    assert!(max_diff(a, model.forward(pixels, changed)) > 1e-4);
}

#[test]
fn single_modality_baselines_ignore_the_other_input() {
    let device = Device::flex();
    let (p0, p1) = (
        wave([3, 3, 32, 32], 0.0, &device),
        wave([3, 3, 32, 32], 1.0, &device),
    );
    let image_only = classifier(
        FusionStage::Mid,
        FusionOperator::Concat,
        Modalities::Image,
        &device,
    );
    let text_only = classifier(
        FusionStage::Mid,
        FusionOperator::Concat,
        Modalities::Text,
        &device,
    );
    let other_text = ids(0, &device).slice_assign([0..3, 1..2], Tensor::full([3, 1], 42, &device));
    assert!(
        max_diff(
            image_only.forward(p0.clone(), ids(0, &device)),
            image_only.forward(p0.clone(), other_text.clone())
        ) == 0.0
    );
    assert!(
        max_diff(
            image_only.forward(p0.clone(), ids(0, &device)),
            image_only.forward(p1.clone(), ids(0, &device))
        ) > 1e-4
    );
    assert!(
        max_diff(
            text_only.forward(p0.clone(), ids(0, &device)),
            text_only.forward(p1, ids(0, &device))
        ) == 0.0
    );
    assert!(
        max_diff(
            text_only.forward(p0.clone(), ids(0, &device)),
            text_only.forward(p0, other_text)
        ) > 1e-4
    );
}

/// Each float parameter's path and whether the gradients hold one.
fn with_gradient(model: &FusionClassifier, grads: &GradientsParams) -> Vec<(String, bool)> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        out: Vec<(String, bool)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let has = self.grads.get::<D>(param.id).is_some();
            self.out.push((self.path.join("."), has));
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

fn cross_entropy(logits: Tensor<2>, labels: &[i64]) -> Tensor<1> {
    let device = logits.device();
    let labels =
        Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), &device);
    let n = labels.dims()[0];
    let picked = log_softmax(logits, 1).gather(1, labels.reshape([n, 1]));
    picked.mean().neg()
}

#[test]
fn gradients_reach_the_parameters_in_use_and_never_frozen_towers() {
    let device = Device::flex().autodiff();
    let pixels = wave([3, 3, 32, 32], 0.0, &device);
    for stage in STAGES {
        for operator in OPERATORS {
            for frozen in [false, true] {
                let mut model = classifier(stage, operator, Modalities::Both, &device);
                if frozen {
                    model.clip = model.clip.no_grad();
                }
                let loss =
                    cross_entropy(model.forward(pixels.clone(), ids(0, &device)), &[0, 3, 4]);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                for (path, has) in with_gradient(&model, &grads) {
                    let tower = path.starts_with("clip.");
                    // Parameters no path uses: the temperature; in early fusion the text
                    // tower's encoder and both projections' other halves are not used.
                    let unused = path == "clip.logit_scale"
                        || (stage == FusionStage::Early
                            && (path.starts_with("clip.text_model.encoder")
                                || path.starts_with("clip.text_model.final_layer_norm")
                                || path.starts_with("clip.text_projection")));
                    let want = !(tower && (frozen || unused));
                    assert_eq!(has, want, "{stage:?} {operator:?} frozen={frozen}: {path}");
                }
            }
        }
    }
}

#[test]
fn a_learned_alpha_moves_and_a_fixed_one_is_no_parameter() {
    let device = Device::flex().autodiff();
    let learned = WeightedSum::new(0.3, true, &device);
    let fixed = WeightedSum::new(0.3, false, &device);
    assert_eq!(fixed.num_params(), 0);
    let a0 = learned.alpha(&device).into_scalar::<f32>();
    assert!((a0 - 0.3).abs() < 1e-6);
    // The target is all `a`: descending the error pushes α toward 1.
    let (a, b) = (wave([4, 6], 0.0, &device), wave([4, 6], 2.0, &device));
    let mut optim = SgdConfig::new().init();
    let mut module = learned;
    for _ in 0..20 {
        let loss = (module.forward(a.clone(), b.clone()) - a.clone())
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &module);
        module = optim.step(0.5, module, grads);
    }
    let a1 = module.alpha(&device).into_scalar::<f32>();
    assert!(a1 > a0 + 0.1, "α {a0} -> {a1}");
    // A fixed α is what it was.
    let out = fixed.forward(a.clone(), b.clone());
    let want = a.mul_scalar(0.3) + b.mul_scalar(0.7);
    assert!(max_diff(out, want) < 1e-6);
}

#[test]
fn masked_token_means_skip_padding() {
    let device = Device::flex();
    let tokens = wave([2, 4, 3], 0.0, &device);
    let padding = Tensor::<2, Int>::from_data(
        TensorData::new(vec![0i64, 0, 1, 1, 0, 0, 0, 1], [2, 4]),
        &device,
    )
    .equal_elem(1);
    let features = Features {
        pooled: Tensor::zeros([2, 3], &device),
        tokens: tokens.clone(),
        padding: Some(padding),
    };
    let mean = features.mean_tokens();
    let want = Tensor::cat(
        vec![
            tokens
                .clone()
                .slice([0..1, 0..2, 0..3])
                .mean_dim(1)
                .reshape([1, 3]),
            tokens.slice([1..2, 0..3, 0..3]).mean_dim(1).reshape([1, 3]),
        ],
        0,
    );
    assert!(max_diff(mean, want) < 1e-6);
}
