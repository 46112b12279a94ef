//! The GEMMs the kernels make, in the precision their right-hand operand was prepared for:
//! fp32 ([`super::matrix::matmul`]) or bf16 ([`super::bf16_gemm`]).

use super::MatmulPrecision;
use super::bf16_gemm::{self, PackedB};
use super::matrix::{Matrix, matmul};

/// A GEMM's right-hand operand, prepared once for the precision it multiplies in (bf16 packs
/// and rounds it; on CPUs without AVX512-BF16 bf16 falls back to fp32).
pub(super) enum Rhs {
    F32(Matrix),
    Bf16(PackedB),
}

impl Rhs {
    pub fn new(rhs: Matrix, precision: MatmulPrecision) -> Self {
        match precision {
            MatmulPrecision::Bf16 if bf16_gemm::supported() => Rhs::Bf16(PackedB::new(rhs)),
            _ => Rhs::F32(rhs),
        }
    }

    /// `dst = beta * lhs · self`, or `dst += ...` when `accumulate`; single-threaded.
    ///
    /// # Safety
    /// As [`matmul`]; `dst` must have unit column stride for bf16.
    pub unsafe fn multiply(&self, dst: Matrix, lhs: Matrix, beta: f32, accumulate: bool) {
        // SAFETY: as the caller promises; Bf16 exists only where the CPU supports it.
        unsafe {
            match self {
                Rhs::F32(rhs) => matmul(dst, lhs, *rhs, beta, accumulate),
                Rhs::Bf16(rhs) => bf16_gemm::matmul(dst, lhs, rhs, beta, accumulate),
            }
        }
    }
}
