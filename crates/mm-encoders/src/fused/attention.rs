//! Multi-head self-attention on Flex from packed q|k|v rows, forward and backward, one
//! (sequence, head) at a time.
//!
//! burn's autodiff runs attention as a dozen tensor ops (transpose, two batched matmuls, scale,
//! mask, max, subtract, exp, sum, divide), each allocating a `[batch, heads, seq, seq]` tensor
//! and recording a node, around permuted copies of q, k and v. Here the input is the output of
//! one q|k|v projection, `[batch * seq, 3 * width]`; each head reads its q, k and v through
//! strides, runs three small GEMMs forward and six backward (the gemm crate, Flex's own
//! kernel), and writes its slice of `[batch * seq, width]` rows (forward) or of the packed
//! q|k|v gradient (backward) in place, so nothing is permuted or copied. The backward pass
//! recomputes each head's probabilities from q, k and the saved log-sum-exp rather than
//! keeping them.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::{Output, exp_f32};

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

/// One `seq x head_dim` matrix inside a row-major `[batch * seq, cols]` buffer: base pointer of
/// the buffer, its row stride, and the column where this head's block starts.
#[derive(Clone, Copy)]
struct Rows {
    ptr: *mut f32,
    row_stride: isize,
    col_stride: isize,
}

// Inputs are only read; outputs are written at disjoint (sequence, head) blocks.
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Rows {
    /// The 2-D tensor's storage as rows (any strides).
    fn of(tensor: &FlexTensor) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "fused attention takes f32");
        let layout = tensor.layout();
        assert_eq!(layout.num_dims(), 2, "fused attention takes [rows, cols]");
        let strides = layout.strides();
        let storage = tensor.storage::<f32>().as_ptr();
        Self {
            // SAFETY: start_offset is inside the storage Flex allocated for this layout.
            ptr: unsafe { storage.add(layout.start_offset()) as *mut f32 },
            row_stride: strides[0],
            col_stride: strides[1],
        }
    }

    /// Start of row `r`.
    fn row(&self, r: usize) -> *mut f32 {
        // SAFETY: callers pass a row inside the buffer.
        unsafe { self.ptr.offset(r as isize * self.row_stride) }
    }

    /// The `seq x head_dim` block of sequence `b`, starting at column `col`.
    fn block(&self, shape: &Heads, b: usize, col: usize) -> (*mut f32, isize, isize) {
        let offset = (b * shape.seq) as isize * self.row_stride + col as isize * self.col_stride;
        // SAFETY: callers pass b < batch and col + head_dim <= the buffer's columns.
        (
            unsafe { self.ptr.offset(offset) },
            self.row_stride,
            self.col_stride,
        )
    }
}

impl Output {
    fn rows(&mut self) -> Rows {
        let cols = self.shape[1];
        Rows {
            ptr: self.data.as_mut_ptr(),
            row_stride: cols as isize,
            col_stride: 1,
        }
    }
}

/// `dst = beta * lhs · rhs` (`read_dst`: `dst += ...`) for operands given as
/// `(pointer, row stride, column stride)`.
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
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
            false,
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

fn transposed((ptr, rows, cols): (*mut f32, isize, isize)) -> (*const f32, isize, isize) {
    (ptr, cols, rows)
}

