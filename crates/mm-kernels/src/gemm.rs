//! The GEMMs the kernels make, in the precision their right-hand operand was prepared for, on
//! the kernel [`isa`](super::isa) picks: fp32 on the gemm crate's AVX-512 kernels or mm's own
//! ([`super::f32_gemm`], below AVX-512), or bf16 ([`super::bf16_gemm`]).

use super::MatmulPrecision;
use super::bf16_gemm::{self, PackedB};
use super::f32_gemm::{self, Kernel, PackedF32};
use super::matrix::{self, Matrix};

/// A GEMM's right-hand operand, packed once for the kernel it multiplies in and shared by every
/// block of rows (bf16 also rounds it; on CPUs without AVX512-BF16 bf16 falls back to fp32).
/// The gemm crate packs its own, per call.
pub(super) enum Rhs {
    GemmCrate(Matrix),
    F32(PackedF32),
    Bf16(PackedB),
}

impl Rhs {
    pub fn new(rhs: Matrix, precision: MatmulPrecision) -> Self {
        match (precision, Kernel::current()) {
            (MatmulPrecision::Bf16, _) if bf16_gemm::supported() => Rhs::Bf16(PackedB::new(rhs)),
            (_, Some(kernel)) => Rhs::F32(PackedF32::new(rhs, kernel)),
            (_, None) => Rhs::GemmCrate(rhs),
        }
    }

    /// `dst = beta * lhs · self`, or `dst += ...` when `accumulate`; single-threaded.
    ///
    /// # Safety
    /// As [`matmul`]; `dst` must have unit column stride for bf16.
    pub unsafe fn multiply(&self, dst: Matrix, lhs: Matrix, beta: f32, accumulate: bool) {
        // SAFETY: as the caller promises; each variant exists only where its kernel runs.
        unsafe {
            match self {
                Rhs::GemmCrate(rhs) => matrix::gemm_crate(dst, lhs, *rhs, beta, accumulate),
                Rhs::F32(rhs) => f32_gemm::matmul(dst, lhs, rhs, beta, accumulate),
                Rhs::Bf16(rhs) => bf16_gemm::matmul(dst, lhs, rhs, beta, accumulate),
            }
        }
    }

    /// `dst = bias + lhs · self` (`bias` broadcast over rows); single-threaded. mm's fp32
    /// kernels add the bias as they store; the others accumulate onto it written first.
    ///
    /// # Safety
    /// As [`Self::multiply`] (without `accumulate`); `bias` must hold the columns.
    pub unsafe fn multiply_plus_bias(&self, dst: Matrix, lhs: Matrix, bias: &[f32]) {
        if let Rhs::F32(rhs) = self {
            // SAFETY: as the caller promises.
            return unsafe { f32_gemm::matmul_plus_bias(dst, lhs, rhs, 1.0, bias) };
        }
        for r in 0..dst.rows {
            for (c, &b) in bias.iter().enumerate() {
                // SAFETY: (r, c) is inside dst (caller).
                unsafe { dst.at(r, c).write(b) };
            }
        }
        // SAFETY: as the caller promises; dst now holds the bias.
        unsafe { self.multiply(dst, lhs, 1.0, true) }
    }
}

/// `dst = beta * lhs · rhs`, or `dst += beta * lhs · rhs` when `accumulate`, in fp32;
/// single-threaded, as the kernels parallelise over blocks themselves.
///
/// # Safety
/// The three matrices must address valid memory, `dst` writable and, when `accumulate`,
/// initialised; `dst` must not overlap the operands.
pub(super) unsafe fn matmul(dst: Matrix, lhs: Matrix, rhs: Matrix, beta: f32, accumulate: bool) {
    // SAFETY: as the caller promises.
    unsafe { Rhs::new(rhs, MatmulPrecision::Fp32).multiply(dst, lhs, beta, accumulate) }
}
