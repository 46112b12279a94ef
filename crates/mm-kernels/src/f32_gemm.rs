//! `dst (+)= β · A · B` in f32 with mm's own micro-kernels, for the CPUs below AVX-512: AVX2 +
//! FMA (6 x 16 tile) and a portable one (4 x 16), chosen at run time ([`isa`]). On AVX-512 the
//! gemm crate's kernels run instead (`gemm.rs`): measured single-threaded on Zen 5 they reach
//! ~87% of the FMA peak where a 6 x 64 kernel written like these reached ~75%.
//!
//! Why not the gemm crate everywhere: it picks its kernels by itself, so `MM_MAX_ISA` could not
//! cap it and the AVX2 path could not be measured on an AVX-512 machine; and it packs its
//! right-hand operand on every call, so a linear layer split into row blocks (one
//! single-threaded GEMM per block, see `linear.rs`) packed its weight once per block. Here B is
//! packed once per op ([`PackedF32`]) and shared by every block of rows. A is read in place
//! where its rows are contiguous, and packed otherwise.
//!
//! Blocking (GotoBLAS's, with the whole block of rows as one M block): k is taken in blocks of
//! [`KC`]; B's block is stored as panels of `NR` columns (`KC x NR`, 16 KiB, which stays in L1
//! while every row panel of A streams past it from L2); the micro-kernel broadcasts one value
//! of A per row and loads `NR / 8` vectors of B per step of k, with the `MR x NR` sums in
//! registers.
//!
//! Results differ between kernels by float rounding only (FMA or separate multiply and add;
//! the sums run in the same order: k ascending within each block of [`KC`]).

use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::isa::{Isa, isa};
use super::matrix::Matrix;

/// Below this many elements B is packed on the calling thread (attention's per-head GEMMs).
const PARALLEL_PACK: usize = 64 * 1024;

/// A micro-kernel: its tile shape and the instructions it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx2,
    Portable,
}

impl Kernel {
    /// mm's kernel for this CPU, or None where the gemm crate's AVX-512 kernels run.
    pub fn current() -> Option<Self> {
        match isa() {
            Isa::Avx512 | Isa::Avx512Bf16 => None,
            Isa::Avx2 => Some(Kernel::Avx2),
            Isa::Scalar => Some(Kernel::Portable),
        }
    }

    /// Rows of a tile.
    fn mr(self) -> usize {
        match self {
            // 6 x 2 ymm sums, two B vectors and a broadcast: 15 of 16 registers.
            Kernel::Avx2 => 6,
            Kernel::Portable => 4,
        }
    }
}

/// Columns of a tile (both kernels).
const NR: usize = 16;

/// Depth of a block of k: a `KC x NR` panel of B is 16 KiB, half of a Zen 3 L1, leaving room
/// for the tile's rows of A (256 and 384 measured alike on Zen 5; 128 lost ~10%).
const KC: usize = 256;

/// Bytes of A (a block of rows by [`KC`]) passed over by every B panel in turn: half of a
/// small L2 (Zen 3's 512 KiB), so the block stays there.
const A_BLOCK_BYTES: usize = 128 * 1024;

/// `(first row of k, rows)` of each block of k.
fn k_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k).step_by(KC).map(move |k0| (k0, KC.min(k - k0)))
}

