//! SwiGLU's activation in plain Rust, for any CPU.

/// `gate[i] = silu(gate[i]) * up[i]`.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
