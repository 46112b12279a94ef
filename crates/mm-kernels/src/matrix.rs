//! Strided f32 matrices inside Flex storage, and the gemm crate's fp32 GEMM on them.

use burn::backend::flex::FlexTensor;
use burn::tensor::DType;
use gemm::{Parallelism, gemm};

use super::Output;

/// A `rows x cols` block of f32s at `ptr` with the given element strides (any layout, including
/// transposed and sliced views).
#[derive(Clone, Copy)]
pub(super) struct Matrix {
    pub ptr: *mut f32,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

// Kernels only read inputs, and write outputs at blocks no other task touches.
unsafe impl Send for Matrix {}
unsafe impl Sync for Matrix {}

impl Matrix {
    /// A 2-D f32 tensor's storage, read only.
    pub fn of(tensor: &FlexTensor) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "mm's fused kernels take f32");
        let layout = tensor.layout();
        assert_eq!(layout.num_dims(), 2, "expected a [rows, cols] tensor");
        let (shape, strides) = (layout.shape(), layout.strides());
        let storage = tensor.storage::<f32>().as_ptr();
        Self {
            // SAFETY: start_offset is inside the storage Flex allocated for this layout.
            ptr: unsafe { storage.add(layout.start_offset()) as *mut f32 },
            rows: shape[0],
            cols: shape[1],
            row_stride: strides[0],
            col_stride: strides[1],
        }
    }

    /// A row-major `rows x cols` buffer.
    pub fn row_major(ptr: *mut f32, rows: usize, cols: usize) -> Self {
        Self {
            ptr,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// Element (r, c).
    pub fn at(&self, r: usize, c: usize) -> *mut f32 {
        // SAFETY: callers stay inside the matrix.
        unsafe {
            self.ptr
                .offset(r as isize * self.row_stride + c as isize * self.col_stride)
        }
    }

    /// Rows `row..row + rows` and columns `col..col + cols`.
    pub fn block(self, row: usize, rows: usize, col: usize, cols: usize) -> Self {
        Self {
            ptr: self.at(row, col),
            rows,
            cols,
            ..self
        }
    }

    pub fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

impl Output {
    /// The 2-D output buffer as a matrix to write into.
    pub(super) fn matrix(&mut self) -> Matrix {
        Matrix::row_major(self.data.as_mut_ptr(), self.shape[0], self.shape[1])
    }
}

/// `dst = beta * lhs · rhs`, or `dst += beta * lhs · rhs` when `accumulate`, on the gemm
/// crate's kernels (which pick their instruction set themselves: only `gemm::Rhs` calls this,
/// where `MM_MAX_ISA` allows AVX-512); single-threaded.
///
/// # Safety
/// The three matrices must address valid memory, `dst` writable and, when `accumulate`,
/// initialised; `dst` must not overlap the operands.
pub(super) unsafe fn gemm_crate(
    dst: Matrix,
    lhs: Matrix,
    rhs: Matrix,
    beta: f32,
    accumulate: bool,
) {
    debug_assert!(lhs.cols == rhs.rows && dst.rows == lhs.rows && dst.cols == rhs.cols);
    // SAFETY: as the caller promises.
    unsafe {
        gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.ptr,
            dst.col_stride,
            dst.row_stride,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `out[j]` = lane j of each of `rows`, in order: an 8 x 8 transpose of 32-bit lanes (bf16
/// pairs, or f32s as their bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) fn transpose8(rows: [std::arch::x86_64::__m256i; 8]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    let (t0, t1) = (_mm256_unpacklo_epi32(r0, r1), _mm256_unpackhi_epi32(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_epi32(r2, r3), _mm256_unpackhi_epi32(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_epi32(r4, r5), _mm256_unpackhi_epi32(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_epi32(r6, r7), _mm256_unpackhi_epi32(r6, r7));
    // u0: lanes 0 and 4 of rows 0-3; u1: lanes 1 and 5; u2: 2 and 6; u3: 3 and 7 (u4-u7: rows 4-7).
    let (u0, u1) = (_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2));
    let (u2, u3) = (_mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3));
    let (u4, u5) = (_mm256_unpacklo_epi64(t4, t6), _mm256_unpackhi_epi64(t4, t6));
    let (u6, u7) = (_mm256_unpacklo_epi64(t5, t7), _mm256_unpackhi_epi64(t5, t7));
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}
