//! [`Isa`]: the instruction sets the kernels are written for, what this CPU runs, and the
//! one chosen for this process.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::ModelError;

/// The environment variable that overrides the instruction set: `portable`, `avx2`,
/// `avx512`, `avx512vnni`, `avx512bf16` or `amx`.
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
    /// AVX-512 with VNNI's 8-bit dot products (`vpdpbusd`) for the quantized matmuls
    /// (x86-64: Cascade Lake, Ice Lake and later Xeons, AMD Zen 4 and later).
    Avx512Vnni,
    /// AVX-512 VNNI plus BF16's dot products (`vdpbf16ps`) for the bf16 matmuls, activations
    /// rounded to bf16 (x86-64: Cooper Lake, Sapphire Rapids and later Xeons, AMD Zen 4 and
    /// later).
    Avx512Bf16,
    /// AVX-512 BF16 plus the AMX-BF16 tile unit for prefills of 32 rows or more (x86-64,
    /// Linux).
    Amx,
}

impl Isa {
    /// Every instruction set, portable first.
    pub const ALL: [Isa; 6] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Avx512Bf16,
        Isa::Amx,
    ];

    /// Whether this CPU (and, for AMX, the operating system) can run it.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Portable => true,
            Self::Avx2 => has_avx2(),
            Self::Avx512 => has_avx2() && has_avx512(),
            Self::Avx512Vnni => Self::Avx512.is_supported() && has_avx512_vnni(),
            Self::Avx512Bf16 => Self::Avx512Vnni.is_supported() && has_avx512_bf16(),
            Self::Amx => Self::Avx512Bf16.is_supported() && has_amx(),
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

    /// `self`, or the best below it whose bf16 matmuls keep activations in f32
    /// ([`Isa::Avx512Vnni`]).
    pub fn with_f32_activations(self) -> Isa {
        self.min(Self::Avx512Vnni)
    }

    /// The name `LLMJP_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Avx512Vnni => "avx512vnni",
            Self::Avx512Bf16 => "avx512bf16",
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
                    "{ISA_ENV}={s}: unknown instruction set, expected portable, avx2, avx512, \
                     avx512vnni, avx512bf16 or amx"
                ))
            })
    }
}

/// Whether the CPU has AVX2, FMA and F16C (every AVX2 CPU has F16C).
fn has_avx2() -> bool {
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

/// Whether the CPU has AVX-512F, BW and VL.
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 VNNI.
fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 BF16.
fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AMX-BF16 and Linux lets this process use the tile registers (asked
/// for once).
fn has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            edx & (1 << 22) != 0 && edx & (1 << 24) != 0 && request_tile_permission()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Asks Linux for the AMX tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
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

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// The instruction sets this machine runs; says which it skips.
#[cfg(test)]
pub(crate) fn supported(test: &str) -> Vec<Isa> {
    let (run, skip): (Vec<Isa>, Vec<Isa>) =
        Isa::ALL.into_iter().partition(|isa| isa.is_supported());
    if !skip.is_empty() {
        eprintln!("{test}: skipping {skip:?}: this CPU cannot run them");
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
