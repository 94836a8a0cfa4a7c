//! bf16 weights with f32 activations on the CPU: weights stay in bf16 (half the bytes of
//! f32, which is what decode speed is bound by), packed once at load for an AVX-512 kernel
//! that widens them to f32 in registers and accumulates in f32.
//!
//! Layout: output rows in blocks of 16, input columns in pairs; block `b`, pair `p` holds
//! 32 bf16 values, `[w[16b + i][2p], w[16b + i][2p + 1]]` for `i` in `0..16`. One 512-bit
//! load then gives, per lane, a row's two weights: `bits << 16` is the first as f32 and
//! `bits & 0xFFFF0000` the second.

use half::bf16;
use rayon::prelude::*;

const BLOCK: usize = 16;

/// A `[out, in]` linear weight in bf16, packed for [`PackedLinear::matmul`].
#[derive(Debug, Clone)]
pub struct PackedLinear {
    out_features: usize,
    in_features: usize,
    /// `out_blocks * pairs * 32` bf16 bit patterns.
    data: Vec<u16>,
}

impl PackedLinear {
    /// Packs a row-major `[out_features, in_features]` bf16 matrix.
    pub fn pack(weight: &[bf16], out_features: usize, in_features: usize) -> Self {
        assert_eq!(weight.len(), out_features * in_features);
        Self::pack_rows(out_features, in_features, |r, row| {
            row.copy_from_slice(&weight[r * in_features..(r + 1) * in_features]);
        })
    }

