//! Helpers for the unit tests.

/// A reproducible stream of values in `[-0.5, 0.5)` (a 64-bit LCG).
pub fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }
}
