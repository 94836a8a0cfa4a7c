//! Vector helpers with AVX2 and FMA (x86-64): `exp`, lane masks, horizontal sums, and
//! SwiGLU's activation.

use std::arch::x86_64::*;

/// The sum of 8 lanes, always in the same order.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn horizontal_sum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let one = _mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair));
    _mm_cvtss_f32(one)
}

/// The largest of 8 lanes.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn horizontal_max(v: __m256) -> f32 {
    let quad = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_max_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair)))
}

/// `e^x` in 8 lanes, within 2 ulp for normal results (range reduction by ln 2,
/// Cephes' degree-6 polynomial, the power of two built in the exponent bits; inputs
/// are clamped to [-87.3, 88.3], where results stay normal).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.3),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
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
pub(crate) fn lanes(n: usize) -> __m256 {
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
pub(crate) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
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
    super::portable::silu_mul(&mut gate[whole..], &up[whole..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::Isa;

    #[test]
    fn vector_exp_is_within_two_ulp() {
        if !Isa::Avx2.is_supported() {
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
