//! LayerNorm over the last dimension on Flex, forward and backward, row by row.
//!
//! Flex normalises in one fused pass, but burn's autodiff records LayerNorm as its composite
//! (mean, subtract, square, mean, add, sqrt, divide, scale, shift), each a single-threaded pass
//! with its own backward. Here the forward keeps each row's mean and 1/std, and the backward is
//! one parallel pass over the rows that also accumulates the gain and bias gradients.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape};
use rayon::prelude::*;

use super::{LANES, Output, lane_sum, vectorised};

/// Rows per rayon task.
const ROWS: usize = 64;

/// What the backward pass needs from the forward one.
#[derive(Debug, Clone)]
pub struct Saved {
    pub x: FlexTensor,
    pub gamma: FlexTensor,
    /// `[rows, 2]`: each row's mean and 1 / sqrt(variance + eps).
    pub stats: FlexTensor,
}

fn f32s(tensor: &FlexTensor) -> &[f32] {
    assert_eq!(tensor.dtype(), DType::F32, "fused layer norm takes f32");
    assert!(tensor.is_contiguous() && tensor.layout().start_offset() == 0);
    &tensor.storage::<f32>()[..tensor.layout().num_elements()]
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta` per row of the contiguous `x`; returns the
/// result and the per-row statistics.
pub fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
) -> (FlexTensor, FlexTensor) {
    let (xs, gamma, beta) = (f32s(x), f32s(gamma), f32s(beta));
    let width = gamma.len();
    let rows = xs.len() / width;
    let mut out = Output::new(x.layout().shape().clone());
    let mut stats = Output::new(Shape::new([rows, 2]));
    out.data.spare_capacity_mut()[..xs.len()]
        .par_chunks_mut(ROWS * width)
        .zip(stats.data.spare_capacity_mut()[..2 * rows].par_chunks_mut(2 * ROWS))
        .zip(xs.par_chunks(ROWS * width))
        .for_each(|((out, stats), xs)| {
            vectorised(|| {
                for ((out, stat), x) in out
                    .chunks_mut(width)
                    .zip(stats.chunks_mut(2))
                    .zip(xs.chunks(width))
                {
                    let mean = lane_sum(x, |v| v) / width as f32;
                    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / width as f32;
                    let rstd = 1.0 / (var + eps as f32).sqrt();
                    for (((out, &x), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
                        out.write((x - mean) * rstd * g + b);
                    }
                    stat[0].write(mean);
                    stat[1].write(rstd);
                }
            })
        });
    // SAFETY: every row of both outputs was written.
    unsafe { (out.finish(), stats.finish()) }
}

/// Gradients of x, gamma and beta given the output's (contiguous) gradient.
pub fn backward(saved: &Saved, grad: &FlexTensor) -> [FlexTensor; 3] {
    let (xs, gamma, stats, dys) = (
        f32s(&saved.x),
        f32s(&saved.gamma),
        f32s(&saved.stats),
        f32s(grad),
    );
    let width = gamma.len();
    let mut dx = Output::new(saved.x.layout().shape().clone());
    // One partial sum of the gain and bias gradients per block of ROWS rows, added in block
    // order: a rayon fold would group blocks by how threads happened to steal work, and the
    // float sums (so the trained weights) would differ from run to run.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx.data.spare_capacity_mut()[..xs.len()]
        .par_chunks_mut(ROWS * width)
        .zip(xs.par_chunks(ROWS * width))
        .zip(dys.par_chunks(ROWS * width))
        .zip(stats.par_chunks(2 * ROWS))
        .map(|(((dx, xs), dys), stats)| {
            let (mut dgamma, mut dbeta) = (vec![0.0f32; width], vec![0.0f32; width]);
            vectorised(|| {
                for (r, dx) in dx.chunks_mut(width).enumerate() {
                    let (x, dy) = (&xs[r * width..][..width], &dys[r * width..][..width]);
                    let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
                    // With xhat = (x - mean) * rstd and dxhat = dy * gamma:
                    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
                    // One pass, a vector of lanes at a time: both sums in lanes (added in a
                    // fixed order), the gain and bias gradients alongside.
                    let (mut sum, mut sum_xhat) = ([0.0f32; LANES], [0.0f32; LANES]);
                    let step = |x: &[f32],
                                dy: &[f32],
                                g: &[f32],
                                dg: &mut [f32],
                                db: &mut [f32],
                                sum: &mut [f32; LANES],
                                sum_xhat: &mut [f32; LANES]| {
                        for l in 0..x.len().min(LANES) {
                            let xhat = (x[l] - mean) * rstd;
                            let dxhat = dy[l] * g[l];
                            sum[l] += dxhat;
                            sum_xhat[l] += dxhat * xhat;
                            dg[l] += dy[l] * xhat;
                            db[l] += dy[l];
                        }
                    };
                    let blocks = x
                        .chunks_exact(LANES)
                        .zip(dy.chunks_exact(LANES))
                        .zip(gamma.chunks_exact(LANES))
                        .zip(dgamma.chunks_exact_mut(LANES))
                        .zip(dbeta.chunks_exact_mut(LANES));
                    for ((((x, dy), g), dg), db) in blocks {
                        step(x, dy, g, dg, db, &mut sum, &mut sum_xhat);
                    }
                    let tail = width - width % LANES;
                    step(
                        &x[tail..],
                        &dy[tail..],
                        &gamma[tail..],
                        &mut dgamma[tail..],
                        &mut dbeta[tail..],
                        &mut sum,
                        &mut sum_xhat,
                    );
                    let a = sum.iter().sum::<f32>() / width as f32;
                    let b = sum_xhat.iter().sum::<f32>() / width as f32;
                    for (((dx, &x), &dy), &g) in dx.iter_mut().zip(x).zip(dy).zip(gamma) {
                        dx.write(rstd * (dy * g - a - (x - mean) * rstd * b));
                    }
                }
            });
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; width], vec![0.0f32; width]);
    for (g, b) in partials {
        dgamma.iter_mut().zip(g).for_each(|(a, g)| *a += g);
        dbeta.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
    let vector =
        |values: Vec<f32>| FlexTensor::from_data(burn::tensor::TensorData::new(values, [width]));
    // SAFETY: every row of dx was written.
    [unsafe { dx.finish() }, vector(dgamma), vector(dbeta)]
}
