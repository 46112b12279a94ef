//! `x · W + b` on Flex, forward and backward, as GEMMs over blocks of rows or columns.
//!
//! Two reasons not to use burn's matmul and add here. (1) Flex hands each matmul to the gemm
//! crate's own threading, which on some of these shapes is 2-3x slower than it should be
//! (measured on 2 cores: [2368, 192] x [192, 768], the ViT's fc1, at 60 GFLOP/s against 170 for
//! [1184, 192] x [192, 768]); splitting the rows into blocks, one single-threaded GEMM each,
//! runs every shape at the kernel's speed. (2) The bias is added as the GEMM stores its sums
//! (mm's fp32 kernels; the others accumulate onto it written first), and its gradient (column
//! sums) comes out of the same tasks that compute the weight gradient, instead of two more
//! single-threaded passes and an autodiff node. The weight gradient is a sum over rows, so each thread takes a block of rows (packing
//! only those rows of x and the output gradient) and the partial sums are added at the end.

use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::gemm::Rhs;
use super::matrix::Matrix;
use super::{MatmulPrecision, Output};

/// What the backward pass needs from the forward one.
#[derive(Debug, Clone)]
pub struct Saved {
    pub x: FlexTensor,
    pub weight: FlexTensor,
    /// The forward pass's precision, which the backward GEMMs keep.
    pub precision: MatmulPrecision,
}

/// Blocks of `len` split for the pool: about four per thread, multiples of 16, at least 32.
fn block_len(len: usize) -> usize {
    let blocks = 4 * rayon::current_num_threads();
    len.div_ceil(blocks).next_multiple_of(16).max(32)
}

/// `x · weight + bias` for `x` `[rows, d_in]`, `weight` `[d_in, d_out]`, `bias` `[d_out]`.
pub fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    precision: MatmulPrecision,
) -> FlexTensor {
    let (x, w) = (Matrix::of(x), Matrix::of(weight));
    assert_eq!(x.cols, w.rows, "x and weight do not chain");
    let weights = Rhs::new(w, precision);
    let bias = &bias.storage::<f32>()[..w.cols];
    let (rows, d_out) = (x.rows, w.cols);
    by_row_blocks(rows, d_out, |first, dst| {
        let rows = dst.len() / d_out;
        let out = Matrix::row_major(dst.as_mut_ptr().cast(), rows, d_out);
        // SAFETY: out is these rows of the output, which this writes completely.
        unsafe { weights.multiply_plus_bias(out, x.block(first, rows, 0, x.cols), bias) };
    })
}

/// A new `[rows, cols]` tensor whose blocks of rows `fill` writes completely, in parallel;
/// `fill` gets the first row's index and the block's uninitialised storage.
fn by_row_blocks(
    rows: usize,
    cols: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> FlexTensor {
    let mut out = Output::new(Shape::new([rows, cols]));
    let block = block_len(rows);
    out.data.spare_capacity_mut()[..rows * cols]
        .par_chunks_mut(block * cols)
        .enumerate()
        .for_each(|(i, dst)| fill(i * block, dst));
    // SAFETY: `fill` writes every element of every block.
    unsafe { out.finish() }
}

/// Gradients of x, weight and bias given the output's gradient, each only where `wanted` (the
/// patch embedding's input and frozen layers need none: their GEMMs are skipped).
/// `grad` must be contiguous.
pub fn backward(saved: &Saved, grad: &FlexTensor, wanted: [bool; 3]) -> [Option<FlexTensor>; 3] {
    let (x, w, dy) = (
        Matrix::of(&saved.x),
        Matrix::of(&saved.weight),
        Matrix::of(grad),
    );
    let (rows, d_in, d_out) = (x.rows, x.cols, w.cols);

    // dx = dy · wᵀ, by blocks of rows.
    let dx = wanted[0].then(|| {
        let w_t = Rhs::new(w.transposed(), saved.precision);
        by_row_blocks(rows, d_in, |first, dst| {
            let rows = dst.len() / d_in;
            let dx = Matrix::row_major(dst.as_mut_ptr().cast(), rows, d_in);
            let dy = dy.block(first, rows, 0, d_out);
            // SAFETY: dx is these rows of dx; gemm writes all of them.
            unsafe { w_t.multiply(dx, dy, 1.0, false) };
        })
    });
    if !(wanted[1] || wanted[2]) {
        return [dx, None, None];
    }

    // dw = xᵀ · dy and db = column sums of dy, as partial sums over one block of rows per
    // thread (each packs only its own rows of x and dy), added up after.
    let dy_values = &grad.storage::<f32>()[..rows * d_out];
    let threads = rayon::current_num_threads().min(rows.div_ceil(256)).max(1);
    let block = rows.div_ceil(threads);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let (start, len) = (t * block, block.min(rows.saturating_sub(t * block)));
            let mut dw = vec![0.0f32; if wanted[1] { d_in * d_out } else { 0 }];
            let mut db = vec![0.0f32; d_out];
            if len > 0 {
                if wanted[1] {
                    let x = x.block(start, len, 0, d_in).transposed();
                    let dy = dy.block(start, len, 0, d_out);
                    let out = Matrix::row_major(dw.as_mut_ptr(), d_in, d_out);
                    // SAFETY: dw holds d_in rows of d_out floats.
                    unsafe { Rhs::new(dy, saved.precision).multiply(out, x, 1.0, false) };
                }
                for row in dy_values[start * d_out..(start + len) * d_out].chunks(d_out) {
                    db.iter_mut().zip(row).for_each(|(db, &g)| *db += g);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (Vec::new(), Vec::new());
    for (part_dw, part_db) in partials {
        if dw.is_empty() {
            (dw, db) = (part_dw, part_db);
        } else {
            dw.iter_mut().zip(part_dw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(part_db).for_each(|(a, b)| *a += b);
        }
    }
    let tensor = |values: Vec<f32>, shape: Vec<usize>| {
        FlexTensor::from_data(burn::tensor::TensorData::new(values, shape))
    };
    [
        dx,
        wanted[1].then(|| tensor(dw, vec![d_in, d_out])),
        wanted[2].then(|| tensor(db, vec![d_out])),
    ]
}
