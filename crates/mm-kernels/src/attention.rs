//! Multi-head self-attention on Flex from packed q|k|v rows, forward and backward, one
//! (sequence, head) at a time.
//!
//! burn's autodiff runs attention as a dozen tensor ops (transpose, two batched matmuls, scale,
//! mask, max, subtract, exp, sum, divide), each allocating a `[batch, heads, seq, seq]` tensor
//! and recording a node, around permuted copies of q, k and v. Here the input is the output of
//! one q|k|v projection, `[batch * seq, 3 * width]`; each head reads its q, k and v through
//! strides, runs three small GEMMs forward and six backward (`gemm::matmul`), and writes its slice of `[batch * seq, width]` rows (forward) or of the packed
//! q|k|v gradient (backward) in place, so nothing is permuted or copied. The backward pass
//! recomputes each head's probabilities from q, k and the saved log-sum-exp rather than
//! keeping them.

use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;
use rayon::prelude::*;

use super::gemm::matmul;
use super::matrix::Matrix;
use super::{Output, exp_f32, lane_dot, lane_sum, vectorised};

/// What the backward pass needs from the forward one.
#[derive(Debug, Clone)]
pub struct Saved {
    pub qkv: FlexTensor,
    pub out: FlexTensor,
    /// `[batch * heads * seq]` log-sum-exp of each row of scaled scores.
    pub lse: FlexTensor,
    pub shape: Heads,
}

/// How `[batch * seq, width]` rows split into sequences and heads.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl Heads {
    /// The split of `qkv` (`[batch * seq, 3 * heads * head_dim]`) into heads.
    pub fn new(qkv: &FlexTensor, batch: usize, seq: usize, heads: usize, causal: bool) -> Self {
        let shape = qkv.layout().shape();
        assert_eq!(
            shape.num_dims(),
            2,
            "packed q|k|v must be [rows, 3 * width]"
        );
        assert_eq!(shape[0], batch * seq, "rows must be batch * seq");
        assert_eq!(
            shape[1] % (3 * heads),
            0,
            "3 * width must split into 3 x heads"
        );
        Self {
            batch,
            seq,
            heads,
            head_dim: shape[1] / (3 * heads),
            causal,
        }
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Number of keys query row `i` attends to.
    fn visible(&self, i: usize) -> usize {
        if self.causal { i + 1 } else { self.seq }
    }
}

impl Heads {
    /// Head `h`'s `seq x head_dim` block of sequence `b` in `rows` (`[batch * seq, cols]`),
    /// starting `part` widths in (0 q, 1 k, 2 v in the packed input).
    fn block(&self, rows: Matrix, b: usize, part: usize, h: usize) -> Matrix {
        let col = part * self.width() + h * self.head_dim;
        rows.block(b * self.seq, self.seq, col, self.head_dim)
    }
}

/// Runs `head` for every (sequence, head) pair in parallel, with two `seq x seq` scratch
/// buffers per worker.
fn for_each_head(shape: &Heads, head: impl Fn(usize, usize, &mut [f32], &mut [f32]) + Sync) {
    let seq = shape.seq;
    (0..shape.batch * shape.heads)
        .into_par_iter()
        .for_each_init(
            || (vec![0.0f32; seq * seq], vec![0.0f32; seq * seq]),
            |(a, b), bh| head(bh / shape.heads, bh % shape.heads, a, b),
        );
}

/// A `seq x seq` row-major scratch buffer as a matrix.
fn square(buffer: &mut [f32], seq: usize) -> Matrix {
    Matrix::row_major(buffer.as_mut_ptr(), seq, seq)
}

/// `scores = scale * q kᵀ` for one head into a `seq x seq` row-major buffer.
fn scaled_scores(shape: &Heads, scores: &mut [f32], q: Matrix, k: Matrix) {
    let scale = (shape.head_dim as f32).powf(-0.5);
    // SAFETY: q and k are one head's blocks; scores holds seq * seq floats.
    unsafe { matmul(square(scores, shape.seq), q, k.transposed(), scale, false) };
}

