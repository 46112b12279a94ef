//! CLIP's and SigLIP's losses and gradients against open_clip's own `ClipLoss` and
//! `SigLipLoss` under torch autograd, from `fixtures/losses/` (made by
//! `scripts/make_loss_fixtures.py`): raw features in, L2 normalisation and the exponential of
//! the log temperature inside the loss, as mm's functions take them.

use burn::tensor::{Device, Tensor, TensorData};
use mm_contrastive::{clip_loss, siglip_loss};
use safetensors::SafeTensors;

mod common;
use common::values;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/losses/open_clip_losses.safetensors"
);

/// A stored f64 tensor: its values and shape.
fn read(file: &SafeTensors, name: &str) -> (Vec<f64>, Vec<usize>) {
    let view = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let values = view
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (values, view.shape().to_vec())
}

/// Largest |a - b| relative to the largest |b| (at least 1): f32 against f64.
fn error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn both_losses_and_their_gradients_match_open_clip() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let device = Device::flex().autodiff();
    let mut cases = 0;
    while file.tensor(&format!("c{cases}.image")).is_ok() {
        let key = |k: &str| format!("c{cases}.{k}");
        let tensor = |name: &str| {
            let (v, shape) = read(&file, &key(name));
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            Tensor::<2>::from_data(TensorData::new(v, [shape[0], shape[1]]), &device)
        };
        let scalar = |name: &str| read(&file, &key(name)).0[0];
        for objective in ["clip", "siglip"] {
            let image = tensor("image").require_grad();
            let text = tensor("text").require_grad();
            let scale =
                Tensor::<1>::from_floats([scalar("logit_scale") as f32], &device).require_grad();
            let bias =
                Tensor::<1>::from_floats([scalar("logit_bias") as f32], &device).require_grad();
            let loss = match objective {
                "clip" => clip_loss(image.clone(), text.clone(), scale.clone()),
                _ => siglip_loss(image.clone(), text.clone(), scale.clone(), bias.clone()),
            };
            let grads = loss.backward();
            let what = |k: &str| format!("case {cases} {objective} {k}");
            let expect = |name: &str| read(&file, &key(&format!("{objective}.{name}"))).0;
            let checks = [
                ("loss", values(loss), expect("loss")),
                (
                    "d/d image",
                    values(image.grad(&grads).unwrap()),
                    expect("grad_image"),
                ),
                (
                    "d/d text",
                    values(text.grad(&grads).unwrap()),
                    expect("grad_text"),
                ),
                (
                    "d/d logit_scale",
                    values(scale.grad(&grads).unwrap()),
                    expect("grad_logit_scale"),
                ),
            ];
            for (name, got, want) in checks {
                let e = error(&got, &want);
                assert!(e < 2e-5, "{}: error {e:.2e}\n{got:?}\n{want:?}", what(name));
            }
            if objective == "siglip" {
                let got = values(bias.grad(&grads).unwrap());
                let e = error(&got, &expect("grad_logit_bias"));
                assert!(e < 2e-5, "{}: error {e:.2e}", what("d/d logit_bias"));
            }
        }
        cases += 1;
    }
    assert_eq!(cases, 4, "the fixture's cases");
}
