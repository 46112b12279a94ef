//! SigLIP's loss against values computed independently in f64 (open_clip's `SigLipLoss`
//! written out with loops), its gradient against finite differences, and the property that
//! makes feature-cached accumulation exact.

mod common;

use burn::tensor::{Device, Tensor};
use common::{tensor, unit, values};
use mm_contrastive::{
    MAX_LOGIT_SCALE, SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, siglip_logits, siglip_loss,
};

const IMAGES: [[f64; 3]; 4] = [
    [1.0, 2.0, -0.5],
    [0.3, -1.0, 0.8],
    [-2.0, 0.1, 0.4],
    [0.5, 0.5, 0.5],
];
const TEXTS: [[f64; 3]; 4] = [
    [0.9, 1.5, 0.1],
    [0.2, -0.7, 1.1],
    [-1.0, -0.2, 0.3],
    [0.1, 0.9, -0.4],
];

/// -sum_ij log sigmoid(z_ij (exp(scale) cos_ij + bias)) / n, with z = +1 on the diagonal.
fn reference_loss(images: &[[f64; 3]], texts: &[[f64; 3]], scale: f64, bias: f64) -> f64 {
    let (im, tx): (Vec<_>, Vec<_>) = (
        images.iter().map(unit).collect(),
        texts.iter().map(unit).collect(),
    );
    let t = scale.min(MAX_LOGIT_SCALE).exp();
    let n = im.len();
    let mut loss = 0.0;
    for (i, a) in im.iter().enumerate() {
        for (j, b) in tx.iter().enumerate() {
            let logit = t * (0..3).map(|k| a[k] * b[k]).sum::<f64>() + bias;
            let z = if i == j { 1.0 } else { -1.0 };
            // -log sigmoid(x) = ln(1 + e^-x)
            loss += (1.0 + (-z * logit).exp()).ln();
        }
    }
    loss / n as f64
}

fn one(x: f64, device: &Device) -> Tensor<1> {
    Tensor::from_floats([x as f32], device)
}

#[test]
fn loss_matches_hand_computed_values() {
    let device = Device::flex();
    for (scale, bias) in [
        (SIGLIP_LOGIT_SCALE_INIT, SIGLIP_LOGIT_BIAS_INIT),
        (0.0, 0.0),
        (3.0, -2.5),
        (6.0, 1.0), // past the clamp at ln 100
    ] {
        let got = values(siglip_loss(
            tensor(&IMAGES, &device),
            tensor(&TEXTS, &device),
            one(scale, &device),
            one(bias, &device),
        ))[0];
        let expected = reference_loss(&IMAGES, &TEXTS, scale, bias);
        assert!(
            (got - expected).abs() < 1e-4 * expected.max(1.0),
            "scale {scale} bias {bias}: {got} vs {expected}"
        );
    }
}

#[test]
fn sigmoid_of_the_logits_is_the_match_probability() {
    let device = Device::flex();
    let logits = values(siglip_logits(
        tensor(&IMAGES, &device),
        tensor(&TEXTS, &device),
        one(2.0, &device),
        one(-1.5, &device),
    ));
    for i in 0..4 {
        for j in 0..4 {
            let dot: f64 = (0..3).map(|k| IMAGES[i][k] * TEXTS[j][k]).sum();
            let norms = IMAGES[i].iter().map(|x| x * x).sum::<f64>().sqrt()
                * TEXTS[j].iter().map(|x| x * x).sum::<f64>().sqrt();
            let expected = 2.0f64.exp() * dot / norms - 1.5;
            assert!((logits[i * 4 + j] - expected).abs() < 1e-5);
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let device = Device::flex().autodiff();
    let (scale, bias) = (1.7, -3.0);
    let images = tensor(&IMAGES, &device).require_grad();
    let texts = tensor(&TEXTS, &device).require_grad();
    let scale_t = one(scale, &device).require_grad();
    let bias_t = one(bias, &device).require_grad();
    let loss = siglip_loss(
        images.clone(),
        texts.clone(),
        scale_t.clone(),
        bias_t.clone(),
    );
    let grads = loss.backward();
    let grad = |t: Tensor<2>| values(t.grad(&grads).unwrap());
    let (grad_images, grad_texts) = (grad(images), grad(texts));
    let grad_scale = values(scale_t.grad(&grads).unwrap())[0];
    let grad_bias = values(bias_t.grad(&grads).unwrap())[0];

    let h = 1e-6;
    let close = |got: f64, numeric: f64, what: &str| {
        assert!((got - numeric).abs() < 1e-3, "{what}: {got} vs {numeric}");
    };
    for (which, analytic) in [(0, &grad_images), (1, &grad_texts)] {
        for idx in 0..12 {
            let (mut plus, mut minus) = ([IMAGES, TEXTS], [IMAGES, TEXTS]);
            plus[which][idx / 3][idx % 3] += h;
            minus[which][idx / 3][idx % 3] -= h;
            let numeric = (reference_loss(&plus[0], &plus[1], scale, bias)
                - reference_loss(&minus[0], &minus[1], scale, bias))
                / (2.0 * h);
            close(
                analytic[idx],
                numeric,
                &format!("input {which} element {idx}"),
            );
        }
    }
    let d = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
    close(
        grad_scale,
        d(&|e| reference_loss(&IMAGES, &TEXTS, scale + e, bias)),
        "logit_scale",
    );
    close(
        grad_bias,
        d(&|e| reference_loss(&IMAGES, &TEXTS, scale, bias + e)),
        "logit_bias",
    );
}

#[test]
fn the_loss_splits_over_micro_batches_against_cached_features() {
    // What feature-cached accumulation relies on: the big batch's gradient with respect to the
    // first micro-batch's image features equals that of the loss in which only those rows
    // carry gradients and the other rows are constants.
    let device = Device::flex().autodiff();
    let (scale, bias) = (one(2.0, &device), one(-4.0, &device));
    let full_images = tensor(&IMAGES, &device).require_grad();
    let full = siglip_loss(
        full_images.clone(),
        tensor(&TEXTS, &device),
        scale.clone(),
        bias.clone(),
    );
    let expected = values(full_images.grad(&full.backward()).unwrap());

    let first = tensor(&IMAGES[..2], &device).require_grad();
    let rest = tensor(&IMAGES[2..], &device); // cached: no gradient
    let joined = Tensor::cat(vec![first.clone(), rest], 0);
    let part = siglip_loss(joined, tensor(&TEXTS, &device), scale, bias);
    let got = values(first.grad(&part.backward()).unwrap());
    for (g, e) in got.iter().zip(&expected[..6]) {
        assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
    }
}
