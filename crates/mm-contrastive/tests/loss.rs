//! The loss against values computed independently in f64, and its gradient against finite
//! differences.

mod common;

use burn::tensor::{Device, Tensor};
use common::{tensor, unit};
use mm_contrastive::{MAX_LOGIT_SCALE, clip_logits, clip_loss};

const IMAGES: [[f64; 3]; 3] = [[1.0, 2.0, -0.5], [0.3, -1.0, 0.8], [-2.0, 0.1, 0.4]];
const TEXTS: [[f64; 3]; 3] = [[0.9, 1.5, 0.1], [0.2, -0.7, 1.1], [-1.0, -0.2, 0.3]];

/// Symmetric InfoNCE written out with plain loops, in f64.
fn reference_loss(images: &[[f64; 3]], texts: &[[f64; 3]], logit_scale: f64) -> f64 {
    let (im, tx): (Vec<_>, Vec<_>) = (
        images.iter().map(unit).collect(),
        texts.iter().map(unit).collect(),
    );
    let scale = logit_scale.min(MAX_LOGIT_SCALE).exp();
    let n = im.len();
    let logit = |i: usize, j: usize| scale * (0..3).map(|k| im[i][k] * tx[j][k]).sum::<f64>();
    let ce = |row: &dyn Fn(usize) -> f64, target: usize| {
        let lse = (0..n).map(row).map(f64::exp).sum::<f64>().ln();
        lse - row(target)
    };
    let mut image_to_text = 0.0;
    let mut text_to_image = 0.0;
    for i in 0..n {
        image_to_text += ce(&|j| logit(i, j), i);
        text_to_image += ce(&|j| logit(j, i), i);
    }
    (image_to_text + text_to_image) / (2.0 * n as f64)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().try_into_vec_as::<f32>().unwrap()[0] as f64
}

#[test]
fn loss_matches_hand_computed_values() {
    let device = Device::flex();
    for logit_scale in [0.0, 1.0, (1.0f64 / 0.07).ln(), 6.0] {
        let loss = clip_loss(
            tensor(&IMAGES, &device),
            tensor(&TEXTS, &device),
            Tensor::from_floats([logit_scale as f32], &device),
        );
        let expected = reference_loss(&IMAGES, &TEXTS, logit_scale);
        let got = scalar(loss);
        assert!(
            (got - expected).abs() < 1e-5,
            "scale {logit_scale}: {got} vs {expected}"
        );
    }
}

#[test]
fn perfectly_aligned_pairs_at_high_scale_have_near_zero_loss() {
    let device = Device::flex();
    let eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let loss = clip_loss(
        tensor(&eye, &device),
        tensor(&eye, &device),
        Tensor::from_floats([MAX_LOGIT_SCALE as f32], &device),
    );
    // Off-diagonal logits are 0 and diagonal ones 100: loss = ln(1 + 2 e^-100).
    assert!(scalar(loss) < 1e-6);
}

#[test]
fn logits_are_scaled_cosines_and_transpose() {
    let device = Device::flex();
    let logits = clip_logits(
        tensor(&IMAGES, &device),
        tensor(&TEXTS, &device),
        Tensor::from_floats([0.0f32], &device),
    );
    let per_image = logits
        .logits_per_image
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let per_text = logits
        .logits_per_text
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    for i in 0..3 {
        for j in 0..3 {
            let dot: f64 = (0..3).map(|k| IMAGES[i][k] * TEXTS[j][k]).sum();
            let norms = IMAGES[i].iter().map(|x| x * x).sum::<f64>().sqrt()
                * TEXTS[j].iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((per_image[i * 3 + j] as f64 - dot / norms).abs() < 1e-6);
            assert_eq!(per_image[i * 3 + j], per_text[j * 3 + i]);
        }
    }
}

#[test]
fn logit_scale_is_clamped_at_ln_100() {
    let device = Device::flex();
    // Texts in reverse order, so that the loss grows with the scale instead of vanishing.
    let texts = [TEXTS[2], TEXTS[1], TEXTS[0]];
    let at = |s: f32| {
        scalar(clip_loss(
            tensor(&IMAGES, &device),
            tensor(&texts, &device),
            Tensor::from_floats([s], &device),
        ))
    };
    assert_eq!(at(MAX_LOGIT_SCALE as f32 + 2.0), at(MAX_LOGIT_SCALE as f32));
    assert_ne!(at(MAX_LOGIT_SCALE as f32 - 1.0), at(MAX_LOGIT_SCALE as f32));
}

#[test]
fn gradient_matches_finite_differences() {
    let device = Device::flex().autodiff();
    let logit_scale = 1.3;
    let images = tensor(&IMAGES, &device).require_grad();
    let texts = tensor(&TEXTS, &device).require_grad();
    let scale = Tensor::<1>::from_floats([logit_scale as f32], &device).require_grad();
    let loss = clip_loss(images.clone(), texts.clone(), scale.clone());
    let grads = loss.backward();
    let grad_images = images
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let grad_texts = texts
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let grad_scale = scale
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()[0];

    // Central differences of the f64 reference.
    let h = 1e-6;
    for (which, analytic) in [(0, &grad_images), (1, &grad_texts)] {
        for idx in 0..9 {
            let (mut plus, mut minus) = ([IMAGES, TEXTS], [IMAGES, TEXTS]);
            plus[which][idx / 3][idx % 3] += h;
            minus[which][idx / 3][idx % 3] -= h;
            let numeric = (reference_loss(&plus[0], &plus[1], logit_scale)
                - reference_loss(&minus[0], &minus[1], logit_scale))
                / (2.0 * h);
            let got = analytic[idx] as f64;
            assert!(
                (got - numeric).abs() < 1e-4,
                "input {which} element {idx}: {got} vs {numeric}"
            );
        }
    }
    let numeric_scale = (reference_loss(&IMAGES, &TEXTS, logit_scale + h)
        - reference_loss(&IMAGES, &TEXTS, logit_scale - h))
        / (2.0 * h);
    assert!(
        (grad_scale as f64 - numeric_scale).abs() < 1e-4,
        "{grad_scale} vs {numeric_scale}"
    );
}