    /// Packs a matrix given row by row: `read_row(r, row)` fills `row` with row `r`.
    /// Blocks are packed in parallel, each element written once.
    pub fn pack_rows(
        out_features: usize,
        in_features: usize,
        read_row: impl Fn(usize, &mut [bf16]) + Sync,
    ) -> Self {
        let pairs = in_features.div_ceil(2);
        let blocks = out_features.div_ceil(BLOCK);
        let block_len = pairs * 2 * BLOCK;
        let mut data: Vec<u16> = Vec::with_capacity(blocks * block_len);
        advise_huge_pages(&mut data);
        data.spare_capacity_mut()[..blocks * block_len]
            .par_chunks_mut(block_len)
            .enumerate()
            .for_each_init(
                || vec![bf16::ZERO; pairs * 2],
                |row, (block, dst)| {
                    for lane in 0..BLOCK {
                        let r = block * BLOCK + lane;
                        if r < out_features {
                            read_row(r, &mut row[..in_features]);
                        } else {
                            row.fill(bf16::ZERO);
                        }
                        for (col, w) in row.iter().enumerate() {
                            dst[(col / 2) * 2 * BLOCK + lane * 2 + col % 2].write(w.to_bits());
                        }
                    }
                },
            );
        // SAFETY: every element of every block was written above (odd widths write the
        // zero padding column from the row buffer's last element).
        unsafe { data.set_len(blocks * block_len) };
        Self {
            out_features,
            in_features,
            data,
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x` is `[rows, in]` row-major f32; returns `x @ w.T`, `[rows, out]`.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let k = self.in_features;
        assert_eq!(x.len(), rows * k);
        // An odd input width gets a zero column so that every pair is whole.
        let padded;
        let (x, k) = if !k.is_multiple_of(2) {
            padded = (0..rows)
                .flat_map(|r| x[r * k..(r + 1) * k].iter().copied().chain([0.0]))
                .collect::<Vec<f32>>();
            (&padded[..], k + 1)
        } else {
            (x, k)
        };
        let n = self.out_features;
        #[cfg(target_arch = "x86_64")]
        if rows >= amx::MIN_ROWS && amx::fits(k, n) && amx::available() {
            return amx::matmul(self, x, rows, k);
        }
        let mut out = vec![0f32; rows * n];
        let blocks_per_task = if rows == 1 { 4 } else { 2 };
        let blocks = n.div_ceil(BLOCK);
        let tasks = blocks.div_ceil(blocks_per_task);
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..tasks).into_par_iter().for_each(|task| {
            let first = task * blocks_per_task;
            let count = blocks_per_task.min(blocks - first);
            // SAFETY: each task writes only the output columns of its own blocks.
            unsafe { self.columns(x, rows, k, first, count, out_ptr) };
        });
        out
    }

    /// Output columns of blocks `first..first + count` for every row.
    ///
    /// # Safety
    /// `out` points to a `[rows, out_features]` buffer that no other thread writes in
    /// these columns.
    unsafe fn columns(
        &self,
        x: &[f32],
        rows: usize,
        k: usize,
        first: usize,
        count: usize,
        out: SendPtr,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            unsafe { avx512::columns(self, x, rows, k, first, count, out.0) };
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.columns_portable(x, rows, k, first, count, out.0) };
    }

    /// The same arithmetic, in the same order, without SIMD.
    unsafe fn columns_portable(
        &self,
        x: &[f32],
        rows: usize,
        k: usize,
        first: usize,
        count: usize,
        out: *mut f32,
    ) {
        let pairs = k / 2;
        for block in first..first + count {
            let w = &self.data[block * pairs * 2 * BLOCK..(block + 1) * pairs * 2 * BLOCK];
            for r in 0..rows {
                let xr = &x[r * k..(r + 1) * k];
                for lane in 0..BLOCK {
                    let col = block * BLOCK + lane;
                    if col >= self.out_features {
                        break;
                    }
                    let mut acc = 0f32;
                    for p in 0..pairs {
                        let w0 = f32::from_bits((w[p * 2 * BLOCK + lane * 2] as u32) << 16);
                        let w1 = f32::from_bits((w[p * 2 * BLOCK + lane * 2 + 1] as u32) << 16);
                        acc = xr[2 * p].mul_add(w0, acc);
                        acc = xr[2 * p + 1].mul_add(w1, acc);
                    }
                    // SAFETY: in bounds, and this column belongs to this task.
                    unsafe { *out.add(r * self.out_features + col) = acc };
                }
            }
        }
    }
}

/// Asks Linux to back a large buffer with 2 MB pages before it is first written: loading
/// then takes a fraction of the page faults, and the kernels a fraction of the TLB misses.
fn advise_huge_pages(buffer: &mut Vec<u16>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buffer.as_mut_ptr() as usize;
        let end = start + buffer.capacity() * std::mem::size_of::<u16>();
        let (first, last) = (start.div_ceil(HUGE) * HUGE, end / HUGE * HUGE);
        if last > first {
            // SAFETY: advice on pages this buffer owns and has not touched yet; failure is
            // harmless (the buffer is then backed by ordinary pages).
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output columns to worker threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{PackedLinear, BLOCK};

    /// Rows handled together: each weight load is reused this many times.
    const ROW_TILE: usize = 8;
    /// How far ahead the decode kernel prefetches weights.
    const PREFETCH_BYTES: usize = 1024;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn columns(
        w: &PackedLinear,
        x: &[f32],
        rows: usize,
        k: usize,
        first: usize,
        count: usize,
        out: *mut f32,
    ) {
        let mut block = first;
        while block < first + count {
            let left = first + count - block;
            if left >= 4 && rows == 1 {
                unsafe { tiles::<4>(w, x, rows, k, block, out) };
                block += 4;
            } else if left >= 2 {
                unsafe { tiles::<2>(w, x, rows, k, block, out) };
                block += 2;
            } else {
                unsafe { tiles::<1>(w, x, rows, k, block, out) };
                block += 1;
            }
        }
    }

    /// All rows for `NB` consecutive blocks, `ROW_TILE` rows at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn tiles<const NB: usize>(
        w: &PackedLinear,
        x: &[f32],
        rows: usize,
        k: usize,
        block: usize,
        out: *mut f32,
    ) {
        let mut r = 0;
        while r + ROW_TILE <= rows {
            unsafe { tile::<ROW_TILE, NB>(w, x, k, r, block, out) };
            r += ROW_TILE;
        }
        while r < rows {
            unsafe { tile::<1, NB>(w, x, k, r, block, out) };
            r += 1;
        }
    }

    /// `MR` rows from `row` times `NB` blocks from `block`, accumulated in registers.
    // Indexing the register tile by row and block reads clearer than iterators here.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const MR: usize, const NB: usize>(
        w: &PackedLinear,
        x: &[f32],
        k: usize,
        row: usize,
        block: usize,
        out: *mut f32,
    ) {
        let pairs = k / 2;
        let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        let mut acc = [[_mm512_setzero_ps(); NB]; MR];
        let base = w.data.as_ptr();
        let xs = x.as_ptr().add(row * k);
        for p in 0..pairs {
            let mut lo = [_mm512_setzero_ps(); NB];
            let mut hi = [_mm512_setzero_ps(); NB];
            for b in 0..NB {
                let ptr = base.add(((block + b) * pairs + p) * 2 * BLOCK) as *const __m512i;
                if MR == 1 {
                    // Decode is bound by memory: fetch the weights a few steps ahead.
                    _mm_prefetch::<_MM_HINT_T0>((ptr as *const i8).add(PREFETCH_BYTES));
                }
                let bits = _mm512_loadu_si512(ptr);
                lo[b] = _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
                hi[b] = _mm512_castsi512_ps(_mm512_and_si512(bits, high));
            }
            for r in 0..MR {
                let x0 = _mm512_set1_ps(*xs.add(r * k + 2 * p));
                let x1 = _mm512_set1_ps(*xs.add(r * k + 2 * p + 1));
                for b in 0..NB {
                    acc[r][b] = _mm512_fmadd_ps(x0, lo[b], acc[r][b]);
                    acc[r][b] = _mm512_fmadd_ps(x1, hi[b], acc[r][b]);
                }
            }
        }
        let n = w.out_features;
        for r in 0..MR {
            for b in 0..NB {
                let col = (block + b) * BLOCK;
                if col >= n {
                    continue;
                }
                let valid = (n - col).min(BLOCK);
                let mask: __mmask16 = if valid == BLOCK {
                    0xFFFF
                } else {
                    (1u16 << valid) - 1
                };
                _mm512_mask_storeu_ps(out.add((row + r) * n + col), mask, acc[r][b]);
            }
        }
    }
}

/// Intel AMX (the bf16 tile unit of Sapphire Rapids and later) for prefills: activations are
/// rounded to bf16 — as transformers' bf16 models compute — and products accumulate in f32.
/// The instructions are written with `asm!`, which stable Rust assembles; the kernel asks
/// Linux for the tile state once and falls back to AVX-512 when it is refused.
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use half::bf16;
    use rayon::prelude::*;

    use super::{PackedLinear, SendPtr, BLOCK};

    /// Below this many rows the AVX-512 kernel is as fast and keeps f32 activations.
    pub const MIN_ROWS: usize = 32;
    /// k values per tile step: 16 pairs, 64 bytes of bf16 per tile row.
    const K_STEP: usize = 32;
    /// Rows per tile.
    const TILE_ROWS: usize = 16;

    /// Shapes the kernel takes: whole k steps and pairs of column blocks.
    pub fn fits(k: usize, n: usize) -> bool {
        k.is_multiple_of(K_STEP) && n.is_multiple_of(2 * BLOCK)
    }

    /// Whether the CPU has AMX-BF16 and Linux lets this process use the tile registers.
    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            // SAFETY: CPUID leaf 7 exists on every x86-64 CPU this code runs on.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let cpu = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
            cpu && request_tile_permission()
        })
    }

    #[cfg(target_os = "linux")]
    fn request_tile_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with integer arguments only.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_permission() -> bool {
        false
    }

    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// `x @ w.T` for `rows >= MIN_ROWS`, `k % 32 == 0`, `n % 32 == 0`.
    pub fn matmul(w: &PackedLinear, x: &[f32], rows: usize, k: usize) -> Vec<f32> {
        let n = w.out_features;
        let padded_rows = rows.div_ceil(2 * TILE_ROWS) * 2 * TILE_ROWS;
        let mut xb = vec![bf16::ZERO; padded_rows * k];
        xb[..rows * k]
            .par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .for_each(|(dst, src)| {
                dst.iter_mut()
                    .zip(src)
                    .for_each(|(d, s)| *d = bf16::from_f32(*s))
            });
        let mut out = vec![0f32; padded_rows * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let pairs = k / 2;
        (0..n / (2 * BLOCK)).into_par_iter().for_each(|task| {
            // SAFETY: AMX is available (checked by the caller); each task writes only its
            // own two column blocks of `out`.
            unsafe { columns(w, &xb, padded_rows, k, pairs, 2 * task, out_ptr) };
        });
        out.truncate(rows * n);
        out
    }

    /// Column blocks `block` and `block + 1` for every (padded) row.
    unsafe fn columns(
        w: &PackedLinear,
        xb: &[bf16],
        rows: usize,
        k: usize,
        pairs: usize,
        block: usize,
        out: SendPtr,
    ) {
        let n = w.out_features;
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            config.bytes_per_row[t] = 64;
            config.rows[t] = TILE_ROWS as u8;
        }
        let a_stride = k * 2;
        let c_stride = n * 4;
        let b_base = w.data.as_ptr();
        // SAFETY: AMX is enabled for this process; every pointer below stays inside `xb`,
        // `w.data` or `out` (rows are padded to whole tiles).
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
            for r in (0..rows).step_by(2 * TILE_ROWS) {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack)
                );
                for step in 0..k / K_STEP {
                    let a0 = xb.as_ptr().add(r * k + step * K_STEP);
                    let a1 = a0.add(TILE_ROWS * k);
                    let b0 = b_base.add((block * pairs + step * 16) * 2 * BLOCK);
                    let b1 = b_base.add(((block + 1) * pairs + step * 16) * 2 * BLOCK);
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                        sa = in(reg) a_stride, sb = in(reg) 64usize,
                        options(nostack),
                    );
                }
                let c00 = out.0.add(r * n + block * BLOCK);
                let c01 = c00.add(BLOCK);
                let c10 = c00.add(TILE_ROWS * n);
                let c11 = c10.add(BLOCK);
                asm!(
                    "tilestored [{c00} + {s}*1], tmm0",
                    "tilestored [{c01} + {s}*1], tmm1",
                    "tilestored [{c10} + {s}*1], tmm2",
                    "tilestored [{c11} + {s}*1], tmm3",
                    c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                    s = in(reg) c_stride,
                    options(nostack),
                );
            }
            asm!("tilerelease", options(nostack));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[bf16], x: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let mut acc = 0f64;
                for i in 0..k {
                    acc += x[r * k + i] as f64 * w[c * k + i].to_f64();
                }
                out[r * n + c] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn matches_a_plain_matmul_on_every_shape() {
        let mut seed = 1u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for &(rows, n, k) in &[
            (1, 16, 2),
            (1, 100, 37),
            (3, 33, 64),
            (9, 70, 130),
            (17, 5, 8),
            (1, 300, 512),
        ] {
            let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(next())).collect();
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let packed = PackedLinear::pack(&w, n, k);
            let ours = packed.matmul(&x, rows);
            let expected = reference(&w, &x, rows, n, k);
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (k as f32).sqrt(),
                    "{rows}x{n}x{k} [{i}]: {a} vs {b}"
                );
            }
            // The same numbers one row at a time (decode) as all rows at once (prefill).
            for r in 0..rows {
                let single = packed.matmul(&x[r * k..(r + 1) * k], 1);
                assert_eq!(single, ours[r * n..(r + 1) * n], "{rows}x{n}x{k} row {r}");
            }
        }
    }
}