/// f32s on a 64-byte boundary (a cache line and a zmm load).
struct Aligned {
    data: Vec<f32>,
    offset: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        let data = vec![0.0f32; len + 15];
        let offset = data.as_ptr().align_offset(64).min(15);
        Self { data, offset, len }
    }

    /// `len` f32s that `fill` writes, every one (packing need not clear memory first).
    fn filled_by(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Self {
        let mut data: Vec<f32> = Vec::with_capacity(len + 15);
        let offset = data.as_ptr().align_offset(64).min(15);
        let (head, rest) = data.spare_capacity_mut()[..len + 15].split_at_mut(offset);
        let (body, tail) = rest.split_at_mut(len);
        for pad in head.iter_mut().chain(tail) {
            pad.write(0.0);
        }
        fill(body);
        // SAFETY: the padding was written above and the rest by `fill` (its contract).
        unsafe { data.set_len(len + 15) };
        Self { data, offset, len }
    }

    fn as_slice(&self) -> &[f32] {
        &self.data[self.offset..self.offset + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[self.offset..self.offset + self.len]
    }
}

/// The right-hand operand packed for the current kernel, once, and shared by every block of
/// rows multiplied by it.
pub struct PackedF32 {
    data: Aligned,
    k: usize,
    n: usize,
    panels: usize,
    kernel: Kernel,
}

impl PackedF32 {
    /// `b` (`k x n`, any strides) in panels for `kernel`; columns past `n` in the last panel
    /// are zero.
    pub fn new(b: Matrix, kernel: Kernel) -> Self {
        let (k, n, nr) = (b.rows, b.cols, NR);
        let panels = n.div_ceil(nr);
        let data = Aligned::filled_by(k * panels * nr, |mut rest| {
            // Block (k0, len) holds `panels` panels of `len * nr`, one after the other.
            let mut chunks = Vec::new();
            for (k0, len) in k_blocks(k) {
                for j in 0..panels {
                    let (panel, tail) = rest.split_at_mut(len * nr);
                    chunks.push((k0, len, j, panel));
                    rest = tail;
                }
            }
            let pack = |(k0, len, j, panel): (usize, usize, usize, &mut [MaybeUninit<f32>])| {
                let (c0, cols) = (j * nr, nr.min(n - j * nr));
                pack_b(&b, k0, len, c0, cols, panel, nr);
            };
            if k * n >= PARALLEL_PACK {
                chunks.into_par_iter().for_each(pack);
            } else {
                chunks.into_iter().for_each(pack);
            }
        });
        Self {
            data,
            k,
            n,
            panels,
            kernel,
        }
    }

    /// Panel `j` of the block that starts at row `k0` of k and holds `len` rows.
    fn panel(&self, k0: usize, len: usize, j: usize) -> &[f32] {
        let start = k0 * self.panels * NR + j * len * NR;
        &self.data.as_slice()[start..start + len * NR]
    }
}

/// Rows `k0..k0 + len` and columns `c0..c0 + cols` of `b` into `out[p * nr + c]`, every
/// element written (columns past `cols` with zeros).
fn pack_b(
    b: &Matrix,
    k0: usize,
    len: usize,
    c0: usize,
    cols: usize,
    out: &mut [MaybeUninit<f32>],
    nr: usize,
) {
    for row in out.chunks_mut(nr) {
        for pad in &mut row[cols..] {
            pad.write(0.0);
        }
    }
    // SAFETY (both branches): the rows and columns named are inside b, valid for reads.
    if b.col_stride == 1 && cols == NR && nr == NR {
        // A whole panel row is one fixed-size copy (two vector moves), not a memcpy call.
        for (p, out) in out.chunks_exact_mut(NR).take(len).enumerate() {
            let row = unsafe { &*b.at(k0 + p, c0).cast::<[f32; NR]>() };
            for (out, &value) in out.iter_mut().zip(row) {
                out.write(value);
            }
        }
    } else if b.col_stride == 1 {
        for p in 0..len {
            let row = unsafe { std::slice::from_raw_parts(b.at(k0 + p, c0), cols) };
            for (out, &value) in out[p * nr..p * nr + cols].iter_mut().zip(row) {
                out.write(value);
            }
        }
    } else {
        // A transposed operand (wᵀ in dx): read along k, where it is contiguous, in 16 x 16
        // blocks so that the panel's rows being written stay in L1. Whole panels go 8 steps at
        // a time through 8 x 8 register transposes where the CPU has AVX2, the rest below.
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if b.row_stride == 1 && cols == NR && nr == NR && isa() >= Isa::Avx2 {
            done = len - len % 8;
            for p0 in (0..done).step_by(8) {
                for half in [0, 8] {
                    // SAFETY: 8 steps from p0 of the 8 columns from c0 + half are inside b
                    // (contiguous along k), their 8 x 8 block inside the panel; the CPU has
                    // AVX2.
                    unsafe {
                        let dst = out[p0 * NR + half..].as_mut_ptr().cast::<f32>();
                        x86::transpose_8x8(b.at(k0 + p0, c0 + half), b.col_stride, dst, NR);
                    }
                }
            }
        }
        for p0 in (done..len).step_by(16) {
            for c in 0..cols {
                for p in p0..len.min(p0 + 16) {
                    out[p * nr + c].write(unsafe { *b.at(k0 + p, c0 + c) });
                }
            }
        }
    }
}

/// Rows `r0..r0 + rows` (at most `mr`) of `a`, columns `k0..k0 + len`, into one panel: step p,
/// row r at `p * mr + r`. Rows past `rows` keep what they held: their sums are never stored.
fn pack_a(a: &Matrix, r0: usize, rows: usize, k0: usize, len: usize, mr: usize, out: &mut [f32]) {
    // SAFETY (all loops): the rows and columns named are inside a.
    let slice = |ptr: *mut f32, len: usize| unsafe { std::slice::from_raw_parts(ptr, len) };
    if a.row_stride == 1 {
        // A transposed (xᵀ in the weight gradient): each step's rows are adjacent, copied as
        // one fixed-size move where the panel is whole (a memcpy call, or a loop over a
        // run-time count, per step costs more than the copy).
        /// Steps of N adjacent floats.
        fn steps<const N: usize>(a: &Matrix, r0: usize, k0: usize, out: &mut [f32]) {
            for (p, out) in out.chunks_exact_mut(N).enumerate() {
                // SAFETY: N rows from r0 at step k0 + p are adjacent and inside a (caller).
                out.copy_from_slice(unsafe { &*a.at(r0, k0 + p).cast::<[f32; N]>() });
            }
        }
        match (rows == mr, mr) {
            (true, 6) => return steps::<6>(a, r0, k0, &mut out[..len * 6]),
            (true, 4) => return steps::<4>(a, r0, k0, &mut out[..len * 4]),
            _ => {}
        }
        for (p, out) in out.chunks_exact_mut(mr).take(len).enumerate() {
            for (out, &value) in out.iter_mut().zip(slice(a.at(r0, k0 + p), rows)) {
                *out = value;
            }
        }
    } else if a.col_stride == 1 {
        for r in 0..rows {
            for (p, &value) in slice(a.at(r0 + r, k0), len).iter().enumerate() {
                out[p * mr + r] = value;
            }
        }
    } else {
        for p in 0..len {
            for r in 0..rows {
                out[p * mr + r] = unsafe { *a.at(r0 + r, k0 + p) };
            }
        }
    }
}

/// A micro-tile's rows of A: element (r, p) (row r, step p of k) at `ptr + r * row + p * step`;
/// a packed panel (`row` 1, `step` MR) or rows of A read in place (`step` 1).
#[derive(Clone, Copy)]
struct Lhs {
    ptr: *const f32,
    row: isize,
    step: isize,
}

/// What a micro-tile's `β · sums` are added to as they are stored.
#[derive(Clone, Copy)]
enum Onto {
    /// Nothing: the tile is overwritten.
    Nothing,
    /// The tile's own values (a later block of k, or a caller's accumulation).
    Dst,
    /// `NR` values, the same for every row: the bias of the tile's columns (padded).
    Row(*const f32),
}

/// Where a micro-tile's sums go: `rows x cols` (at most MR x NR) of `dst`.
#[derive(Clone, Copy)]
struct Tile {
    ptr: *mut f32,
    row_stride: isize,
    col_stride: isize,
    rows: usize,
    cols: usize,
}

impl Tile {
    /// Whether the tile is all of an `mr x nr` micro-tile in contiguous rows.
    fn whole(&self, mr: usize, nr: usize) -> bool {
        self.rows == mr && self.cols == nr && self.col_stride == 1
    }

    /// Writes `β · sums` (`sums[r * nr + c]`) plus what `onto` names into the tile; one
    /// element at a time, for tiles the kernels do not store directly.
    ///
    /// # Safety
    /// The tile must be inside writable memory (initialised for [`Onto::Dst`]); a row of
    /// [`Onto::Row`] must hold the tile's columns.
    unsafe fn store(&self, sums: &[f32], nr: usize, beta: f32, onto: Onto) {
        for r in 0..self.rows {
            for c in 0..self.cols {
                let offset = r as isize * self.row_stride + c as isize * self.col_stride;
                // SAFETY: (r, c) is inside the tile, c inside the row.
                unsafe {
                    let out = self.ptr.offset(offset);
                    let value = beta * sums[r * nr + c];
                    *out = match onto {
                        Onto::Nothing => value,
                        Onto::Dst => *out + value,
                        Onto::Row(row) => *row.add(c) + value,
                    };
                }
            }
        }
    }

    /// Brings the tile's rows into L1 while its sums are computed: they were last touched long
    /// ago (a previous block of k).
    fn prefetch(&self, onto: Onto) {
        #[cfg(target_arch = "x86_64")]
        if let Onto::Dst = onto {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            for r in 0..self.rows {
                let row = self.ptr.wrapping_offset(r as isize * self.row_stride);
                let last = row.wrapping_offset((self.cols as isize - 1) * self.col_stride);
                // SAFETY: prefetching has no architectural effect, even out of bounds.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(row.cast());
                    _mm_prefetch::<_MM_HINT_T0>(last.cast());
                }
            }
        }
    }
}

