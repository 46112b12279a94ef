//! Scaled dot-product attention on Flex, forward and backward, one (batch, head) at a time.
//!
//! burn's autodiff runs attention as a dozen tensor ops (transpose, two batched matmuls, scale,
//! mask, max, subtract, exp, sum, divide), each allocating a `[batch, heads, seq, seq]` tensor
//! and recording a node, and the heads are permuted into contiguous copies around it. Here each
//! head is three small GEMMs forward and six backward (gemm crate, the kernel Flex itself
//! uses), reading q, k, v and writing outputs through their strides. Outputs are laid out as
//! `[batch, seq, heads, head_dim]` and returned as `[batch, heads, seq, head_dim]` views, so the
//! caller's merge of the heads back into rows is free. The backward pass recomputes each head's
//! probabilities from q, k and the saved log-sum-exp rather than keeping them.

use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{DType, Shape};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::exp_f32;

/// What the backward pass needs from the forward one.
#[derive(Debug, Clone)]
pub struct Saved {
    pub q: FlexTensor,
    pub k: FlexTensor,
    pub v: FlexTensor,
    pub out: FlexTensor,
    /// `[batch * heads * seq]` log-sum-exp of each row of scaled scores.
    pub lse: FlexTensor,
    pub causal: bool,
}

/// A `[batch, heads, seq, head_dim]` f32 tensor's storage and element strides.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    strides: [isize; 4],
}

// The pointers are only read (inputs) or written at disjoint (batch, head) blocks (outputs).
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    fn of(tensor: &FlexTensor) -> Self {
        Self::at(tensor, tensor.storage::<f32>().as_ptr())
    }

    /// A view whose pointer may be written through (it comes from a unique borrow).
    fn of_mut(tensor: &mut FlexTensor) -> Self {
        let ptr = tensor.storage_mut::<f32>().as_mut_ptr();
        Self::at(tensor, ptr)
    }

    fn at(tensor: &FlexTensor, storage: *const f32) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "fused attention takes f32");
        let layout = tensor.layout();
        assert_eq!(
            layout.num_dims(),
            4,
            "attention inputs are [batch, heads, seq, dim]"
        );
        let strides = layout.strides();
        Self {
            // SAFETY: start_offset is inside the storage Flex allocated for this layout.
            ptr: unsafe { storage.add(layout.start_offset()) },
            strides: [strides[0], strides[1], strides[2], strides[3]],
        }
    }

    /// Pointer to element (b, h, 0, 0).
    fn head(&self, b: usize, h: usize) -> *const f32 {
        // SAFETY: callers pass b < batch and h < heads of the viewed tensor.
        unsafe {
            self.ptr
                .offset(b as isize * self.strides[0] + h as isize * self.strides[1])
        }
    }

    fn row_stride(&self) -> isize {
        self.strides[2]
    }

    fn col_stride(&self) -> isize {
        self.strides[3]
    }
}

/// A fresh `[batch, heads, seq, dim]` tensor stored as `[batch, seq, heads, dim]`, and its view.
fn heads_major_output(dims: [usize; 4]) -> (FlexTensor, View) {
    let [batch, heads, seq, dim] = dims;
    let storage = FlexTensor::empty(Shape::new([batch, seq, heads, dim]), DType::F32);
    let strides = vec![
        (seq * heads * dim) as isize,
        dim as isize,
        (heads * dim) as isize,
        1,
    ];
    let mut tensor = storage.with_layout(Layout::new(Shape::new(dims), strides, 0));
    let view = View::of_mut(&mut tensor);
    (tensor, view)
}

fn dims(tensor: &FlexTensor) -> [usize; 4] {
    let shape = tensor.layout().shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// `dst = beta * lhs · rhs` (`read_dst`: `dst += ...`) for row-major-described operands:
/// `(pointer, row stride, column stride)`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    read_dst: bool,
) {
    // SAFETY: the caller guarantees every pointer addresses its (m|k) x (k|n) block.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            read_dst,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Number of keys row `i` attends to.
fn visible(i: usize, seq: usize, causal: bool) -> usize {
    if causal { i + 1 } else { seq }
}

/// `scores = scale * q kᵀ` for one head, into a `seq x seq` row-major buffer.
fn scaled_scores(
    scores: &mut [f32],
    q: *const f32,
    k: *const f32,
    views: (&View, &View),
    seq: usize,
    dim: usize,
    scale: f32,
) {
    let (qv, kv) = views;
    // SAFETY: q and k point at one head of their views; scores holds seq * seq floats.
    unsafe {
        matmul(
            (seq, seq, dim),
            (scores.as_mut_ptr(), seq as isize, 1),
            (q, qv.row_stride(), qv.col_stride()),
            (k, kv.col_stride(), kv.row_stride()),
            scale,
            false,
        );
    }
}

/// Forward: the output (a `[batch, heads, seq, dim]` view of `[batch, seq, heads, dim]`
/// storage) and the per-row log-sum-exp.
pub fn forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    causal: bool,
) -> (FlexTensor, FlexTensor) {
    let [batch, heads, seq, dim] = dims(q);
    assert_eq!(dims(k), [batch, heads, seq, dim], "k must match q");
    assert_eq!(dims(v), [batch, heads, seq, dim], "v must match q");
    let scale = (dim as f32).powf(-0.5);
    let (qv, kv, vv) = (View::of(q), View::of(k), View::of(v));
    let (out, ov) = heads_major_output([batch, heads, seq, dim]);
    let mut lse = FlexTensor::empty(Shape::new([batch * heads * seq]), DType::F32);
    lse.storage_mut::<f32>()[..batch * heads * seq]
        .par_chunks_mut(seq)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; seq * seq],
            |scores, (bh, lse)| {
                let (b, h) = (bh / heads, bh % heads);
                scaled_scores(
                    scores,
                    qv.head(b, h),
                    kv.head(b, h),
                    (&qv, &kv),
                    seq,
                    dim,
                    scale,
                );
                for (i, (row, lse)) in scores.chunks_mut(seq).zip(lse.iter_mut()).enumerate() {
                    *lse = softmax_row(row, visible(i, seq, causal));
                }
                // SAFETY: this task alone writes head (b, h) of `out`.
                unsafe {
                    matmul(
                        (seq, dim, seq),
                        (ov.head(b, h) as *mut f32, ov.row_stride(), ov.col_stride()),
                        (scores.as_ptr(), seq as isize, 1),
                        (vv.head(b, h), vv.row_stride(), vv.col_stride()),
                        1.0,
                        false,
                    );
                }
            },
        );
    (out, lse)
}

