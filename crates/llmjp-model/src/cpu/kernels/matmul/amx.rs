//! Intel AMX (the bf16 tile unit of Sapphire Rapids and later) for prefills, written with
//! `asm!`, which stable Rust assembles. The process asks Linux for the tile state once;
//! where the CPU or the kernel refuses, `Isa::Amx` is not supported.
//!
//! Each task takes up to 4 panels of 32 weight rows (one contiguous range of the file,
//! about 1 MB): it **packs** them into `tdpbf16ps` A-tile layout while prefetching the next
//! task's rows, **computes** 16×16 f32 result tiles against the activations (rounded to
//! bf16 once per call, laid out as B tiles), and **stores** each result tile transposed in
//! registers into the `[rows, n]` output.

/// Below this many rows the AVX-512 kernel keeps up and keeps f32 activations.
pub(super) const MIN_ROWS: usize = 32;

/// Shapes the kernel takes: whole k steps and whole panels of weight rows.
pub(super) fn fits(k: usize, n: usize) -> bool {
    k.is_multiple_of(x86::K_STEP) && n.is_multiple_of(x86::PANEL_ROWS)
}

pub(super) use x86::matmul;

mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use crate::cpu::kernels::isa::Isa;
    use crate::cpu::kernels::tasks::SendPtr;
    use crate::matrix::Bf16Matrix;

    /// k values per tile step: 32 bf16, 64 bytes per tile row.
    pub const K_STEP: usize = 32;
    /// Rows (and columns) of a tile.
    const TILE: usize = 16;
    /// Weight rows per panel: two A tiles.
    pub const PANEL_ROWS: usize = 2 * TILE;
    /// Bytes of one A tile row step: 32 weight rows of 32 bf16.
    const STEP_BYTES: usize = PANEL_ROWS * K_STEP * 2;

    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    impl TileConfig {
        /// Eight tiles of 16 rows of 64 bytes.
        fn full() -> Self {
            let mut config = Self {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                bytes_per_row: [0; 16],
                rows: [0; 16],
            };
            config.bytes_per_row[..8].fill(64);
            config.rows[..8].fill(TILE as u8);
            config
        }
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

    /// `x @ w.T` for at least [`super::MIN_ROWS`] rows and shapes that [`super::fits`].
    /// The caller has checked that `Isa::Amx` is supported.
    pub fn matmul(w: &Bf16Matrix, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (w.rows(), w.cols());
        assert!(
            super::fits(k, n) && Isa::Amx.is_supported(),
            "{n}x{k} on AMX"
        );
        let activations = pack_activations(x, rows, k);
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
                    // SAFETY: AMX is available (asserted above); each task writes only the
                    // output columns of its own panels.
                    unsafe {
                        panels_times_activations(
                            w,
                            panel,
                            &activations,
                            rows,
                            first,
                            count,
                            out_ptr,
                        )
                    };
                })
            });
        out
    }

    thread_local! {
        /// Each worker's panel buffer, kept between calls (no page faults per call).
        static PANEL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// The activations as B tiles: per block of 16 rows, `[pair][row]` bf16 pairs (zeros
    /// past `rows`, blocks for whole pairs of tiles), so that each tile is 1 KB of
    /// contiguous memory.
    fn pack_activations(x: &[f32], rows: usize, k: usize) -> Vec<u32> {
        let blocks = rows.div_ceil(PANEL_ROWS) * 2;
        let pairs = k / 2;
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
        activations
    }

    /// Output columns of panels `first..first + count` (32 weight rows each) for every row.
    ///
    /// # Safety
    /// AMX is available; `out` is a `[rows, w.rows()]` buffer whose columns of these
    /// panels nobody else writes; `activations` come from [`pack_activations`] for `rows`.
    unsafe fn panels_times_activations(
        w: &Bf16Matrix,
        panel: &mut [u8],
        activations: &[u32],
        rows: usize,
        first: usize,
        count: usize,
        out: SendPtr,
    ) {
        let (n, k) = (w.rows(), w.cols());
        let panel_len = PANEL_ROWS * k * 2;
        let source = &w.bytes()[first * panel_len..(first + count) * panel_len];
        // SAFETY: AMX implies AVX-512F.
        unsafe { pack_panels(source, panel, k) };
        let next_task = source.as_ptr_range().end;
        let config = TileConfig::full();
        // C tiles are [weight row][token]; each is stored here and written out transposed.
        let mut c = [[0f32; TILE]; 4 * TILE];
        // SAFETY: AMX is enabled for this process; every tile stays inside `panel`,
        // `activations` (whole blocks of 16 rows) or `c`; stores stay in the caller's
        // columns.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
            for t0 in (0..rows).step_by(PANEL_ROWS) {
                let b = activations.as_ptr().add(t0 / TILE * (k / 2 * TILE));
                for p in 0..count {
                    let a = panel.as_ptr().add(p * panel_len);
                    // While the first row block computes, bring the next task's panels
                    // (most often this thread's next) into L2.
                    let prefetch = (t0 == 0).then(|| next_task.wrapping_add(p * panel_len));
                    compute(a, b, k, prefetch, &mut c);
                    let column = (first + p) * PANEL_ROWS;
                    store(&c, out.0, n, rows, t0, column);
                }
            }
            asm!("tilerelease", options(nostack));
        }
    }

    /// Packs 32-row panels of `source` (rows of `k` bf16) into `panel` as
    /// `[panel][step][row][32 bf16]`, where each A tile is 1 KB of contiguous memory, one
    /// cache line at a time, the panel written in order.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_panels(source: &[u8], panel: &mut [u8], k: usize) {
        let panel_len = PANEL_ROWS * k * 2;
        assert!(source.len().is_multiple_of(panel_len) && panel.len() >= source.len());
        for (from, to) in source
            .chunks_exact(panel_len)
            .zip(panel.chunks_exact_mut(panel_len))
        {
            let (src, dst) = (from.as_ptr(), to.as_mut_ptr());
            for step in 0..k / K_STEP {
                for r in 0..PANEL_ROWS {
                    let at = (r * k + step * K_STEP) * 2;
                    let to = (step * PANEL_ROWS + r) * K_STEP * 2;
                    // SAFETY: both 64-byte ranges are inside one asserted panel.
                    unsafe {
                        let line = _mm512_loadu_si512(src.add(at) as *const __m512i);
                        _mm512_storeu_si512(dst.add(to) as *mut __m512i, line);
                    }
                }
            }
        }
    }

    /// One packed panel (`a`, 32 weight rows) times 32 rows of activations (`b`, two blocks
    /// of B tiles) into `c`: rows `[0, 16)` are weight rows 0..16 × the first 16 activation
    /// rows, `[16, 32)` the same weight rows × the next 16, then weight rows 16..32 likewise.
    /// `prefetch`: the next panel's source rows, brought into L2 meanwhile.
    ///
    /// # Safety
    /// AMX is available with [`TileConfig::full`] loaded; `a` holds a packed panel of `k`
    /// values, `b` two blocks of `k / 2` pairs × 16 rows.
    #[inline]
    unsafe fn compute(
        a: *const u8,
        b: *const u32,
        k: usize,
        prefetch: Option<*const u8>,
        c: &mut [[f32; TILE]; 4 * TILE],
    ) {
        let block_len = k / 2 * TILE;
        // SAFETY: as the caller guarantees.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack)
            );
            for step in 0..k / K_STEP {
                if let Some(next) = prefetch {
                    for line in (0..STEP_BYTES).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T1>(
                            next.wrapping_add(step * STEP_BYTES + line).cast(),
                        );
                    }
                }
                let a0 = a.add(step * STEP_BYTES);
                let a1 = a0.add(TILE * K_STEP * 2);
                let b0 = b.add(step * TILE * TILE);
                let b1 = b0.add(block_len);
                // The activations come from L2: ask for the next steps' tiles in L1.
                for line in (0..TILE * 2 * TILE * 2).step_by(64) {
                    let ahead = 2 * TILE * 2 * TILE * 2 + line;
                    _mm_prefetch::<_MM_HINT_T0>(b0.cast::<i8>().wrapping_add(ahead));
                    _mm_prefetch::<_MM_HINT_T0>(b1.cast::<i8>().wrapping_add(ahead));
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
        }
    }

    /// Writes the four result tiles of [`compute`] transposed into `out` (`[rows, n]`) at
    /// activation rows `t0..` and weight rows (output columns) `column..column + 32`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `out` is a `[rows, n]` buffer and those columns are the
    /// caller's.
    #[inline]
    unsafe fn store(
        c: &[[f32; TILE]; 4 * TILE],
        out: *mut f32,
        n: usize,
        rows: usize,
        t0: usize,
        column: usize,
    ) {
        for (tile, values) in c.chunks_exact(TILE).enumerate() {
            let (row_half, token_half) = (tile / 2, tile % 2);
            let token = t0 + token_half * TILE;
            if token >= rows {
                continue;
            }
            // SAFETY: `(rows - token).min(16)` rows of 16 from here are in the buffer.
            unsafe {
                let dst = out.add(token * n + column + row_half * TILE);
                transpose_tile(values, dst, n, (rows - token).min(TILE));
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

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tiles_transpose() {
            if !crate::cpu::Isa::Avx512.is_supported() {
                eprintln!("tile transpose: skipping avx512: this CPU cannot run it");
                return;
            }
            let tile: Vec<[f32; 16]> = (0..16)
                .map(|i| std::array::from_fn(|j| (i * 16 + j) as f32))
                .collect();
            let mut out = vec![-1f32; 16 * 20];
            // SAFETY: AVX-512F is present; 15 rows of 16 at stride 20 fit in `out`.
            unsafe { transpose_tile(&tile, out.as_mut_ptr(), 20, 15) };
            for t in 0..16 {
                for i in 0..16 {
                    let expected = if t < 15 { (i * 16 + t) as f32 } else { -1.0 };
                    assert_eq!(out[t * 20 + i], expected, "row {t} column {i}");
                }
            }
        }
    }
}
