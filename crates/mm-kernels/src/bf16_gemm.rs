//! `dst (+)= β · A · B` with A and B rounded to bf16 (round to nearest even) and the products
//! summed in f32: the GEMM of bf16 mixed precision on CPUs with AVX512-BF16, whose `vdpbf16ps`
//! does 32 multiply-adds per instruction where an fp32 FMA does 16 (PyTorch's CPU autocast gets
//! the same from oneDNN).
//!
//! The operands stay f32 tensors; rounding to bf16 happens while packing them, which a GEMM
//! does anyway. Layout (oneDNN's "VNNI" packing): k is taken in pairs, each pair of bf16 one
//! u32 (row 2p in the low half). B is packed in blocks of [`KC_PAIRS`] pairs, each block in
//! panels of [`NR`] = 32 columns; A per call into panels of [`MR`] = 12 rows with the same
//! pairs. The micro-kernel keeps a 12 x 32 tile of f32 sums in 24 zmm registers; per pair it
//! loads two vectors of B and broadcasts each row's pair of A once: 24 `vdpbf16ps` for 14 loads.
//!
//! Rounding (stated for the parity tests): each input is rounded once to 8 significant bits,
//! a relative error of at most u = 2⁻⁸ each, so a product is off by at most (2u + u²)|a b|;
//! the f32 sums add at most k · 2⁻²⁴ Σ|a b|. Denormal inputs and products are flushed to zero
//! (`vdpbf16ps` does).

use rayon::prelude::*;

use super::isa::{Isa, isa};
use super::matrix::Matrix;
#[cfg(target_arch = "x86_64")]
use super::matrix::transpose8;

/// Columns of a micro-tile: two zmm registers of 16 f32 sums per row.
const NR: usize = 32;
/// Rows of a micro-tile: 12 x 2 accumulators, 2 B vectors and a broadcast fill 27 of 32 zmm.
const MR: usize = 12;
/// Pairs of k per block: a B panel (192 x 32 u32, 24 KiB) stays in L1 while every row panel of
/// A streams past it.
const KC_PAIRS: usize = 192;

/// Whether the bf16 kernel runs here (AVX512-BF16, unless `MM_MAX_ISA` caps it off).
pub fn supported() -> bool {
    isa() >= Isa::Avx512Bf16
}

/// `x` rounded to bf16 (nearest, ties to even; NaN stays NaN), as its 16 bits.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    if x.is_nan() {
        (bits >> 16) | 0x40
    } else {
        rounded
    }
}