/// Forward: `[batch * seq, width]` attention outputs (heads side by side, as the output
/// projection takes them) and each row's log-sum-exp.
pub fn forward(qkv: &FlexTensor, shape: Heads) -> (FlexTensor, FlexTensor) {
    let seq = shape.seq;
    let input = Matrix::of(qkv);
    let mut out = Output::new(Shape::new([shape.batch * seq, shape.width()]));
    let out_rows = out.matrix();
    let mut lse = Output::new(Shape::new([shape.batch * shape.heads, seq]));
    let lse_rows = lse.matrix();
    for_each_head(&shape, |b, h, scores, _| {
        let [q, k, v] = [0, 1, 2].map(|part| shape.block(input, b, part, h));
        scaled_scores(&shape, scores, q, k);
        // SAFETY: this task alone writes row b * heads + h of `lse`.
        let lse =
            unsafe { std::slice::from_raw_parts_mut(lse_rows.at(b * shape.heads + h, 0), seq) };
        vectorised(|| {
            for (i, (row, lse)) in scores.chunks_mut(seq).zip(lse).enumerate() {
                *lse = softmax_row(row, shape.visible(i));
            }
        });
        // SAFETY: this task alone writes head h's columns of sequence b's rows of `out`.
        unsafe {
            matmul(
                shape.block(out_rows, b, 0, h),
                square(scores, seq),
                v,
                1.0,
                false,
            )
        };
    });
    // SAFETY: every (sequence, head) block of both outputs was written above.
    unsafe { (out.finish(), lse.finish()) }
}

/// Softmax of `row[..visible]` in place (the rest set to 0); returns the row's log-sum-exp.
/// Call inside [`vectorised`]: the exponentials and sums run a vector at a time.
#[inline(always)]
fn softmax_row(row: &mut [f32], visible: usize) -> f32 {
    let (live, masked) = row.split_at_mut(visible);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    live.iter_mut().for_each(|x| *x = exp_f32(*x - max));
    let sum = lane_sum(live, |x| x);
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
    masked.fill(0.0);
    max + sum.ln()
}

/// Backward: the gradient of the packed q|k|v rows, `[batch * seq, 3 * width]`, given the
/// gradient of the forward output.
pub fn backward(saved: &Saved, grad_out: &FlexTensor) -> FlexTensor {
    let shape = saved.shape;
    let (seq, dim) = (shape.seq, shape.head_dim);
    let scale = (dim as f32).powf(-0.5);
    let (input, out, grad) = (
        Matrix::of(&saved.qkv),
        Matrix::of(&saved.out),
        Matrix::of(grad_out),
    );
    let lse = &saved.lse.storage::<f32>()[..shape.batch * shape.heads * seq];
    let mut dqkv = Output::new(Shape::new([shape.batch * seq, 3 * shape.width()]));
    let d = dqkv.matrix();
    for_each_head(&shape, |b, h, p, dp| {
        let [q, k, v] = [0, 1, 2].map(|part| shape.block(input, b, part, h));
        let [dq, dk, dv] = [0, 1, 2].map(|part| shape.block(d, b, part, h));
        let (o, g) = (shape.block(out, b, 0, h), shape.block(grad, b, 0, h));
        // The probabilities again, from the scores and the saved log-sum-exp.
        scaled_scores(&shape, p, q, k);
        let lse = &lse[(b * shape.heads + h) * seq..][..seq];
        vectorised(|| {
            for (i, row) in p.chunks_mut(seq).enumerate() {
                let (live, masked) = row.split_at_mut(shape.visible(i));
                live.iter_mut().for_each(|x| *x = exp_f32(*x - lse[i]));
                masked.fill(0.0);
            }
        });
        // SAFETY: reads stay inside this head's blocks; this task alone writes head h's
        // columns of sequence b's rows of the q|k|v gradient.
        unsafe {
            // dP = dO vᵀ, dV = Pᵀ dO
            matmul(square(dp, seq), g, v.transposed(), 1.0, false);
            matmul(dv, square(p, seq).transposed(), g, 1.0, false);
        }
        // dS = P ⊙ (dP - rowsum(dP ⊙ P)), where rowsum(dP ⊙ P) = dO · O for each row.
        vectorised(|| {
            for (i, (p, ds)) in p.chunks(seq).zip(dp.chunks_mut(seq)).enumerate() {
                // SAFETY: row i of this head's blocks holds head_dim contiguous floats.
                let (g, o) = unsafe {
                    (
                        std::slice::from_raw_parts(g.at(i, 0), dim),
                        std::slice::from_raw_parts(o.at(i, 0), dim),
                    )
                };
                let dot = lane_dot(g, o);
                for (ds, &p) in ds.iter_mut().zip(p) {
                    *ds = p * (*ds - dot);
                }
            }
        });
        // SAFETY: as above.
        unsafe {
            // dQ = scale * dS k, dK = scale * dSᵀ q
            let ds = square(dp, seq);
            matmul(dq, ds, k, scale, false);
            matmul(dk, ds.transposed(), q, scale, false);
        }
    });
    // SAFETY: every (sequence, head) block of q, k and v's columns was written above.
    unsafe { dqkv.finish() }
}