fn constant((ptr, rows, cols): (*mut f32, isize, isize)) -> (*const f32, isize, isize) {
    (ptr, rows, cols)
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

/// `scores = scale * q kᵀ` for one head into a `seq x seq` row-major buffer.
fn scaled_scores(
    shape: &Heads,
    scores: &mut [f32],
    q: (*mut f32, isize, isize),
    k: (*mut f32, isize, isize),
) {
    let seq = shape.seq;
    // SAFETY: q and k are one head's blocks; scores holds seq * seq floats.
    unsafe {
        matmul(
            (seq, seq, shape.head_dim),
            (scores.as_mut_ptr(), seq as isize, 1),
            constant(q),
            transposed(k),
            (shape.head_dim as f32).powf(-0.5),
        );
    }
}

/// Forward: `[batch * seq, width]` attention outputs (heads side by side, as the output
/// projection takes them) and each row's log-sum-exp.
pub fn forward(qkv: &FlexTensor, shape: Heads) -> (FlexTensor, FlexTensor) {
    let (seq, dim, width) = (shape.seq, shape.head_dim, shape.width());
    let input = Rows::of(qkv);
    let mut out = Output::new(Shape::new([shape.batch * seq, width]));
    let out_rows = out.rows();
    let mut lse = Output::new(Shape::new([shape.batch * shape.heads, seq]));
    let lse_rows = lse.rows();
    for_each_head(&shape, |b, h, scores, _| {
        let q = input.block(&shape, b, h * dim);
        let k = input.block(&shape, b, width + h * dim);
        let v = input.block(&shape, b, 2 * width + h * dim);
        scaled_scores(&shape, scores, q, k);
        // SAFETY: this task alone writes row b * heads + h of `lse`.
        let lse = unsafe { std::slice::from_raw_parts_mut(lse_rows.row(b * shape.heads + h), seq) };
        for (i, (row, lse)) in scores.chunks_mut(seq).zip(lse).enumerate() {
            *lse = softmax_row(row, shape.visible(i));
        }
        // SAFETY: this task alone writes head h's columns of sequence b's rows of `out`.
        unsafe {
            matmul(
                (seq, dim, seq),
                out_rows.block(&shape, b, h * dim),
                (scores.as_ptr(), seq as isize, 1),
                constant(v),
                1.0,
            );
        }
    });
    // SAFETY: every (sequence, head) block of both outputs was written above.
    unsafe { (out.finish(), lse.finish()) }
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

/// Backward: the gradient of the packed q|k|v rows, `[batch * seq, 3 * width]`, given the
/// gradient of the forward output.
pub fn backward(saved: &Saved, grad_out: &FlexTensor) -> FlexTensor {
    let shape = saved.shape;
    let (seq, dim, width) = (shape.seq, shape.head_dim, shape.width());
    let scale = (dim as f32).powf(-0.5);
    let (input, out, grad) = (
        Rows::of(&saved.qkv),
        Rows::of(&saved.out),
        Rows::of(grad_out),
    );
    let lse = &saved.lse.storage::<f32>()[..shape.batch * shape.heads * seq];
    let mut dqkv = Output::new(Shape::new([shape.batch * seq, 3 * width]));
    let d = dqkv.rows();
    for_each_head(&shape, |b, h, p, dp| {
        let [q, k, v] = [0, 1, 2].map(|part| input.block(&shape, b, part * width + h * dim));
        let [dq, dk, dv] = [0, 1, 2].map(|part| d.block(&shape, b, part * width + h * dim));
        let (o, g) = (
            out.block(&shape, b, h * dim),
            grad.block(&shape, b, h * dim),
        );
        // The probabilities again, from the scores and the saved log-sum-exp.
        scaled_scores(&shape, p, q, k);
        let lse = &lse[(b * shape.heads + h) * seq..][..seq];
        for (i, row) in p.chunks_mut(seq).enumerate() {
            let (live, masked) = row.split_at_mut(shape.visible(i));
            live.iter_mut().for_each(|x| *x = exp_f32(*x - lse[i]));
            masked.fill(0.0);
        }
        // SAFETY: reads stay inside this head's blocks; this task alone writes head h's
        // columns of sequence b's rows of the q|k|v gradient.
        unsafe {
            // dP = dO vᵀ, dV = Pᵀ dO
            let pt = (p.as_ptr(), 1, seq as isize);
            matmul(
                (seq, seq, dim),
                (dp.as_mut_ptr(), seq as isize, 1),
                constant(g),
                transposed(v),
                1.0,
            );
            matmul((seq, dim, seq), dv, pt, constant(g), 1.0);
        }
        // dS = P ⊙ (dP - rowsum(dP ⊙ P)), where rowsum(dP ⊙ P) = dO · O for each row.
        for (i, (p, ds)) in p.chunks(seq).zip(dp.chunks_mut(seq)).enumerate() {
            let at = |(ptr, rs, cs): (*mut f32, isize, isize), j: usize| {
                // SAFETY: i < seq and j < head_dim inside this head's block.
                unsafe { *ptr.offset(i as isize * rs + j as isize * cs) }
            };
            let dot: f32 = (0..dim).map(|j| at(g, j) * at(o, j)).sum();
            for (ds, &p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - dot);
            }
        }
        // SAFETY: as above.
        unsafe {
            // dQ = scale * dS k, dK = scale * dSᵀ q
            let (ds, dst) = (
                (dp.as_ptr(), seq as isize, 1),
                (dp.as_ptr(), 1, seq as isize),
            );
            matmul((seq, dim, seq), dq, ds, constant(k), scale);
            matmul((seq, dim, seq), dk, dst, constant(q), scale);
        }
    });
    // SAFETY: every (sequence, head) block of q, k and v's columns was written above.
    unsafe { dqkv.finish() }
}
