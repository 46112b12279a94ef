//! CoCa's loss against open_clip's `CoCaLoss` (caption weight 2, contrastive weight 1) on the
//! features and caption logits of `fixtures/open_clip/` (made by
//! `scripts/make_open_clip_fixtures.py`), and the captioning loss's gradient against its closed
//! form.

use burn::tensor::{Device, Int, Tensor, TensorData};
use mm_contrastive::{caption_loss_sum, coca_loss};
use safetensors::{Dtype, SafeTensors};

mod common;
use common::values;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/open_clip");

/// A stored tensor's values (f32 or i64) and shape.
fn read(file: &SafeTensors, name: &str) -> (Vec<f64>, Vec<usize>) {
    let view = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
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
        other => panic!("{name}: {other:?}"),
    };
    (values, view.shape().to_vec())
}

fn float<const D: usize>(file: &SafeTensors, name: &str, device: &Device) -> Tensor<D> {
    let (v, shape) = read(file, name);
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// `ids[:, 1:]`: the next token at each position of the caption logits.
fn labels(file: &SafeTensors, device: &Device) -> (Tensor<2, Int>, Vec<i64>, [usize; 2]) {
    let (ids, shape) = read(file, "input_ids");
    let (batch, seq) = (shape[0], shape[1]);
    let next: Vec<i64> = (0..batch)
        .flat_map(|b| (1..seq).map(move |t| (b, t)))
        .map(|(b, t)| ids[b * seq + t] as i64)
        .collect();
    let tensor = Tensor::from_data(TensorData::new(next.clone(), [batch, seq - 1]), device);
    (tensor, next, [batch, seq - 1])
}

#[test]
fn coca_loss_matches_open_clip() {
    let device = Device::flex();
    for model in ["coca_separate_kv", "coca_packed_kv"] {
        let bytes = std::fs::read(format!("{DIR}/{model}.reference.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let scale = read(&file, "logit_scale").0[0];
        let (contrastive, caption) = coca_loss(
            float(&file, "image_features", &device),
            float(&file, "text_features", &device),
            Tensor::from_floats([scale.ln() as f32], &device),
            float(&file, "logits", &device),
            labels(&file, &device).0,
            0,
            (1.0, 2.0),
        );
        let (contrastive, caption) = (values(contrastive)[0], values(caption)[0]);
        let (want_contrastive, want_caption) = (
            read(&file, "clip_loss").0[0],
            read(&file, "caption_loss").0[0],
        );
        println!(
            "{model}: contrastive {contrastive} vs {want_contrastive}, caption {caption} vs {want_caption}"
        );
        assert!((contrastive - want_contrastive).abs() <= 1e-5 * want_contrastive.abs().max(1.0));
        assert!((caption - want_caption).abs() <= 1e-5 * want_caption.abs().max(1.0));
    }
}

#[test]
fn caption_loss_skips_padding_and_its_gradient_is_softmax_minus_one_hot() {
    let device = Device::flex().autodiff();
    let bytes = std::fs::read(format!("{DIR}/coca_packed_kv.reference.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let logits = float::<3>(&file, "logits", &device).require_grad();
    let (labels, next, [batch, seq]) = labels(&file, &device);
    let (sum, count) = caption_loss_sum(logits.clone(), labels, 0);
    let counted = next.iter().filter(|&&l| l != 0).count();
    assert_eq!(count, counted);
    assert!(counted < batch * seq, "the fixture has padding");
    let grads = sum.backward();
    let grad = values(logits.grad(&grads).unwrap());
    let host = values(logits.inner());
    let vocab = host.len() / (batch * seq);
    let mut worst = 0.0f64;
    for (row, &label) in next.iter().enumerate() {
        let l = &host[row * vocab..(row + 1) * vocab];
        let max = l.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = l.iter().map(|x| (x - max).exp()).sum();
        for (v, x) in l.iter().enumerate() {
            let want = match label {
                0 => 0.0,
                _ => (x - max).exp() / z - (v as i64 == label) as u8 as f64,
            };
            worst = worst.max((grad[row * vocab + v] - want).abs());
        }
    }
    assert!(worst <= 1e-5, "gradient off by {worst}");
}
