//! The per-rank shares of the losses (`local_loss`): over any partition of the batch's rows
//! they sum to the whole batch's loss, and so do their gradients, for CLIP and SigLIP.
#![allow(clippy::single_range_in_vec_init)] // Partitions of one part are meant.

use burn::tensor::{Device, Tensor, TensorData};
use mm_contrastive::{clip_loss, clip_loss_rows, siglip_loss, siglip_loss_rows};

fn features(n: usize, d: usize, seed: u32, device: &Device) -> Tensor<2> {
    // Deterministic, varied values without a random crate.
    let values: Vec<f32> = (0..n * d)
        .map(|i| ((i as f32 + 1.0) * (seed as f32 + 0.37)).sin())
        .collect();
    Tensor::from_data(TensorData::new(values, [n, d]), device)
}

fn flat<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

/// Loss and gradients (images, texts, scale, bias) of `loss` summed over `parts`.
fn summed(
    parts: &[std::ops::Range<usize>],
    loss: impl Fn(Tensor<2>, Tensor<2>, Tensor<1>, Tensor<1>, std::ops::Range<usize>) -> Tensor<1>,
) -> (f32, [Vec<f32>; 4]) {
    let device = Device::flex().autodiff();
    let image = features(10, 6, 1, &device).require_grad();
    let text = features(10, 6, 2, &device).require_grad();
    let scale = Tensor::<1>::from_floats([2.3], &device).require_grad();
    let bias = Tensor::<1>::from_floats([-1.5], &device).require_grad();
    let total = parts
        .iter()
        .map(|rows| {
            loss(
                image.clone(),
                text.clone(),
                scale.clone(),
                bias.clone(),
                rows.clone(),
            )
        })
        .reduce(|a, b| a + b)
        .unwrap();
    let value = flat(total.clone())[0];
    let grads = total.backward();
    let grad = |t: &Tensor<2>| flat(t.grad(&grads).unwrap());
    let grad1 = |t: &Tensor<1>| t.grad(&grads).map(flat).unwrap_or_else(|| vec![0.0]);
    (
        value,
        [grad(&image), grad(&text), grad1(&scale), grad1(&bias)],
    )
}

#[test]
fn clip_shares_over_any_partition_sum_to_the_batch_loss_and_gradients() {
    let (whole, whole_grads) = summed(&[0..10], |i, t, s, _, _| clip_loss(i, t, s));
    for parts in [vec![0..10], vec![0..5, 5..10], vec![0..3, 3..4, 4..10]] {
        let (value, grads) = summed(&parts, |i, t, s, _, rows| clip_loss_rows(i, t, s, rows));
        assert_close(&[value], &[whole], "loss");
        for (k, (g, w)) in grads.iter().zip(&whole_grads).enumerate() {
            assert_close(g, w, &format!("grad {k} of {parts:?}"));
        }
    }
    // A share is a share, not the whole: half the rows carry part of the loss.
    let (half, _) = summed(&[0..5], |i, t, s, _, rows| clip_loss_rows(i, t, s, rows));
    assert!(half > 0.0 && half < whole, "{half} vs {whole}");
}

#[test]
fn siglip_shares_over_any_partition_sum_to_the_batch_loss_and_gradients() {
    let (whole, whole_grads) = summed(&[0..10], |i, t, s, b, _| siglip_loss(i, t, s, b));
    for parts in [vec![0..5, 5..10], vec![0..1, 1..7, 7..10]] {
        let (value, grads) = summed(&parts, |i, t, s, b, rows| {
            siglip_loss_rows(i, t, s, b, rows)
        });
        assert_close(&[value], &[whole], "loss");
        for (k, (g, w)) in grads.iter().zip(&whole_grads).enumerate() {
            assert_close(g, w, &format!("grad {k} of {parts:?}"));
        }
    }
}