/// `x` rounded to bf16 and back: the value the kernel multiplies.
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// Rows `2 p0 ..` of `m` (`k x n`, any strides) in pairs, columns `c0 .. c0 + cols`, into
/// `out[p * stride + c]` as u32s (row 2p in the low half; a row past k is zero). The two
/// layouts the kernels meet convert 16 values an instruction (`vcvtneps2bf16`, round to
/// nearest even as [`bf16_bits`]): rows contiguous (B, and A = xᵀ for the weight gradient) and
/// each row's pairs adjacent (A = x or dy); other strides go element by element.
///
/// # Safety
/// The rows and columns named must be inside `m`; the CPU must be [`supported`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_pairs(
    m: &Matrix,
    p0: usize,
    len: usize,
    c0: usize,
    cols: usize,
    out: &mut [u32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let k = m.rows;
    let pair = |lo: f32, hi: f32| bf16_bits(lo) | (bf16_bits(hi) << 16);
    // SAFETY (all blocks below): the caller's rows and columns are inside m; the vector loads
    // and stores stay inside the slices they are taken from; the transmutes reinterpret bf16
    // lanes as their bits.
    let slice = |ptr: *mut f32, len: usize| unsafe { std::slice::from_raw_parts(ptr, len) };
    if m.col_stride == 1 {
        for p in 0..len {
            let row = 2 * (p0 + p);
            let lo = slice(m.at(row, c0), cols);
            let hi = (row + 1 < k).then(|| slice(m.at(row + 1, c0), cols));
            let out = &mut out[p * stride..p * stride + cols];
            // 16 columns at a time; the last (or only: A's 12-row panels) under a mask.
            for c in (0..cols).step_by(16) {
                let mask = ((1u32 << (cols - c).min(16)) - 1) as __mmask16;
                unsafe {
                    let bits = |v: &[f32]| -> __m512i {
                        let values = _mm512_maskz_loadu_ps(mask, v.as_ptr().add(c));
                        let half = _mm512_cvtneps_pbh(values);
                        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(half))
                    };
                    let high = hi.map_or(_mm512_setzero_si512(), |hi| {
                        _mm512_slli_epi32::<16>(bits(hi))
                    });
                    let pairs = _mm512_or_si512(bits(lo), high);
                    _mm512_mask_storeu_epi32(out.as_mut_ptr().add(c).cast(), mask, pairs);
                }
            }
        }
    } else if m.row_stride == 1 {
        // Each column's pairs are adjacent: 16 values become 8 pairs in one conversion, and
        // 8 columns x 8 pairs are transposed in registers so that each pair's columns are
        // stored together.
        let rows = (2 * len).min(k - 2 * p0);
        let (whole, pairs) = (rows / 16 * 8, rows.div_ceil(2));
        for c8 in (0..cols).step_by(8) {
            let n = (cols - c8).min(8);
            let column = |i: usize| slice(m.at(2 * p0, c0 + c8 + i), rows);
            for p in (0..whole).step_by(8) {
                let mut block = [_mm256_setzero_si256(); 8];
                for (i, row) in block.iter_mut().enumerate().take(n) {
                    *row = unsafe {
                        let values = _mm512_loadu_ps(column(i).as_ptr().add(2 * p));
                        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(values))
                    };
                }
                let mask = ((1u32 << n) - 1) as __mmask8;
                for (j, pair_j) in transpose8(block).into_iter().enumerate() {
                    let at = (p + j) * stride + c8;
                    debug_assert!(at + n <= out.len());
                    unsafe {
                        _mm256_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), mask, pair_j)
                    };
                }
            }
            for i in 0..n {
                let column = column(i);
                for p in whole..pairs {
                    let hi = if 2 * p + 1 < rows {
                        column[2 * p + 1]
                    } else {
                        0.0
                    };
                    out[p * stride + c8 + i] = pair(column[2 * p], hi);
                }
            }
        }
    } else {
        for p in 0..len {
            let row = 2 * (p0 + p);
            for c in 0..cols {
                let (lo, hi) = unsafe {
                    let hi = if row + 1 < k {
                        *m.at(row + 1, c0 + c)
                    } else {
                        0.0
                    };
                    (*m.at(row, c0 + c), hi)
                };
                out[p * stride + c] = pair(lo, hi);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_pairs(_: &Matrix, _: usize, _: usize, _: usize, _: usize, _: &mut [u32], _: usize) {
    unreachable!("the bf16 GEMM runs only where `supported()`")
}

/// `(first pair, pairs)` of each block of k.
fn k_blocks(pairs: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..pairs)
        .step_by(KC_PAIRS)
        .map(move |p0| (p0, KC_PAIRS.min(pairs - p0)))
}

/// The right-hand operand, packed once and shared by every block of rows multiplied by it.
pub struct PackedB {
    data: Vec<u32>,
    k: usize,
    n: usize,
    panels: usize,
}

// The packed values are only read after packing.
unsafe impl Send for PackedB {}
unsafe impl Sync for PackedB {}

impl PackedB {
    /// `b` (`k x n`, any strides) rounded to bf16 and packed; panels are packed in parallel.
    pub fn new(b: Matrix) -> Self {
        let (k, n) = (b.rows, b.cols);
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; pairs * panels * NR];
        // Block (p0, len) holds `panels` panels of `len * NR`, one after the other.
        let mut chunks: Vec<(usize, usize, &mut [u32])> = Vec::new();
        let mut rest = data.as_mut_slice();
        for (p0, len) in k_blocks(pairs) {
            for j in 0..panels {
                let (panel, tail) = rest.split_at_mut(len * NR);
                chunks.push((p0, j, panel));
                rest = tail;
            }
        }
        let len_of = |p0: usize| KC_PAIRS.min(pairs - p0);
        chunks.into_par_iter().for_each(|(p0, j, panel)| {
            let (c0, cols) = (j * NR, NR.min(n - j * NR));
            // SAFETY: the panel's rows and columns are inside b; only supported CPUs pack.
            unsafe { pack_pairs(&b, p0, len_of(p0), c0, cols, panel, NR) };
        });
        Self { data, k, n, panels }
    }

    /// Panel `j` of the block that starts at pair `p0` and holds `len` pairs.
    fn panel(&self, p0: usize, len: usize, j: usize) -> &[u32] {
        let start = p0 * self.panels * NR + j * len * NR;
        &self.data[start..start + len * NR]
    }
}

/// `dst = β · a · b`, or `dst += β · a · b` when `accumulate`, in bf16 with f32 sums;
/// single-threaded (callers split rows across threads). `dst` must have unit column stride.
///
/// # Safety
/// `dst` and `a` must address valid memory, `dst` writable (and initialised when
/// `accumulate`) and not overlapping `a`; the CPU must be [`supported`].
pub unsafe fn matmul(dst: Matrix, a: Matrix, b: &PackedB, beta: f32, accumulate: bool) {
    assert!(a.cols == b.k && dst.rows == a.rows && dst.cols == b.n);
    assert_eq!(dst.col_stride, 1, "the bf16 GEMM writes rows");
    let (m, pairs) = (a.rows, b.k.div_ceil(2));
    if m == 0 || b.n == 0 {
        return;
    }
    let row_panels = m.div_ceil(MR);
    let mut a_packed = vec![0u32; row_panels * MR * KC_PAIRS.min(pairs)];
    for (p0, len) in k_blocks(pairs) {
        pack_a(&a, p0, len, &mut a_packed);
        let accumulate = accumulate || p0 > 0;
        for j in 0..b.panels {
            let b_panel = b.panel(p0, len, j);
            let (c0, cols) = (j * NR, NR.min(b.n - j * NR));
            for i in 0..row_panels {
                let (r0, rows) = (i * MR, MR.min(m - i * MR));
                let a_panel = &a_packed[i * MR * len..(i + 1) * MR * len];
                let tile = Tile {
                    ptr: dst.at(r0, c0),
                    row_stride: dst.row_stride,
                    rows,
                    cols,
                };
                // SAFETY: the tile is inside dst; the CPU is supported (caller).
                unsafe { micro_kernel(len, a_panel, b_panel, tile, beta, accumulate) };
            }
        }
    }
}

/// Pairs `p0..p0 + len` of `a`'s rows into `out`: panel i, pair p, row r at `(i * len + p) * MR
/// + r`. Rows past the end are left as they are: their sums are never stored.
fn pack_a(a: &Matrix, p0: usize, len: usize, out: &mut [u32]) {
    let panels = a.rows.div_ceil(MR);
    let pairs_by_row = a.transposed();
    for (i, panel) in out[..panels * MR * len].chunks_mut(MR * len).enumerate() {
        let (r0, rows) = (i * MR, MR.min(a.rows - i * MR));
        // SAFETY: the panel's rows of a are inside it; only supported CPUs pack.
        unsafe { pack_pairs(&pairs_by_row, p0, len, r0, rows, panel, MR) };
    }
}

/// Where a micro-tile's sums go: `rows x cols` (at most MR x NR) of a row-major output.
struct Tile {
    ptr: *mut f32,
    row_stride: isize,
    rows: usize,
    cols: usize,
}

/// Writes `β · a_panel · b_panel` into (or onto) the tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_kernel(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    tile: Tile,
    beta: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    // The tile's rows were last touched long ago (a previous block of k, or the bias write):
    // fetch them while the sums are computed, not when they are stored.
    if accumulate {
        for r in 0..tile.rows {
            let row = tile.ptr.wrapping_offset(r as isize * tile.row_stride);
            _mm_prefetch::<_MM_HINT_T0>(row.cast());
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(NR - 1).cast());
        }
    }
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        // SAFETY: p < pairs, inside both panels (checked above); the casts reinterpret 32 bf16.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            let a_pair = a.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_pair.add(r) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
            }
        }
    }
    let beta = _mm512_set1_ps(beta);
    let mask = |cols: usize| -> __mmask16 { ((1u32 << cols.min(16)) - 1) as u16 };
    let masks = [mask(tile.cols), mask(tile.cols.saturating_sub(16))];
    for (r, acc) in acc.iter().enumerate() {
        if r >= tile.rows {
            break;
        }
        for (half, (&sum, &mask)) in acc.iter().zip(&masks).enumerate() {
            // SAFETY: the masked lanes are the tile's columns of row r, inside dst.
            unsafe {
                let ptr = tile.ptr.offset(r as isize * tile.row_stride).add(16 * half);
                let value = match accumulate {
                    true => _mm512_fmadd_ps(sum, beta, _mm512_maskz_loadu_ps(mask, ptr)),
                    false => _mm512_mul_ps(sum, beta),
                };
                _mm512_mask_storeu_ps(ptr, mask, value);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_kernel(_: usize, _: &[u32], _: &[u32], _: Tile, _: f32, _: bool) {
    unreachable!("the bf16 GEMM runs only where `supported()`")
}