/// `dst = β · a · b`, or `dst += β · a · b` when `accumulate`; single-threaded (callers split
/// rows across threads).
///
/// # Safety
/// `dst` and `a` must address valid memory, `dst` writable (and initialised when
/// `accumulate`) and not overlapping `a` or `b`.
pub unsafe fn matmul(dst: Matrix, a: Matrix, b: &PackedF32, beta: f32, accumulate: bool) {
    let onto = match accumulate {
        true => Onto::Dst,
        false => Onto::Nothing,
    };
    // SAFETY: as the caller promises.
    unsafe { multiply(dst, a, b, beta, onto) }
}

/// `dst = bias + β · a · b` (`bias` broadcast over rows), the bias added as the first block of
/// k is stored: no pass that writes it first, no read of `dst`.
///
/// # Safety
/// As [`matmul`] without `accumulate`; `bias` must hold `b`'s columns.
pub unsafe fn matmul_plus_bias(dst: Matrix, a: Matrix, b: &PackedF32, beta: f32, bias: &[f32]) {
    assert_eq!(bias.len(), b.n, "one bias per column");
    // Padded to whole panels, so that a kernel reads NR values at every panel.
    let mut padded = Aligned::zeroed(b.panels * NR);
    padded.as_mut_slice()[..b.n].copy_from_slice(bias);
    // SAFETY: as the caller promises; the row outlives the call.
    unsafe { multiply(dst, a, b, beta, Onto::Row(padded.as_slice().as_ptr())) }
}

