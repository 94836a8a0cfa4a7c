//! The kernels with AVX-512F (x86-64). Elsewhere every entry point runs the portable
//! kernel, so callers need no `cfg` of their own.

/// Whether the CPU has AVX-512F.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{attend_block, columns, silu_mul};

#[cfg(not(target_arch = "x86_64"))]
pub(super) use elsewhere::{attend_block, columns, silu_mul};

#[cfg(not(target_arch = "x86_64"))]
mod elsewhere {
    use super::super::attention::HeadBlock;
    use super::super::matrix::Bf16Matrix;
    use super::super::portable;

    /// # Safety
    /// As [`portable::columns`].
    pub(in crate::kernels) unsafe fn columns(
        w: &Bf16Matrix,
        x: &[f32],
        rows: usize,
        first: usize,
        count: usize,
        out: *mut f32,
    ) {
        // SAFETY: forwarded.
        unsafe { portable::columns(w, x, rows, first, count, out) }
    }

    /// # Safety
    /// None beyond the portable kernel's.
    pub(in crate::kernels) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        portable::silu_mul(gate, up)
    }

    /// # Safety
    /// None beyond the portable kernel's.
    pub(in crate::kernels) unsafe fn attend_block(block: &HeadBlock) -> Vec<f32> {
        portable::attend_block(block)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::attention::HeadBlock;
    use super::super::matrix::Bf16Matrix;
    use super::super::POSITION_BLOCK as P;

    /// `e^x` in 16 lanes, within 2 ulp of the correctly rounded value (range reduction by
    /// ln 2, Cephes' degree-6 polynomial, `scalef` for the power of two).
    #[target_feature(enable = "avx512f")]
    pub(in crate::kernels) fn exp(x: __m512) -> __m512 {
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

    /// `gate[i] = silu(gate[i]) * up[i]`, 16 lanes at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(in crate::kernels) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let one = _mm512_set1_ps(1.0);
        for (g, u) in gate.chunks_mut(16).zip(up.chunks(16)) {
            let mask = lanes(g.len());
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

    /// The mask of the first `n` (at most 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            (1u16 << n) - 1
        }
    }

    /// k values per step: 32 bf16, one 64-byte cache line of a weight row.
    const K_STEP: usize = 32;
    /// How far ahead the decode kernel prefetches weights.
    const PREFETCH_BYTES: usize = 1024;

    /// Output columns `first..first + count` of `x @ w.T` for every activation row.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `out` points to a `[rows, w.rows()]` buffer nobody else
    /// writes in these columns.
    #[target_feature(enable = "avx512f")]
    pub(in crate::kernels) unsafe fn columns(
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
    ///
    /// # Safety
    /// The CPU has AVX-512F; the rows and columns named are in bounds of `x`, `w` and the
    /// `[rows, w.rows()]` buffer at `out`, whose columns `cols` are the caller's.
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
        let (n, k) = (w.rows(), w.cols());
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
                // SAFETY: row cols[c] holds k values, i + 32 <= k.
                unsafe {
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
            }
            for r in 0..MR {
                // SAFETY: activation row row + r holds k values, i + 32 <= k.
                let (x0, x1) = unsafe {
                    (
                        _mm512_loadu_ps(xs.add((row + r) * k + i)),
                        _mm512_loadu_ps(xs.add((row + r) * k + i + 16)),
                    )
                };
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
                // SAFETY: in bounds of the caller's buffer; the column is the caller's.
                unsafe { *out.add((row + r) * n + cols[c]) = _mm512_reduce_add_ps(sum) + tail };
            }
        }
    }

    /// A block of queries against one head's cache: one query's scores against 16
    /// positions are one vector (4 key blocks per pass, each block reused by all the
    /// queries); the softmax runs on vectors of positions with a vector `exp`; values are
    /// weighted 4 positions per pass over the outputs.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `block.head_dim` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(in crate::kernels) unsafe fn attend_block(block: &HeadBlock) -> Vec<f32> {
        let (d, count, width) = (block.head_dim, block.queries.len(), block.width());
        assert!(d.is_multiple_of(16), "head_dim {d} is not a multiple of 16");
        let mut scores = vec![0f32; count * width];
        let block_len = d * P;
        for (first, keys) in block.key_chunks(4) {
            for (i, query) in block.queries.iter().enumerate() {
                if block.seen(i) <= first {
                    continue;
                }
                let row = &mut scores[i * width + first..][..keys.len() / d];
                match keys.len() / block_len {
                    4 => score::<4>(keys, query, row),
                    3 => score::<3>(keys, query, row),
                    2 => score::<2>(keys, query, row),
                    _ => score::<1>(keys, query, row),
                }
            }
        }
        for (i, row) in scores.chunks_exact_mut(width).enumerate() {
            softmax(row, block.seen(i));
        }
        let mut out = vec![0f32; count * d];
        for (first, v) in block.value_chunks(4) {
            for (i, (o, p)) in out
                .chunks_exact_mut(d)
                .zip(scores.chunks_exact(width))
                .enumerate()
            {
                if block.seen(i) <= first {
                    continue;
                }
                for c in (0..d).step_by(16) {
                    // SAFETY: `o` and each value row hold d floats, c + 16 <= d.
                    unsafe {
                        let mut acc = _mm512_loadu_ps(o.as_ptr().add(c));
                        for (m, value) in v.chunks_exact(d).enumerate() {
                            let value = _mm512_loadu_ps(value.as_ptr().add(c));
                            acc = _mm512_fmadd_ps(_mm512_set1_ps(p[first + m]), value, acc);
                        }
                        _mm512_storeu_ps(o.as_mut_ptr().add(c), acc);
                    }
                }
            }
        }
        out
    }

    /// One query's scores against the `N` key blocks in `keys` (16 positions each), scaled.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn score<const N: usize>(keys: &[f32], query: &[f32], row: &mut [f32]) {
        let d = query.len();
        assert_eq!(keys.len(), N * d * P);
        assert!(row.len() >= N * P);
        let mut acc = [_mm512_setzero_ps(); N];
        for (c, &q) in query.iter().enumerate() {
            let q = _mm512_set1_ps(q);
            for (m, acc) in acc.iter_mut().enumerate() {
                // SAFETY: block m holds d rows of 16, inside the asserted length.
                let k = unsafe { _mm512_loadu_ps(keys.as_ptr().add((m * d + c) * P)) };
                *acc = _mm512_fmadd_ps(q, k, *acc);
            }
        }
        let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
        for (acc, dst) in acc.iter().zip(row.chunks_exact_mut(P)) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_mul_ps(*acc, scale)) };
        }
    }

    /// Softmax of the first `seen` scores of `row` (whole vectors); the rest become exactly
    /// zero. The vector form of [`super::super::softmax`].
    #[target_feature(enable = "avx512f")]
    fn softmax(row: &mut [f32], seen: usize) {
        let mask = |chunk: usize| lanes(seen.saturating_sub(chunk * P));
        let load = |chunk: &[f32]| {
            assert_eq!(chunk.len(), P);
            // SAFETY: 16 floats.
            unsafe { _mm512_loadu_ps(chunk.as_ptr()) }
        };
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for (n, chunk) in row.chunks_exact(P).enumerate() {
            max = _mm512_mask_max_ps(max, mask(n), max, load(chunk));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for (n, chunk) in row.chunks_exact_mut(P).enumerate() {
            let e = _mm512_maskz_mov_ps(mask(n), exp(_mm512_sub_ps(load(chunk), max)));
            sum = _mm512_add_ps(sum, e);
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), e) };
        }
        let sum = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
        for chunk in row.chunks_exact_mut(P) {
            let quotient = _mm512_div_ps(load(chunk), sum);
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), quotient) };
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn vector_exp_is_within_two_ulp() {
            if !super::super::available() {
                eprintln!("vector exp: skipping avx512: this CPU cannot run it");
                return;
            }
            let inputs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0437).collect();
            for chunk in inputs.chunks_exact(16) {
                let mut out = [0f32; 16];
                // SAFETY: AVX-512F is present; 16 floats in and out.
                unsafe {
                    let x = _mm512_loadu_ps(chunk.as_ptr());
                    _mm512_storeu_ps(out.as_mut_ptr(), exp(x));
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
    }
}
