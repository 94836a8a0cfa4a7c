//! The count of the KV cache memory a model's caches hold ([`KvMemory`]), and the charge
//! each allocation holds in it while it lives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The bytes of KV cache memory alive for one model, across all its caches: what a server
/// budgets. Memory shared between caches (pages or tensors of a
/// [`KvCache::fork`](crate::KvCache::fork)) counts once.
#[derive(Debug, Clone, Default)]
pub struct KvMemory(Arc<AtomicUsize>);

impl KvMemory {
    /// Bytes alive now.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts `bytes` until the returned charge is dropped.
    pub(crate) fn charge(&self, bytes: usize) -> Charge {
        self.0.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            memory: self.clone(),
            bytes,
        }
    }
}

/// Bytes counted in a [`KvMemory`] while it lives (a clone counts them again).
#[derive(Debug)]
pub(crate) struct Charge {
    memory: KvMemory,
    bytes: usize,
}

impl Charge {
    /// Counts `bytes` instead of what it counted.
    pub(crate) fn set(&mut self, bytes: usize) {
        self.memory.0.fetch_add(bytes, Ordering::Relaxed);
        self.memory.0.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = bytes;
    }
}

impl Clone for Charge {
    fn clone(&self) -> Self {
        self.memory.charge(self.bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.memory.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
