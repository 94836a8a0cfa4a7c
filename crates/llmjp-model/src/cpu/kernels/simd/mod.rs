//! Elementwise kernels and the vector helpers the other kernels share: SwiGLU's activation,
//! a vector `exp`, lane masks and horizontal reductions.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
mod portable;

use super::isa::Isa;

/// SwiGLU's activation in place: `gate[i] = silu(gate[i]) * up[i]`, in f32.
pub fn silu_mul(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    match isa.usable() {
        // SAFETY: `usable` returned an ISA the CPU has.
        #[cfg(target_arch = "x86_64")]
        isa if isa >= Isa::Avx512 => unsafe { avx512::silu_mul(gate, up) },
        // SAFETY: `usable` returned an ISA the CPU has.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::silu_mul(gate, up) },
        _ => portable::silu_mul(gate, up),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::isa::supported;

    #[test]
    fn silu_matches_its_definition_on_every_isa() {
        let mut gate: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.7).collect();
        gate.extend([-120.0, -87.0, 0.0, 90.0, 1e-30]);
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + i as f32 * 0.01).collect();
        let expected: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
            .collect();
        for isa in supported("silu") {
            let mut out = gate.clone();
            silu_mul(isa, &mut out, &up);
            for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= 1e-6 * b.abs().max(1e-30),
                    "{isa} [{i}] {a} vs {b}"
                );
            }
        }
    }
}
