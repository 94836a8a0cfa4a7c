//! Vector helpers with AVX-512F (x86-64): `exp`, rounding, lane masks, and SwiGLU's
//! activation.

use std::arch::x86_64::*;

/// `y` rounded half away from zero, as `f32::round`, in 16 i32 lanes (`y` within i32).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn round_half_away(y: __m512) -> __m512i {
    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
    let half =
        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(y, t)), _mm512_set1_ps(0.5));
    // ±1 with the sign of y (integer ops: the float and/or need AVX-512DQ).
    let sign = _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32(i32::MIN));
    let one = _mm512_castps_si512(_mm512_set1_ps(1.0));
    let away = _mm512_castsi512_ps(_mm512_or_si512(one, sign));
    _mm512_cvttps_epi32(_mm512_mask_add_ps(t, half, t, away))
}

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

/// The mask of the first `n` (at most 16) lanes.
pub(crate) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`, 16 lanes at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::Isa;

    #[test]
    fn vector_exp_is_within_two_ulp() {
        if !Isa::Avx512.is_supported() {
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