/// `dst = β · a · b` added onto what `onto` names (a row: offset by each panel's columns).
///
/// # Safety
/// As [`matmul`].
unsafe fn multiply(dst: Matrix, a: Matrix, b: &PackedF32, beta: f32, onto: Onto) {
    assert!(a.cols == b.k && dst.rows == a.rows && dst.cols == b.n);
    let (m, kernel) = (a.rows, b.kernel);
    let (mr, nr) = (kernel.mr(), NR);
    if m == 0 || b.n == 0 {
        return;
    }
    if b.k == 0 {
        let empty = Tile {
            ptr: dst.ptr,
            row_stride: dst.row_stride,
            col_stride: dst.col_stride,
            rows: m,
            cols: b.n,
        };
        // SAFETY: dst is the caller's writable matrix; a sum over nothing is zero.
        unsafe { empty.store(&vec![0.0; m * b.n], b.n, beta, onto) };
        return;
    }
    // A is read in place when its rows are contiguous (the broadcasts follow MR streams); a
    // panel with other strides, or short of MR rows, is packed first. (Reading xᵀ in place in
    // the weight gradient, a row of x per step, measured no faster than packing it.)
    let in_place = a.col_stride == 1;
    let row_panels = m.div_ceil(mr);
    let packed_panels = match in_place {
        true => usize::from(m % mr != 0),
        false => row_panels,
    };
    let mut a_packed = Aligned::zeroed(packed_panels * mr * KC.min(b.k));
    for (k0, len) in k_blocks(b.k) {
        let first_packed = row_panels - packed_panels;
        for (i, panel) in a_packed.as_mut_slice()[..packed_panels * mr * len]
            .chunks_mut(mr * len)
            .enumerate()
        {
            let r0 = (first_packed + i) * mr;
            pack_a(&a, r0, mr.min(m - r0), k0, len, mr, panel);
        }
        // Later blocks of k add onto the first's sums.
        let onto = if k0 > 0 { Onto::Dst } else { onto };
        // Rows in blocks that stay in L2 while every B panel passes over them (each B panel
        // stays in L1 while the block's row panels pass over it).
        let block_panels = (A_BLOCK_BYTES / (KC * 4 * mr)).max(1);
        for block in (0..row_panels).step_by(block_panels) {
            for j in 0..b.panels {
                let b_panel = b.panel(k0, len, j);
                let (c0, cols) = (j * nr, nr.min(b.n - j * nr));
                for i in block..(block + block_panels).min(row_panels) {
                    let (r0, rows) = (i * mr, mr.min(m - i * mr));
                    let lhs = match i.checked_sub(first_packed) {
                        Some(packed) => Lhs {
                            ptr: a_packed.as_slice()[packed * mr * len..].as_ptr(),
                            row: 1,
                            step: mr as isize,
                        },
                        None => Lhs {
                            ptr: a.at(r0, k0),
                            row: a.row_stride,
                            step: a.col_stride,
                        },
                    };
                    let tile = Tile {
                        ptr: dst.at(r0, c0),
                        row_stride: dst.row_stride,
                        col_stride: dst.col_stride,
                        rows,
                        cols,
                    };
                    let onto = match onto {
                        Onto::Row(row) => Onto::Row(row.wrapping_add(c0)),
                        onto => onto,
                    };
                    tile.prefetch(onto);
                    // SAFETY: the tile is inside dst; lhs and the B panel hold `len` steps of k; the
                    // kernel was chosen from what this CPU runs.
                    unsafe { run(kernel, len, lhs, b_panel, tile, beta, onto) };
                }
            }
        }
    }
}

