//! Weight matrices as stored on the host, in place in the memory-mapped checkpoint or owned:
//! bf16 ([`Bf16Matrix`]) and block-quantized ([`QuantMatrix`]), and the quantized blocks
//! repacked for the 8-bit dot-product kernels ([`InterleavedQuantMatrix`], and llama.cpp's
//! K-quants [`InterleavedKQuantMatrix`]). The CPU kernels
//! multiply by them; the other backends upload them.

mod bf16;
pub(crate) mod interleaved;
mod interleaved_k;
mod quant;

pub use bf16::Bf16Matrix;
pub use interleaved::InterleavedQuantMatrix;
pub use interleaved_k::InterleavedKQuantMatrix;
pub use quant::QuantMatrix;
