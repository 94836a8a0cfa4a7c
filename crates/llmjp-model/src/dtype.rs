use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, FloatDType};
use llmjp_weights::quant::BlockFormat;

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

/// What a model's weights are loaded as: `bf16`, `f16`, `f32`, or `q8_0` / `q4_0`, which
/// quantize the linear weights of a float checkpoint on load (computing as bf16 does:
/// f32 activations on the CPU). A quantized checkpoint runs in its stored format whatever
/// is asked.
///
/// ```
/// use llmjp_model::{ComputeDtype, WeightDtype};
/// use llmjp_weights::quant::BlockFormat;
///
/// let q8: WeightDtype = "q8_0".parse()?;
/// assert_eq!(q8.quantize, Some(BlockFormat::Q8_0));
/// assert_eq!(q8.compute, ComputeDtype::BF16);
/// assert_eq!(WeightDtype::from(ComputeDtype::F32).to_string(), "f32");
/// assert!("int3".parse::<WeightDtype>().is_err());
/// # Ok::<(), llmjp_model::ModelError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightDtype {
    /// The dtype computed in (and of the weights left in float).
    pub compute: ComputeDtype,
    /// The block format float linear weights are quantized to on load, if any.
    pub quantize: Option<BlockFormat>,
}

impl From<ComputeDtype> for WeightDtype {
    fn from(compute: ComputeDtype) -> Self {
        Self {
            compute,
            quantize: None,
        }
    }
}

impl FromStr for WeightDtype {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match BlockFormat::from_name(s) {
            Some(format) => Ok(Self {
                compute: ComputeDtype::BF16,
                quantize: Some(format),
            }),
            None => s.parse::<ComputeDtype>().map(Self::from),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quantize {
            Some(format) => f.write_str(format.name()),
            None => self.compute.fmt(f),
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
