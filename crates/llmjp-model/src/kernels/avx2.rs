//! The kernels with AVX2 and FMA (x86-64 CPUs without AVX-512: AMD EPYC and Ryzen before
//! Zen 4, Intel before Skylake-X): the bf16 matmul, attention, SwiGLU's activation.
//! Elsewhere every entry point runs the portable kernel.

/// Whether the CPU has AVX2, FMA and F16C (every AVX2 CPU has F16C).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{attend_block, columns, horizontal_sum, silu_mul};

/// Elsewhere: the portable kernel (never chosen: [`available`] is false).
///
/// # Safety
/// None beyond the portable kernel's.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    super::portable::silu_mul(gate, up)
}

/// Elsewhere: the portable kernel (never chosen: [`available`] is false).
///
/// # Safety
/// None beyond the portable kernel's.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn attend_block(block: &super::attention::HeadBlock) -> Vec<f32> {
    super::portable::attend_block(block)
}

/// Elsewhere: the portable kernel (never chosen: [`available`] is false).
///
/// # Safety
/// As [`super::portable::columns`].
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn columns(
    w: &super::Bf16Matrix,
    x: &[f32],
    rows: usize,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded.
    unsafe { super::portable::columns(w, x, rows, first, count, out) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::attention::HeadBlock;
    use super::super::{Bf16Matrix, POSITION_BLOCK as P};

    /// k values per step: 16 bf16, half a cache line of a weight row.
    const K_STEP: usize = 16;
    /// How far ahead the decode kernel prefetches weights.
    const PREFETCH_BYTES: usize = 1024;

    /// Output columns `first..first + count` of `x @ w.T` for every activation row.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `out` points to a `[rows, w.rows()]` buffer nobody else
    /// writes in these columns.
    #[target_feature(enable = "avx2,fma")]
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
        // More rows: each widened weight step serves 4 activation rows; blocks of 4 rows
        // (in L1) run against the task's weight rows (in L2) in turn.
        let mut r = 0;
        while r < rows {
            let mr = (rows - r).min(4);
            for c in first..first + count {
                // SAFETY: forwarded; rows r..r + mr and column c are in bounds.
                unsafe {
                    match mr {
                        4 => tile::<4, 1>(w, x, r, [c], out),
                        3 => tile::<3, 1>(w, x, r, [c], out),
                        2 => tile::<2, 1>(w, x, r, [c], out),
                        _ => tile::<1, 1>(w, x, r, [c], out),
                    }
                }
            }
            r += mr;
        }
    }

    /// Activation rows `row..row + MR` times weight rows `cols`. Each output accumulates
    /// the two halves of a step in two chains, in the same order whatever the tile, so one
    /// row at a time gives the same numbers as many.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the rows and columns named are in bounds of `x`, `w` and
    /// the `[rows, w.rows()]` buffer at `out`, whose columns `cols` are the caller's.
    // Indexing the register tile by row and column reads clearer than iterators here.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
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
        let mut acc_lo = [[_mm256_setzero_ps(); NR]; MR];
        let mut acc_hi = [[_mm256_setzero_ps(); NR]; MR];
        let mut i = 0;
        while i < vector_k {
            for c in 0..NR {
                // SAFETY: row cols[c] holds k values, i + 16 <= k.
                let (lo, hi) = unsafe {
                    let p = weights.add((cols[c] * k + i) * 2);
                    if MR == 1 {
                        // Decode is bound by memory: ask for the weights a few steps ahead.
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
                    }
                    let v = _mm256_loadu_si256(p as *const __m256i);
                    let a = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(v));
                    let b = _mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(v));
                    (
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(a)),
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(b)),
                    )
                };
                for r in 0..MR {
                    // SAFETY: activation row row + r holds k values, i + 16 <= k.
                    let (x0, x1) = unsafe {
                        (
                            _mm256_loadu_ps(xs.add((row + r) * k + i)),
                            _mm256_loadu_ps(xs.add((row + r) * k + i + 8)),
                        )
                    };
                    acc_lo[r][c] = _mm256_fmadd_ps(x0, lo, acc_lo[r][c]);
                    acc_hi[r][c] = _mm256_fmadd_ps(x1, hi, acc_hi[r][c]);
                }
            }
            i += K_STEP;
        }
        for r in 0..MR {
            let xr = &x[(row + r) * k..(row + r + 1) * k];
            for c in 0..NR {
                let tail = w.dot(xr, cols[c], vector_k);
                let sum = horizontal_sum(_mm256_add_ps(acc_lo[r][c], acc_hi[r][c]));
                // SAFETY: in bounds of the caller's buffer; the column is the caller's.
                unsafe { *out.add((row + r) * n + cols[c]) = sum + tail };
            }
        }
    }

    /// The sum of 8 lanes, always in the same order.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::kernels) fn horizontal_sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair));
        _mm_cvtss_f32(one)
    }

    /// `e^x` in 8 lanes, within 2 ulp for normal results (range reduction by ln 2,
    /// Cephes' degree-6 polynomial, the power of two built in the exponent bits; inputs
    /// are clamped to [-87.3, 88.3], where results stay normal).
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::kernels) fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.3),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }

    /// Lanes `0..n` (at most 8) set.
    #[target_feature(enable = "avx2,fma")]
    fn lanes(n: usize) -> __m256 {
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            index,
        ))
    }

    /// `gate[i] = silu(gate[i]) * up[i]`, 8 lanes at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::kernels) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let one = _mm256_set1_ps(1.0);
        let whole = gate.len() / 8 * 8;
        for (g, u) in gate[..whole].chunks_exact_mut(8).zip(up.chunks_exact(8)) {
            // SAFETY: 8 floats each.
            unsafe {
                let x = _mm256_loadu_ps(g.as_ptr());
                let y = _mm256_loadu_ps(u.as_ptr());
                let sig = _mm256_div_ps(
                    x,
                    _mm256_add_ps(one, exp(_mm256_sub_ps(_mm256_setzero_ps(), x))),
                );
                _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(sig, y));
            }
        }
        super::super::portable::silu_mul(&mut gate[whole..], &up[whole..]);
    }

    /// A block of queries against one head's cache, as the AVX-512 kernel does it in
    /// 8-lane halves: one query's scores against 16 positions are two vectors (2 key
    /// blocks per pass, each reused by all the queries); the softmax runs on vectors with
    /// [`exp`]; values are weighted 4 positions per pass over the outputs.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA and `block.head_dim` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::kernels) unsafe fn attend_block(block: &HeadBlock) -> Vec<f32> {
        let (d, count, width) = (block.head_dim, block.queries.len(), block.width());
        assert!(d.is_multiple_of(8), "head_dim {d} is not a multiple of 8");
        let mut scores = vec![0f32; count * width];
        let block_len = d * P;
        for (first, keys) in block.key_chunks(2) {
            for (i, query) in block.queries.iter().enumerate() {
                if block.seen(i) <= first {
                    continue;
                }
                let row = &mut scores[i * width + first..][..keys.len() / d];
                match keys.len() / block_len {
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
                for c in (0..d).step_by(8) {
                    // SAFETY: `o` and each value row hold d floats, c + 8 <= d.
                    unsafe {
                        let mut acc = _mm256_loadu_ps(o.as_ptr().add(c));
                        for (m, value) in v.chunks_exact(d).enumerate() {
                            let value = _mm256_loadu_ps(value.as_ptr().add(c));
                            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[first + m]), value, acc);
                        }
                        _mm256_storeu_ps(o.as_mut_ptr().add(c), acc);
                    }
                }
            }
        }
        out
    }

    /// One query's scores against the `N` key blocks in `keys` (16 positions each, two
    /// vectors), scaled.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn score<const N: usize>(keys: &[f32], query: &[f32], row: &mut [f32]) {
        let d = query.len();
        assert_eq!(keys.len(), N * d * P);
        assert!(row.len() >= N * P);
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for (c, &q) in query.iter().enumerate() {
            let q = _mm256_set1_ps(q);
            for (m, acc) in acc.iter_mut().enumerate() {
                // SAFETY: block m holds d rows of 16, inside the asserted length.
                let (k0, k1) = unsafe {
                    let at = keys.as_ptr().add((m * d + c) * P);
                    (_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)))
                };
                acc[0] = _mm256_fmadd_ps(q, k0, acc[0]);
                acc[1] = _mm256_fmadd_ps(q, k1, acc[1]);
            }
        }
        let scale = _mm256_set1_ps(1.0 / (d as f32).sqrt());
        for (acc, dst) in acc.iter().flatten().zip(row.chunks_exact_mut(8)) {
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_mul_ps(*acc, scale)) };
        }
    }

    /// Softmax of the first `seen` scores of `row` (whole vectors of 8); the rest become
    /// exactly zero.
    #[target_feature(enable = "avx2,fma")]
    fn softmax(row: &mut [f32], seen: usize) {
        let mask = |chunk: usize| lanes(seen.saturating_sub(chunk * 8));
        let load = |chunk: &[f32]| {
            assert_eq!(chunk.len(), 8);
            // SAFETY: 8 floats.
            unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
        };
        let low = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut max = low;
        for (n, chunk) in row.chunks_exact(8).enumerate() {
            max = _mm256_max_ps(max, _mm256_blendv_ps(low, load(chunk), mask(n)));
        }
        let max = _mm256_set1_ps(horizontal_max(max));
        let mut sum = _mm256_setzero_ps();
        for (n, chunk) in row.chunks_exact_mut(8).enumerate() {
            let e = _mm256_and_ps(mask(n), exp(_mm256_sub_ps(load(chunk), max)));
            sum = _mm256_add_ps(sum, e);
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), e) };
        }
        let sum = _mm256_set1_ps(horizontal_sum(sum));
        for chunk in row.chunks_exact_mut(8) {
            let quotient = _mm256_div_ps(load(chunk), sum);
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), quotient) };
        }
    }

    /// The largest of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn horizontal_max(v: __m256) -> f32 {
        let quad = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_max_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn vector_exp_is_within_two_ulp() {
            if !super::super::available() {
                eprintln!("vector exp: skipping avx2: this CPU cannot run it");
                return;
            }
            let inputs: Vec<f32> = (-1996..=2016).map(|i| i as f32 * 0.0437).collect();
            for chunk in inputs.chunks_exact(8) {
                let mut out = [0f32; 8];
                // SAFETY: AVX2 and FMA are present; 8 floats in and out.
                unsafe {
                    let x = _mm256_loadu_ps(chunk.as_ptr());
                    _mm256_storeu_ps(out.as_mut_ptr(), exp(x));
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
