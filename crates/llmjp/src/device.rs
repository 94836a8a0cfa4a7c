use std::fmt;
use std::str::FromStr;

use crate::LlmError;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// burn-flex on the CPU.
    Cpu,
    /// burn-cuda on GPU `N` (needs the `cuda` feature and a GPU).
    Cuda(usize),
}

impl Device {
    /// CUDA when this build has it and a GPU driver loads, else the CPU.
    pub fn auto() -> Self {
        if llmjp_model::backend::cuda_available() {
            Self::Cuda(0)
        } else {
            Self::Cpu
        }
    }
}

impl FromStr for Device {
    type Err = LlmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            LlmError::Device(format!(
                "unknown device {s:?}: expected cpu, cuda or cuda:N"
            ))
        };
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| invalid()),
                None => Err(invalid()),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
