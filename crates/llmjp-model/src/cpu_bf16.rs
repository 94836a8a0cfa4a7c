//! bf16 weights with f32 activations on the CPU. Weights stay as the checkpoint stores them,
//! bf16 `[out, in]` row-major, and when the file holds bf16 they are used in place from the
//! memory-mapped file: loading copies nothing (it costs one read of the files), and decoding
//! reads half the bytes of f32, which is what its speed is bound by.
//!
//! - Few rows (decode, short prompts): AVX-512. Each 32 bf16 of a weight row widen to f32 in
//!   registers; up to 4 activation rows × 4 weight rows accumulate in f32, so a call reads
//!   each weight row from memory once; weights are prefetched ahead.
//! - 32 rows or more (prefills): AMX. Each task copies up to 4 panels of 32 weight rows (one
//!   contiguous range of the file, about 1 MB) into a buffer laid out as `tdpbf16ps` A
//!   tiles, prefetching the next task's rows meanwhile; the activations, rounded to bf16 as
//!   transformers' bf16 models compute, are the B tiles; products accumulate in f32 and
//!   each 16×16 result tile is transposed in registers on its way out.
//! - Elsewhere: portable code.
//!
//! ```
//! use half::bf16;
//! use llmjp_model::cpu_bf16::Bf16Matrix;
//!
//! // w = [[1, 2], [3, 4], [5, 6]]: 3 outputs, 2 inputs.
//! let w: Vec<bf16> = [1., 2., 3., 4., 5., 6.].map(bf16::from_f32).to_vec();
//! let w = Bf16Matrix::from_vec(w, 3, 2);
//! assert_eq!(w.matmul(&[1.0, 10.0], 1), [21.0, 43.0, 65.0]); // x @ w.T
//! ```

use half::bf16;
use llmjp_weights::MappedBf16;
use rayon::prelude::*;

/// A `[rows, cols]` bf16 matrix on the host, row-major: a linear layer's `[out, in]` weight
/// or an embedding table.
#[derive(Debug)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

#[derive(Debug)]
enum Storage {
    /// In the memory-mapped checkpoint (little-endian, not necessarily 2-byte aligned).
    Mapped(MappedBf16),
    /// Converted from an f16 or f32 checkpoint, as little-endian bit patterns.
    Owned(Vec<u16>),
}

impl Bf16Matrix {
    /// Uses a bf16 tensor in place in its memory-mapped file.
    pub fn mapped(weight: MappedBf16, rows: usize, cols: usize) -> Self {
        assert_eq!(weight.bytes().len(), rows * cols * 2, "{rows}x{cols} bf16");
        Self {
            rows,
            cols,
            storage: Storage::Mapped(weight),
        }
    }

    /// Owns a row-major `[rows, cols]` matrix.
    pub fn from_vec(values: Vec<bf16>, rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols, "{rows}x{cols} bf16");
        let bits = values.into_iter().map(|v| v.to_bits().to_le()).collect();
        Self {
            rows,
            cols,
            storage: Storage::Owned(bits),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Reads a mapped matrix into memory now (one read of its part of the file), so that
    /// the first forward pass does not wait on page faults.
    pub fn populate(&self) {
        if let Storage::Mapped(mapped) = &self.storage {
            mapped.populate();
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(mapped) => mapped.bytes(),
            // SAFETY: any u16 is two initialised bytes; the length is the same memory.
            Storage::Owned(bits) => unsafe {
                std::slice::from_raw_parts(bits.as_ptr().cast::<u8>(), bits.len() * 2)
            },
        }
    }

    fn value(bytes: &[u8], i: usize) -> f32 {
        f32::from_bits((u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as u32) << 16)
    }

    /// Row `r` widened to f32 into `out` (`cols` values).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let row = &self.bytes()[r * self.cols * 2..(r + 1) * self.cols * 2];
        for (i, dst) in out.iter_mut().enumerate() {
            *dst = Self::value(row, i);
        }
    }