/// Softmax of `row[..visible]` in place (the rest set to 0); returns the row's log-sum-exp.
fn softmax_row(row: &mut [f32], visible: usize) -> f32 {
    let (live, masked) = row.split_at_mut(visible);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in live.iter_mut() {
        *x = exp_f32(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
    masked.fill(0.0);
    max + sum.ln()
}

/// Backward: gradients of q, k and v (same layout as the forward output) given the
/// output's gradient.
pub fn backward(saved: &Saved, grad_out: &FlexTensor) -> [FlexTensor; 3] {
    let [batch, heads, seq, dim] = dims(&saved.q);
    let scale = (dim as f32).powf(-0.5);
    let (qv, kv, vv, ov) = (
        View::of(&saved.q),
        View::of(&saved.k),
        View::of(&saved.v),
        View::of(&saved.out),
    );
    let gv = View::of(grad_out);
    let lse = &saved.lse.storage::<f32>()[..batch * heads * seq];
    let (dq, dqv) = heads_major_output([batch, heads, seq, dim]);
    let (dk, dkv) = heads_major_output([batch, heads, seq, dim]);
    let (dv, dvv) = heads_major_output([batch, heads, seq, dim]);
    (0..batch * heads).into_par_iter().for_each_init(
        || (vec![0.0f32; seq * seq], vec![0.0f32; seq * seq]),
        |(p, dp), bh| {
            let (b, h) = (bh / heads, bh % heads);
            let (q, k, v, o, g) = (
                qv.head(b, h),
                kv.head(b, h),
                vv.head(b, h),
                ov.head(b, h),
                gv.head(b, h),
            );
            // Probabilities again, from the scores and the saved log-sum-exp.
            scaled_scores(p, q, k, (&qv, &kv), seq, dim, scale);
            let lse = &lse[bh * seq..(bh + 1) * seq];
            for (i, row) in p.chunks_mut(seq).enumerate() {
                let (live, masked) = row.split_at_mut(visible(i, seq, saved.causal));
                live.iter_mut().for_each(|x| *x = exp_f32(*x - lse[i]));
                masked.fill(0.0);
            }
            // SAFETY: reads stay inside heads (b, h) of the saved tensors; this task alone
            // writes head (b, h) of dq, dk and dv.
            unsafe {
                // dP = dO vᵀ
                matmul(
                    (seq, seq, dim),
                    (dp.as_mut_ptr(), seq as isize, 1),
                    (g, gv.row_stride(), gv.col_stride()),
                    (v, vv.col_stride(), vv.row_stride()),
                    1.0,
                    false,
                );
                // dV = Pᵀ dO
                matmul(
                    (seq, dim, seq),
                    (
                        dvv.head(b, h) as *mut f32,
                        dvv.row_stride(),
                        dvv.col_stride(),
                    ),
                    (p.as_ptr(), 1, seq as isize),
                    (g, gv.row_stride(), gv.col_stride()),
                    1.0,
                    false,
                );
            }
            // dS = P ⊙ (dP - rowsum(dO ⊙ O)); rowsum(dP ⊙ P) equals dO · O per row.
            for i in 0..seq {
                let mut dot = 0.0;
                for d in 0..dim {
                    // SAFETY: i < seq and d < dim inside head (b, h).
                    unsafe {
                        dot += *g
                            .offset(i as isize * gv.row_stride() + d as isize * gv.col_stride())
                            * *o.offset(
                                i as isize * ov.row_stride() + d as isize * ov.col_stride(),
                            );
                    }
                }
                let (p, dp) = (&p[i * seq..(i + 1) * seq], &mut dp[i * seq..(i + 1) * seq]);
                for (ds, &p) in dp.iter_mut().zip(p) {
                    *ds = p * (*ds - dot);
                }
            }
            // SAFETY: as above.
            unsafe {
                // dQ = scale * dS k
                matmul(
                    (seq, dim, seq),
                    (
                        dqv.head(b, h) as *mut f32,
                        dqv.row_stride(),
                        dqv.col_stride(),
                    ),
                    (dp.as_ptr(), seq as isize, 1),
                    (k, kv.row_stride(), kv.col_stride()),
                    scale,
                    false,
                );
                // dK = scale * dSᵀ q
                matmul(
                    (seq, dim, seq),
                    (
                        dkv.head(b, h) as *mut f32,
                        dkv.row_stride(),
                        dkv.col_stride(),
                    ),
                    (dp.as_ptr(), 1, seq as isize),
                    (q, qv.row_stride(), qv.col_stride()),
                    scale,
                    false,
                );
            }
        },
    );
    [dq, dk, dv]
}
