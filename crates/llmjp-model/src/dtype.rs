use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, FloatDType};

use crate::ModelError;

/// The float type weights and activations are computed in. Norms, the RoPE tables and MoE
/// routing are computed in f32 whatever it is, as in transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    #[default]
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16, the dtype the llm-jp checkpoints are stored in.
    BF16,
}

impl ComputeDtype {
    pub(crate) fn float(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
            Self::BF16 => FloatDType::BF16,
        }
    }
}

impl ComputeDtype {
    pub(crate) fn dtype(self) -> DType {
        self.float().into()
    }
}

impl FromStr for ComputeDtype {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => Err(ModelError::UnknownDtype(s.to_string())),
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

/// The float dtype of a float tensor's `DType` (f32 for anything else).
pub(crate) fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}
