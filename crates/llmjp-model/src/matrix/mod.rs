//! Weight matrices as stored on the host, in place in the memory-mapped checkpoint or owned:
//! bf16 ([`Bf16Matrix`]) and block-quantized ([`QuantMatrix`]). The CPU kernels multiply by
//! them; the other backends upload them.

mod bf16;
mod quant;

pub use bf16::Bf16Matrix;
pub use quant::QuantMatrix;
