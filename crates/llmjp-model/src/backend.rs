//! The backends the models run on.

/// The CPU backend (burn-flex: pure Rust, SIMD, multi-threaded).
pub type Cpu = burn_flex::Flex;

/// The CUDA backend (burn-cuda), with the `cuda` feature.
#[cfg(feature = "cuda")]
pub type Cuda = burn_cuda::Cuda;

/// Whether a CUDA driver can be loaded. Creating a CUDA device succeeds without one, but the
/// first tensor operation then panics inside a device thread: probe before using it.
pub fn cuda_available() -> bool {
    #[cfg(all(feature = "cuda", unix))]
    {
        // SAFETY: dlopen with a constant, NUL-terminated name; the handle is closed again.
        unsafe {
            let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                return false;
            }
            libc::dlclose(handle);
            true
        }
    }
    #[cfg(not(all(feature = "cuda", unix)))]
    {
        false
    }
}
