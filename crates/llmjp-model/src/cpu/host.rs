//! The CPU backend's tensors seen as host memory: burn-flex keeps a tensor's values in a
//! plain buffer, which the kernels read and write without copies.

use burn::tensor::{DType, FloatDType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

/// The CPU backend (burn-flex: pure Rust, SIMD, multi-threaded).
pub type Cpu = burn_flex::Flex;

/// The rows of a burn-flex tensor as f32 on the host: its own storage when it is
/// contiguous f32 (no copy), else a converted contiguous copy.
pub(crate) struct HostRows(FlexTensor);

impl HostRows {
    pub fn new(x: Tensor<Cpu, 2>) -> Self {
        let x = if x.dtype() == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let tensor = x.into_primitive().tensor();
        Self(if tensor.as_slice::<f32>().is_some() {
            tensor
        } else {
            tensor.to_contiguous()
        })
    }

    pub fn values(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("contiguous f32 by construction")
    }

    /// The values, owned: the storage itself when nothing else shares it.
    pub fn into_vec(self) -> Vec<f32> {
        if self.0.is_unique() {
            self.0
                .into_data()
                .into_vec::<f32>()
                .expect("f32 by construction")
        } else {
            self.values().to_vec()
        }
    }
}

/// Host values as a burn-flex tensor of `shape`, without copying them.
pub(crate) fn host_tensor(values: Vec<f32>, shape: [usize; 2]) -> Tensor<Cpu, 2> {
    let data = TensorData::new(values, shape);
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(data)))
}

/// Rows `rows` of `values` (rows of `width`).
pub(crate) fn rows_of<'a>(
    values: &'a [f32],
    rows: &std::ops::Range<usize>,
    width: usize,
) -> &'a [f32] {
    &values[rows.start * width..rows.end * width]
}