    /// `x` is `[rows, cols]` row-major f32; returns `x @ self.T`, `[rows, self.rows()]`.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        assert_eq!(x.len(), rows * k, "{rows} rows of {k}");
        #[cfg(target_arch = "x86_64")]
        if rows >= amx::MIN_ROWS && amx::fits(k, n) && amx::available() {
            return amx::matmul(self, x, rows);
        }
        let mut out = vec![0f32; rows * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        // Tasks of weight rows; each reads its rows once for all activation rows.
        let task_rows = if rows == 1 { 256 } else { 64 };
        (0..n.div_ceil(task_rows)).into_par_iter().for_each(|task| {
            let first = task * task_rows;
            let count = task_rows.min(n - first);
            // SAFETY: each task writes only output columns first..first + count.
            unsafe { self.columns(x, rows, first, count, out_ptr) };
        });
        out
    }

    /// Output columns `first..first + count` for every activation row.
    ///
    /// # Safety
    /// `out` points to a `[rows, self.rows]` buffer nobody else writes in these columns.
    unsafe fn columns(&self, x: &[f32], rows: usize, first: usize, count: usize, out: SendPtr) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the rest is forwarded.
            unsafe { avx512::columns(self, x, rows, first, count, out.0) };
            return;
        }
        let k = self.cols;
        for c in first..first + count {
            for r in 0..rows {
                let value = self.dot(&x[r * k..(r + 1) * k], c, 0);
                // SAFETY: in bounds; this column belongs to this task.
                unsafe { *out.0.add(r * self.rows + c) = value };
            }
        }
    }

    /// `sum(x[i] * w[c][i])` over `i >= from`, in order, with fused multiply-adds.
    fn dot(&self, x: &[f32], c: usize, from: usize) -> f32 {
        let k = self.cols;
        let row = &self.bytes()[c * k * 2..(c + 1) * k * 2];
        (from..k).fold(0f32, |acc, i| x[i].mul_add(Self::value(row, i), acc))
    }
}

