//! Causal attention of a block of queries over one head's cached keys and values
//! ([`HeadBlock`]), on the instruction set asked for. The KV cache that lays them out is
//! [`HostKv`](crate::cpu::HostKv).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod block;
mod portable;

pub use block::{HeadBlock, HeadPage, PAGE, POSITION_BLOCK, QUERY_BLOCK};

use super::isa::Isa;

/// The block's outputs, `[queries, head_dim]`, on `isa` (the vector kernels need whole
/// vectors of the head dimension; other widths run the portable steps).
pub fn attend_block(isa: Isa, block: &HeadBlock) -> Vec<f32> {
    let d = block.head_dim;
    match isa.usable() {
        #[cfg(target_arch = "x86_64")]
        isa if isa >= Isa::Avx512 && d.is_multiple_of(16) => {
            // SAFETY: `usable` returned an ISA with AVX-512F; rows are whole vectors.
            unsafe { avx512::attend_block(block) }
        }
        #[cfg(target_arch = "x86_64")]
        isa if isa >= Isa::Avx2 && d.is_multiple_of(8) => {
            // SAFETY: `usable` returned an ISA with AVX2 and FMA; rows are whole vectors.
            unsafe { avx2::attend_block(block) }
        }
        _ => portable::attend_block(block),
    }
}
