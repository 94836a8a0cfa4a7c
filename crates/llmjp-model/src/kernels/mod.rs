//! CPU kernels on host memory: bf16 weights × f32 activations, causal attention over an f32
//! KV cache, SwiGLU's activation, softmax. [`crate::ops::CpuKernels`] runs the decoder on
//! them; they are public for benchmarks and for other users of the same layouts.
//!
//! Each kernel exists once per instruction set, in its own module: [`Isa::Portable`] (any
//! CPU), [`Isa::Avx2`], [`Isa::Avx512`] and [`Isa::Amx`] (x86-64); an instruction set
//! without a kernel of its own for some operation runs the next one below it. Every entry
//! point takes the [`Isa`] to run; one asked for that the CPU lacks runs on the best one it
//! has, so a wrong choice is slow, never unsound. [`Isa::selected`] picks the best the CPU
//! has once per process, unless the environment variable [`ISA_ENV`]
//! (`LLMJP_CPU_ISA=portable|avx2|avx512|amx`) asks for another.
//!
//! ```
//! use half::bf16;
//! use llmjp_model::kernels::{Bf16Matrix, Isa};
//!
//! // w = [[1, 2], [3, 4], [5, 6]]: 3 outputs, 2 inputs.
//! let w: Vec<bf16> = [1., 2., 3., 4., 5., 6.].map(bf16::from_f32).to_vec();
//! let w = Bf16Matrix::from_vec(w, 3, 2);
//! for isa in Isa::ALL.into_iter().filter(|isa| isa.is_supported()) {
//!     assert_eq!(w.matmul(isa, &[1.0, 10.0], 1), [21.0, 43.0, 65.0]); // x @ w.T
//! }
//! ```

mod amx;
mod attention;
mod avx2;
mod avx512;
mod matrix;
mod portable;
mod quant;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

pub use attention::{HostKv, PAGE, POSITION_BLOCK, QUERY_BLOCK};
pub use matrix::Bf16Matrix;
pub use portable::softmax;
pub use quant::QuantMatrix;

use crate::ModelError;

/// The environment variable that overrides the instruction set: `portable`, `avx2`,
/// `avx512` or `amx`.
pub const ISA_ENV: &str = "LLMJP_CPU_ISA";

/// An instruction set the kernels are written for, from the most portable to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust: any CPU.
    Portable,
    /// AVX2 and FMA vectors (x86-64).
    Avx2,
    /// AVX-512F vectors (x86-64).
    Avx512,
    /// AVX-512 plus the AMX-BF16 tile unit for prefills of 32 rows or more (x86-64, Linux).
    Amx,
}

impl Isa {
    /// Every instruction set, portable first.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Amx];

    /// Whether this CPU (and, for AMX, the operating system) can run it.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Portable => true,
            Self::Avx2 => avx2::available(),
            Self::Avx512 => avx2::available() && avx512::available(),
            Self::Amx => avx512::available() && amx::available(),
        }
    }

    /// The fastest instruction set this CPU runs.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            Self::ALL
                .into_iter()
                .rev()
                .find(|isa| isa.is_supported())
                .unwrap_or(Self::Portable)
        })
    }

    /// The instruction set to run: [`best`](Self::best), or what [`ISA_ENV`] asks for.
    /// Decided once per process; an unknown name, or one the CPU cannot run, is an error
    /// every time it is asked for.
    pub fn selected() -> Result<Isa, ModelError> {
        static SELECTED: OnceLock<Result<Isa, String>> = OnceLock::new();
        SELECTED
            .get_or_init(|| match std::env::var(ISA_ENV) {
                Err(_) => Ok(Self::best()),
                Ok(name) => match name.parse::<Isa>() {
                    Ok(isa) if isa.is_supported() => Ok(isa),
                    Ok(isa) => Err(format!(
                        "{ISA_ENV}={name}: this CPU cannot run {isa} (the best it runs is {})",
                        Self::best()
                    )),
                    Err(e) => Err(e.to_string()),
                },
            })
            .clone()
            .map_err(ModelError::InvalidIsa)
    }

    /// `self`, or the best supported one below it.
    pub(crate) fn usable(self) -> Isa {
        self.min(Self::best())
    }

    /// The name `LLMJP_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Amx => "amx",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                ModelError::InvalidIsa(format!(
                    "{ISA_ENV}={s}: unknown instruction set, expected portable, avx2, avx512 or amx"
                ))
            })
    }
}

/// SwiGLU's activation in place: `gate[i] = silu(gate[i]) * up[i]`, in f32.
pub fn silu_mul(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    match isa.usable() {
        // SAFETY: `usable` returned an ISA the CPU has.
        Isa::Avx512 | Isa::Amx => unsafe { avx512::silu_mul(gate, up) },
        // SAFETY: `usable` returned an ISA the CPU has.
        Isa::Avx2 => unsafe { avx2::silu_mul(gate, up) },
        Isa::Portable => portable::silu_mul(gate, up),
    }
}

/// A `[rows, n]` output computed by tasks of weight rows in parallel: `task(first, count,
/// out)` writes output columns `first..first + count` of every row, reading its weight rows
/// once for all activation rows.
fn in_column_tasks(rows: usize, n: usize, task: impl Fn(usize, usize, SendPtr) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; rows * n];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let task_rows = if rows == 1 { 256 } else { 64 };
    (0..n.div_ceil(task_rows)).into_par_iter().for_each(|t| {
        let first = t * task_rows;
        task(first, task_rows.min(n - first), out_ptr);
    });
    out
}

/// A raw output pointer handed to worker threads that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint parts of an output buffer to worker threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The instruction sets this machine runs; says which it skips.
    pub fn supported(test: &str) -> Vec<Isa> {
        let (run, skip): (Vec<Isa>, Vec<Isa>) =
            Isa::ALL.into_iter().partition(|isa| isa.is_supported());
        if !skip.is_empty() {
            eprintln!("{test}: skipping {skip:?}: this CPU cannot run them");
        }
        run
    }

    #[test]
    fn names_parse_and_unknown_ones_are_errors() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
            assert_eq!(isa.to_string().to_uppercase().parse::<Isa>().unwrap(), isa);
        }
        let err = "sse2".parse::<Isa>().unwrap_err();
        assert!(matches!(err, ModelError::InvalidIsa(_)), "{err}");
        assert!(err.to_string().contains(ISA_ENV), "{err}");
        assert!(Isa::Portable.is_supported());
        assert!(Isa::best().is_supported());
        assert_eq!(Isa::Amx.usable(), Isa::best().min(Isa::Amx));
    }

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

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = [1.0f32, 3.0, 2.0, -1e9];
        softmax(&mut row);
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(row[1] > row[2] && row[2] > row[0] && row[3] == 0.0);
    }
}