/// Writes `β · a · b_panel` (`k` steps) into (or onto) the tile with `kernel`.
///
/// # Safety
/// As [`matmul`]'s tile; `a` must address MR rows of `k` steps; the CPU must run `kernel`.
unsafe fn run(kernel: Kernel, k: usize, a: Lhs, b: &[f32], tile: Tile, beta: f32, onto: Onto) {
    debug_assert!(b.len() >= k * NR);
    // SAFETY: as the caller promises.
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::avx2(k, a, b.as_ptr(), tile, beta, onto),
            _ => portable(k, a, b, tile, beta, onto),
        }
    }
}

/// The 4 x 16 tile in plain Rust (the compiler vectorises the columns at the baseline ISA).
///
/// # Safety
/// As [`run`].
unsafe fn portable(k: usize, a: Lhs, b: &[f32], tile: Tile, beta: f32, onto: Onto) {
    const MR: usize = 4;
    let mut sums = [[0.0f32; NR]; MR];
    for (p, b) in b.chunks_exact(NR).take(k).enumerate() {
        for (r, row) in sums.iter_mut().enumerate() {
            // SAFETY: (r, p) is inside a (caller).
            let a = unsafe { *a.ptr.offset(r as isize * a.row + p as isize * a.step) };
            for (sum, &b) in row.iter_mut().zip(b) {
                *sum += a * b;
            }
        }
    }
    // SAFETY: as the caller promises.
    unsafe { tile.store(sums.as_flattened(), NR, beta, onto) };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::matrix::transpose8;
    use super::{Lhs, NR, Onto, Tile};
    use std::arch::x86_64::*;

    /// `dst[p * dst_stride + c] = src[c * src_stride + p]` for an 8 x 8 block (unaligned).
    ///
    /// # Safety
    /// Both blocks must be inside their memory; the CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_8x8(
        src: *const f32,
        src_stride: isize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        let column = |c: usize| {
            src.wrapping_offset(c as isize * src_stride)
                .cast::<__m256i>()
        };
        // SAFETY: as the caller promises.
        let block = std::array::from_fn(|c| unsafe { _mm256_loadu_si256(column(c)) });
        for (p, step) in transpose8(block).into_iter().enumerate() {
            // SAFETY: as the caller promises.
            unsafe { _mm256_storeu_si256(dst.add(p * dst_stride).cast(), step) };
        }
    }

    /// The 6 x 16 tile: per step of k, two loads of B and six broadcasts of A feed 12 FMAs.
    ///
    /// # Safety
    /// As [`super::run`]; the CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(k: usize, a: Lhs, b: *const f32, tile: Tile, beta: f32, onto: Onto) {
        const MR: usize = 6;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..k {
            // SAFETY: step p is inside both panels.
            unsafe {
                let b0 = _mm256_load_ps(b.add(p * NR));
                let b1 = _mm256_load_ps(b.add(p * NR + 8));
                let step = a.ptr.offset(p as isize * a.step);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*step.offset(r as isize * a.row));
                    acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
                }
            }
        }
        if !tile.whole(MR, NR) {
            let mut sums = [0.0f32; MR * NR];
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row r of sums holds 16 floats.
                unsafe {
                    _mm256_storeu_ps(sums.as_mut_ptr().add(r * NR), acc[0]);
                    _mm256_storeu_ps(sums.as_mut_ptr().add(r * NR + 8), acc[1]);
                }
            }
            // SAFETY: as the caller promises.
            return unsafe { tile.store(&sums, NR, beta, onto) };
        }
        let beta = _mm256_set1_ps(beta);
        for (r, acc) in acc.iter().enumerate() {
            for (half, &sum) in acc.iter().enumerate() {
                // SAFETY: the tile is whole: 16 contiguous floats in row r.
                unsafe {
                    let ptr = tile.ptr.offset(r as isize * tile.row_stride).add(8 * half);
                    let value = match onto {
                        Onto::Nothing => _mm256_mul_ps(sum, beta),
                        Onto::Dst => _mm256_fmadd_ps(sum, beta, _mm256_loadu_ps(ptr)),
                        Onto::Row(row) => {
                            _mm256_fmadd_ps(sum, beta, _mm256_loadu_ps(row.add(8 * half)))
                        }
                    };
                    _mm256_storeu_ps(ptr, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels this process may run: every one up to `isa()` (so `MM_MAX_ISA` also caps
    /// what these tests exercise).
    fn kernels() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        if isa() >= Isa::Avx2 {
            kernels.push(Kernel::Avx2);
        }
        kernels
    }

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// What the product is added to in a check.
    #[derive(Clone, Copy, Debug)]
    enum Start {
        Zero,
        Dst,
        Bias,
    }

    /// `dst = start + beta a b` for every kernel against an f64 reference, with A and B in
    /// either layout and dst written through strides.
    fn check(m: usize, k: usize, n: usize, transposed: bool, start: Start) {
        let beta = 0.75;
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let (initial, bias) = (values(m * n, 3), values(n, 4));
        let at = |r: usize, c: usize| a[r * k + c] as f64;
        let bt = |r: usize, c: usize| b[r * n + c] as f64;
        for kernel in kernels() {
            let (mut a_store, mut b_store) = (a.clone(), b.clone());
            // The transposed layouts hold the same matrices column-major.
            let (a_m, b_m) = if transposed {
                a_store = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
                b_store = (0..k * n).map(|i| b[(i % k) * n + i / k]).collect();
                (
                    Matrix::row_major(a_store.as_mut_ptr(), k, m).transposed(),
                    Matrix::row_major(b_store.as_mut_ptr(), n, k).transposed(),
                )
            } else {
                (
                    Matrix::row_major(a_store.as_mut_ptr(), m, k),
                    Matrix::row_major(b_store.as_mut_ptr(), k, n),
                )
            };
            // dst column-major when transposed: a tile the kernels cannot store directly.
            let mut dst = initial.clone();
            let dst_m = match transposed {
                true => Matrix::row_major(dst.as_mut_ptr(), n, m).transposed(),
                false => Matrix::row_major(dst.as_mut_ptr(), m, n),
            };
            let packed = PackedF32::new(b_m, kernel);
            unsafe {
                match start {
                    Start::Zero => matmul(dst_m, a_m, &packed, beta, false),
                    Start::Dst => matmul(dst_m, a_m, &packed, beta, true),
                    Start::Bias => matmul_plus_bias(dst_m, a_m, &packed, beta, &bias),
                }
            };
            let index = |r: usize, c: usize| if transposed { c * m + r } else { r * n + c };
            let mut worst = 0.0f64;
            for r in 0..m {
                for c in 0..n {
                    let sum: f64 = (0..k).map(|p| at(r, p) * bt(p, c)).sum();
                    let offset = match start {
                        Start::Zero => 0.0,
                        Start::Dst => initial[index(r, c)] as f64,
                        Start::Bias => bias[c] as f64,
                    };
                    let want = offset + beta as f64 * sum;
                    let got = dst[index(r, c)] as f64;
                    // Each sum of k products in [-1, 1) is good to ~k ulp of its terms.
                    worst = worst.max((got - want).abs() / (k as f64 + 1.0));
                }
            }
            assert!(
                worst < 1e-6,
                "{kernel:?} {m}x{k}x{n} transposed {transposed} onto {start:?}: {worst:e}"
            );
        }
    }

    #[test]
    fn every_kernel_matches_f64_on_ragged_shapes() {
        for (m, k, n) in [
            (1, 1, 1),
            (13, 7, 33),
            (25, 300, 50),
            (50, 64, 50),
            (7, 513, 17),
        ] {
            for transposed in [false, true] {
                for start in [Start::Zero, Start::Dst, Start::Bias] {
                    check(m, k, n, transposed, start);
                }
            }
        }
    }

    #[test]
    fn an_empty_sum_is_its_start() {
        for start in [Start::Zero, Start::Dst, Start::Bias] {
            check(3, 0, 5, false, start);
        }
    }
}