/// SwiGLU's activation in place: `gate[i] = silu(gate[i]) * up[i]`, in f32.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        unsafe { avx512::silu_mul(gate, up) };
        return;
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint parts of an output buffer to worker threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::Bf16Matrix;

    /// `e^x` in 16 lanes, within 2 ulp of the correctly rounded value (range reduction by
    /// ln 2, Cephes' degree-6 polynomial, `scalef` for the power of two).
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
            _mm512_set1_ps(88.72),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(p, n)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let one = _mm512_set1_ps(1.0);
        for (g, u) in gate.chunks_mut(16).zip(up.chunks(16)) {
            let mask: __mmask16 = if g.len() == 16 {
                0xFFFF
            } else {
                (1 << g.len()) - 1
            };
            // SAFETY: masked to the chunk's length.
            unsafe {
                let x = _mm512_maskz_loadu_ps(mask, g.as_ptr());
                let y = _mm512_maskz_loadu_ps(mask, u.as_ptr());
                let sig = _mm512_div_ps(
                    x,
                    _mm512_add_ps(one, exp(_mm512_sub_ps(_mm512_setzero_ps(), x))),
                );
                _mm512_mask_storeu_ps(g.as_mut_ptr(), mask, _mm512_mul_ps(sig, y));
            }
        }
    }

    /// k values per step: 32 bf16, one 64-byte cache line of a weight row.
    const K_STEP: usize = 32;
    /// How far ahead the decode kernel prefetches weights.
    const PREFETCH_BYTES: usize = 1024;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn columns(
        w: &Bf16Matrix,
        x: &[f32],
        rows: usize,
        first: usize,
        count: usize,
        out: *mut f32,
    ) {
        if rows == 1 {
            // Decode is bound by memory: four sequential streams, each through a quarter of
            // the rows, keep the hardware prefetchers busy on four fronts.
            const STREAMS: usize = 4;
            let part = count / STREAMS;
            for c in first..first + part {
                let streams: [usize; STREAMS] = std::array::from_fn(|s| c + s * part);
                // SAFETY: forwarded; every row named is in bounds.
                unsafe { tile::<1, STREAMS>(w, x, 0, streams, out) };
            }
            for c in first + STREAMS * part..first + count {
                // SAFETY: as above.
                unsafe { tile::<1, 1>(w, x, 0, [c], out) };
            }
            return;
        }
        let mut c = first;
        while c < first + count {
            let nr = if first + count - c >= 2 { 2 } else { 1 };
            let mut r = 0;
            while r < rows {
                let mr = (rows - r).min(4);
                let (two, one) = ([c, c + 1], [c]);
                // SAFETY: forwarded; rows r..r + mr and columns c..c + nr are in bounds.
                unsafe {
                    match (mr, nr) {
                        (4, 2) => tile::<4, 2>(w, x, r, two, out),
                        (3, 2) => tile::<3, 2>(w, x, r, two, out),
                        (2, 2) => tile::<2, 2>(w, x, r, two, out),
                        (1, 2) => tile::<1, 2>(w, x, r, two, out),
                        (4, _) => tile::<4, 1>(w, x, r, one, out),
                        (3, _) => tile::<3, 1>(w, x, r, one, out),
                        (2, _) => tile::<2, 1>(w, x, r, one, out),
                        _ => tile::<1, 1>(w, x, r, one, out),
                    }
                }
                r += mr;
            }
            c += nr;
        }
    }

    /// Activation rows `row..row + MR` times weight rows `cols`. Each output
    /// accumulates the two halves of a step in two chains, in the same order whatever the
    /// tile, so one row at a time gives the same numbers as many.
    // Indexing the register tile by row and column reads clearer than iterators here.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const MR: usize, const NR: usize>(
        w: &Bf16Matrix,
        x: &[f32],
        row: usize,
        cols: [usize; NR],
        out: *mut f32,
    ) {
        let (n, k) = (w.rows, w.cols);
        let vector_k = k / K_STEP * K_STEP;
        let weights = w.bytes().as_ptr();
        let xs = x.as_ptr();
        let mut acc_lo = [[_mm512_setzero_ps(); NR]; MR];
        let mut acc_hi = [[_mm512_setzero_ps(); NR]; MR];
        let mut i = 0;
        while i < vector_k {
            let mut lo = [_mm512_setzero_ps(); NR];
            let mut hi = [_mm512_setzero_ps(); NR];
            for c in 0..NR {
                let p = weights.add((cols[c] * k + i) * 2);
                if MR == 1 {
                    // Decode is bound by memory: ask for the weights a few steps ahead.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
                }
                let a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                let b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(32) as *const __m256i));
                lo[c] = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
                hi[c] = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
            }
            for r in 0..MR {
                let x0 = _mm512_loadu_ps(xs.add((row + r) * k + i));
                let x1 = _mm512_loadu_ps(xs.add((row + r) * k + i + 16));
                for c in 0..NR {
                    acc_lo[r][c] = _mm512_fmadd_ps(x0, lo[c], acc_lo[r][c]);
                    acc_hi[r][c] = _mm512_fmadd_ps(x1, hi[c], acc_hi[r][c]);
                }
            }
            i += K_STEP;
        }
        for r in 0..MR {
            let xr = &x[(row + r) * k..(row + r + 1) * k];
            for c in 0..NR {
                let tail = w.dot(xr, cols[c], vector_k);
                let sum = _mm512_add_ps(acc_lo[r][c], acc_hi[r][c]);
                *out.add((row + r) * n + cols[c]) = _mm512_reduce_add_ps(sum) + tail;
            }
        }
    }
}

/// Intel AMX (the bf16 tile unit of Sapphire Rapids and later), written with `asm!`, which
/// stable Rust assembles. The process asks Linux for the tile state once and falls back to
/// AVX-512 when the CPU or the kernel refuses.
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::{Bf16Matrix, SendPtr};

    /// Below this many rows the AVX-512 kernel keeps up and keeps f32 activations.
    pub const MIN_ROWS: usize = 32;
    /// k values per tile step: 32 bf16, 64 bytes per tile row.
    const K_STEP: usize = 32;
    /// Rows (and columns) of a tile.
    const TILE: usize = 16;
    /// Weight rows per task: two A tiles.
    const PANEL_ROWS: usize = 2 * TILE;

    /// Shapes the kernel takes: whole k steps and whole panels of weight rows.
    pub fn fits(k: usize, n: usize) -> bool {
        k.is_multiple_of(K_STEP) && n.is_multiple_of(PANEL_ROWS)
    }

    /// Whether the CPU has AMX-BF16 and Linux lets this process use the tile registers.
    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            edx & (1 << 22) != 0 && edx & (1 << 24) != 0 && request_tile_permission()
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

    /// `x` rounded to bf16 (to nearest even, as `half` and torch round), as bits.
    fn bf16_bits(x: f32) -> u32 {
        let bits = x.to_bits();
        if x.is_nan() {
            (bits >> 16) | 0x40
        } else {
            (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        }
    }

    /// `x @ w.T` for `rows >= MIN_ROWS` and shapes that [`fits`].
    pub fn matmul(w: &Bf16Matrix, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (w.rows, w.cols);
        let blocks = rows.div_ceil(PANEL_ROWS) * 2;
        let pairs = k / 2;
        // B tiles: per block of 16 tokens, [pair][token] bf16 pairs (zeros past `rows`), so
        // that each tile is 1 KB of contiguous memory.
        let mut activations = vec![0u32; blocks * pairs * TILE];
        activations
            .par_chunks_mut(pairs * TILE)
            .enumerate()
            .for_each(|(block, dst)| {
                let mut row = vec![0u32; pairs];
                for t in 0..TILE.min(rows.saturating_sub(block * TILE)) {
                    let src = &x[(block * TILE + t) * k..][..k];
                    for (pair, values) in row.iter_mut().zip(src.chunks_exact(2)) {
                        *pair = bf16_bits(values[0]) | (bf16_bits(values[1]) << 16);
                    }
                    for (p, &pair) in row.iter().enumerate() {
                        dst[p * TILE + t] = pair;
                    }
                }
            });
        let mut out = vec![0f32; rows * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        // Each task takes as many panels as fit about 1 MB (most of an L2 next to the
        // activation tiles), so that the activations are streamed once per task.
        let panels = n / PANEL_ROWS;
        let per_task = ((1 << 20) / (PANEL_ROWS * k * 2)).clamp(1, 4);
        (0..panels.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                let first = task * per_task;
                let count = per_task.min(panels - first);
                PANEL.with_borrow_mut(|panel| {
                    panel.resize(count * PANEL_ROWS * k * 2, 0);
                    // SAFETY: AMX is available (checked by the caller); each task writes only
                    // the output columns of its own panels.
                    unsafe { panel_rows(w, panel, &activations, rows, first, count, out_ptr) };
                })
            });
        out
    }

    thread_local! {
        /// Each worker's panel buffer, kept between calls (no page faults per call).
        static PANEL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// `source` (32 rows of `k` bf16) into `panel` as [step][row][32 bf16], one cache line
    /// at a time, the panel written in order.
    #[target_feature(enable = "avx512f")]
    unsafe fn copy_panel(source: &[u8], panel: &mut [u8], k: usize) {
        use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_storeu_si512};
        assert!(source.len() == PANEL_ROWS * k * 2 && panel.len() >= source.len());
        let (src, dst) = (source.as_ptr(), panel.as_mut_ptr());
        for step in 0..k / K_STEP {
            for r in 0..PANEL_ROWS {
                let from = (r * k + step * K_STEP) * 2;
                let to = (step * PANEL_ROWS + r) * K_STEP * 2;
                // SAFETY: both 64-byte ranges are inside the asserted lengths.
                unsafe {
                    let line = _mm512_loadu_si512(src.add(from) as *const __m512i);
                    _mm512_storeu_si512(dst.add(to) as *mut __m512i, line);
                }
            }
        }
    }

    /// Writes the transpose of a 16×16 tile: row `t` of the result (column `t` of `tile`)
    /// goes to `dst + t * stride`, for the first `count` rows.
    ///
    /// # Safety
    /// AVX-512F is available; `dst` has `count` rows of 16 at `stride` to write.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_tile(
        tile: &[[f32; TILE]],
        dst: *mut f32,
        stride: usize,
        count: usize,
    ) {
        use std::arch::x86_64::*;
        assert_eq!(tile.len(), TILE);
        // Four rounds of shuffles: 32-bit, 64-bit, then 128-bit lanes twice.
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(tile[i].as_ptr()));
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // Groups of four: t[4g..4g + 4] → 64-bit interleave of (t0, t2) and (t1, t3).
        let r: [__m512; 16] = std::array::from_fn(|i| {
            let g = i / 4 * 4;
            let (a, b) = match i % 4 {
                0 | 1 => (t[g], t[g + 2]),
                _ => (t[g + 1], t[g + 3]),
            };
            let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
            _mm512_castpd_ps(if i % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            })
        });
        // Pairs of 128-bit lanes between row groups 8 apart (within each half).
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let half = i / 8 * 8;
            let j = i % 8;
            let (a, b) = (r[half + j % 4], r[half + j % 4 + 4]);
            if j < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            }
        });
        let r: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (t[i % 8], t[i % 8 + 8]);
            if i < 8 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            }
        });
        for (i, row) in r.iter().enumerate().take(count) {
            // SAFETY: the caller guarantees `count` rows of 16 at `stride`.
            unsafe { _mm512_storeu_ps(dst.add(i * stride), *row) };
        }
    }

    /// Output columns of panels `first..first + count` (32 weight rows each) for every
    /// token.
    unsafe fn panel_rows(
        w: &Bf16Matrix,
        panel: &mut [u8],
        activations: &[u32],
        rows: usize,
        first: usize,
        count: usize,
        out: SendPtr,
    ) {
        let (n, k) = (w.rows, w.cols);
        let steps = k / K_STEP;
        let panel_len = PANEL_ROWS * k * 2;
        // The panels' rows are one contiguous range: read it once, sequentially, into
        // [panel][step][row][32 bf16], where each A tile is 1 KB of contiguous memory.
        let source = &w.bytes()[first * panel_len..(first + count) * panel_len];
        let next_task = source.as_ptr_range().end;
        for (from, to) in source
            .chunks_exact(panel_len)
            .zip(panel.chunks_exact_mut(panel_len))
        {
            // SAFETY: AMX implies AVX-512F; both ranges are whole panels.
            unsafe { copy_panel(from, to, k) };
        }
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            config.bytes_per_row[t] = 64;
            config.rows[t] = TILE as u8;
        }
        // C tiles are [weight row][token]; each is stored here and written out transposed.
        let mut c = [[0f32; TILE]; 4 * TILE];
        let block_len = k / 2 * TILE;
        // SAFETY: AMX is enabled for this process; every tile stays inside `panel`,
        // `activations` (whole blocks of 16 tokens) or `c`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
            for t0 in (0..rows).step_by(2 * TILE) {
                let b_base = activations.as_ptr().add(t0 / TILE * block_len);
                for p in 0..count {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                    for step in 0..steps {
                        if t0 == 0 {
                            // While these panels compute, bring the next task's (most often
                            // this thread's next) into L2: 2 KB per step covers them.
                            let at = (p * steps + step) * PANEL_ROWS * K_STEP * 2;
                            for line in (0..PANEL_ROWS * K_STEP * 2).step_by(64) {
                                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                                    next_task.wrapping_add(at + line).cast(),
                                );
                            }
                        }
                        let a0 = panel
                            .as_ptr()
                            .add(p * panel_len + step * PANEL_ROWS * K_STEP * 2);
                        let a1 = a0.add(TILE * K_STEP * 2);
                        let b0 = b_base.add(step * TILE * TILE);
                        let b1 = b0.add(block_len);
                        // The activations come from L2: ask for the next steps' tiles in L1.
                        for line in (0..TILE * 2 * TILE * 2).step_by(64) {
                            let ahead = 2 * TILE * 2 * TILE * 2 + line;
                            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                                b0.cast::<u8>().wrapping_add(ahead).cast(),
                            );
                            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                                b1.cast::<u8>().wrapping_add(ahead).cast(),
                            );
                        }
                        asm!(
                            "tileloadd tmm4, [{a0} + {s}*1]",
                            "tileloadd tmm5, [{a1} + {s}*1]",
                            "tileloadd tmm6, [{b0} + {s}*1]",
                            "tileloadd tmm7, [{b1} + {s}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                            s = in(reg) 64usize,
                            options(nostack),
                        );
                    }
                    // c rows: [0, 16) weight rows 0..16 × tokens t0..t0+16, [16, 32) the
                    // same rows × the next 16 tokens, then weight rows 16..32 likewise.
                    let c0 = c.as_mut_ptr().cast::<f32>();
                    asm!(
                        "tilestored [{c0} + {s}*1], tmm0",
                        "tilestored [{c1} + {s}*1], tmm1",
                        "tilestored [{c2} + {s}*1], tmm2",
                        "tilestored [{c3} + {s}*1], tmm3",
                        c0 = in(reg) c0, c1 = in(reg) c0.add(TILE * TILE),
                        c2 = in(reg) c0.add(2 * TILE * TILE), c3 = in(reg) c0.add(3 * TILE * TILE),
                        s = in(reg) 64usize,
                        options(nostack),
                    );
                    let column = (first + p) * PANEL_ROWS;
                    for (tile, values) in c.chunks_exact(TILE).enumerate() {
                        let (row_half, token_half) = (tile / 2, tile % 2);
                        let token = t0 + token_half * TILE;
                        if token >= rows {
                            continue;
                        }
                        let dst = out.0.add(token * n + column + row_half * TILE);
                        transpose_tile(values, dst, n, (rows - token).min(TILE));
                    }
                }
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
        let mut next = crate::testing::uniform(1);
        let shapes = [
            (1, 16, 2),
            (1, 100, 37),
            (3, 33, 64),
            (9, 70, 130),
            (17, 5, 8),
            (1, 300, 512),
            (32, 64, 96),
            (40, 64, 96),
            (77, 96, 256),
            (33, 288, 2048),
        ];
        for (rows, n, k) in shapes {
            let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(next())).collect();
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let matrix = Bf16Matrix::from_vec(w.clone(), n, k);
            let ours = matrix.matmul(&x, rows);
            let expected = reference(&w, &x, rows, n, k);
            // From 32 rows on, AMX rounds activations to bf16 (8 significant bits).
            let tolerance = if rows >= 32 { 1e-2 } else { 1e-5 } * (k as f32).sqrt();
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= tolerance,
                    "{rows}x{n}x{k} [{i}]: {a} vs {b}"
                );
            }
            // Below the AMX threshold: the same numbers one row at a time (decode) as all
            // rows at once (prefill).
            if rows < 32 {
                for r in 0..rows {
                    let single = matrix.matmul(&x[r * k..(r + 1) * k], 1);
                    assert_eq!(single, ours[r * n..(r + 1) * n], "{rows}x{n}x{k} row {r}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tiles_transpose() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let tile: Vec<[f32; 16]> = (0..16)
            .map(|i| std::array::from_fn(|j| (i * 16 + j) as f32))
            .collect();
        let mut out = vec![-1f32; 16 * 20];
        // SAFETY: AVX-512F is present; 15 rows of 16 at stride 20 fit in `out`.
        unsafe { amx::transpose_tile(&tile, out.as_mut_ptr(), 20, 15) };
        for t in 0..16 {
            for i in 0..16 {
                let expected = if t < 15 { (i * 16 + t) as f32 } else { -1.0 };
                assert_eq!(out[t * 20 + i], expected, "row {t} column {i}");
            }
        }
    }

    #[test]
    fn silu_matches_its_definition() {
        let mut gate: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.7).collect();
        gate.extend([-120.0, -87.0, 0.0, 90.0, 1e-30]);
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + i as f32 * 0.01).collect();
        let expected: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
            .collect();
        silu_mul(&mut gate, &up);
        for (i, (a, b)) in gate.iter().zip(&expected).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * b.abs().max(1e-30),
                "[{i}] {a} vs {b}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        use std::arch::x86_64::*;
        let inputs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0437).collect();
        for chunk in inputs.chunks_exact(16) {
            let mut out = [0f32; 16];
            // SAFETY: AVX-512F is present; 16 floats in and out.
            unsafe {
                let x = _mm512_loadu_ps(chunk.as_ptr());
                _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp(x));
            }
            for (&x, &y) in chunk.iter().zip(&out) {
                let exact = (x as f64).exp();
                let ulp = (exact as f32).abs() * f32::EPSILON;
                assert!(
                    (y as f64 - exact).abs() <= 2.0 * ulp as f64,
                    "exp({x}) = {y}, not {exact}"
                );
            }
        }
    }

    #[test]
    fn rows_widen_to_f32() {
        let w: Vec<bf16> = (0..6).map(|i| bf16::from_f32(i as f32 - 2.5)).collect();
        let matrix = Bf16Matrix::from_vec(w, 2, 3);
        let mut row = [0f32; 3];
        matrix.row_f32(1, &mut row);
        assert_eq!(row, [0.5, 1.5, 2.5]);
    }
}
