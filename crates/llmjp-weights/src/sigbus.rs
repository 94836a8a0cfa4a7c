//! A one-line explanation instead of a bare SIGBUS when a mapped checkpoint shrinks.
//!
//! Weights are used in place from memory-mapped files. If a file is truncated while mapped
//! (rewritten by a download, edited, a network file system dropping it), touching the lost
//! pages raises SIGBUS, which would kill the process without a word. Each mapping is
//! registered here with a preformatted message; the handler, on a fault inside a registered
//! range, writes that message to standard error and exits with status 135 (128 + SIGBUS).
//! A fault elsewhere gets the default action.
//!
//! A library does not take a process's signals: the handler is installed only when the
//! application asks for it, once, with [`install_handler`] (the `llmjp` binary does). It
//! chains to nothing: a SIGBUS handler installed later replaces it. Without it, mappings
//! are still registered (a few atomic stores) and a truncated file kills the process with
//! the default SIGBUS.
//!
//! ```
//! // In an application's main, before loading a model:
//! llmjp_weights::sigbus::install_handler();
//! ```

use std::path::Path;

/// Mappings the handler knows of at once (shards of open checkpoints); further ones are
/// mapped without a message.
const SLOTS: usize = 256;

#[cfg(unix)]
mod imp {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Once;

    use super::SLOTS;

    /// One registered mapping: start, length and the message (pointer, length). A slot is
    /// free when its start is 0; it is written fully before its start is published.
    pub struct Slot {
        start: AtomicUsize,
        len: AtomicUsize,
        message: AtomicUsize,
        message_len: AtomicUsize,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Slot = Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        message: AtomicUsize::new(0),
        message_len: AtomicUsize::new(0),
    };
    static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
    static INSTALL: Once = Once::new();

    /// Installs the handler (once per process).
    pub fn install_handler() {
        INSTALL.call_once(install);
    }

    /// Registers a mapping; `message` must stay valid until [`unregister`].
    pub fn register(start: usize, len: usize, message: &[u8]) -> Option<usize> {
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .len
                .compare_exchange(0, len.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.message
                    .store(message.as_ptr() as usize, Ordering::Relaxed);
                slot.message_len.store(message.len(), Ordering::Relaxed);
                slot.start.store(start, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    pub fn unregister(index: usize) {
        let slot = &TABLE[index];
        slot.start.store(0, Ordering::Release);
        slot.len.store(0, Ordering::Release);
    }

    fn install() {
        // SAFETY: `action` is fully initialised (zeroed, then the handler, flags and an
        // empty mask set) before it is passed to sigaction; the handler only does
        // async-signal-safe work (atomic loads, write, _exit, sigaction).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }

    extern "C" fn handler(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; a registered
        // message lives until its slot is freed.
        unsafe {
            let address = (*info).si_addr() as usize;
            for slot in &TABLE {
                let start = slot.start.load(Ordering::Acquire);
                let len = slot.len.load(Ordering::Acquire);
                if start != 0 && address >= start && address - start < len {
                    let message = slot.message.load(Ordering::Relaxed) as *const libc::c_void;
                    let message_len = slot.message_len.load(Ordering::Relaxed);
                    libc::write(2, message, message_len);
                    libc::_exit(128 + signal);
                }
            }
            // Not ours: the default action, raised again when the access is retried.
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(not(unix))]
mod imp {
    pub fn install_handler() {}

    pub fn register(_: usize, _: usize, _: &[u8]) -> Option<usize> {
        None
    }

    pub fn unregister(_: usize) {}
}

/// Installs, once per process, the SIGBUS handler that explains a fault in a registered
/// mapping (see the module docs). For applications: call it early in `main`. A no-op where
/// there are no signals (Windows).
pub fn install_handler() {
    imp::install_handler();
}

/// The SIGBUS message of a mapped file while the mapping lives; dropping it forgets it.
#[derive(Debug)]
pub(crate) struct Registration {
    slot: Option<usize>,
    /// What the handler writes; it points here, so this lives as long as the slot.
    _message: Box<[u8]>,
}

impl Registration {
    /// Registers `len` bytes mapped at `start` from `path`.
    pub(crate) fn new(start: *const u8, len: usize, path: &Path) -> Self {
        let message = format!(
            "error: {} was truncated or changed while llmjp had it mapped (SIGBUS); \
             do not modify a model folder while it is in use, and run again.\n",
            path.display()
        );
        let message = message.into_bytes().into_boxed_slice();
        Self {
            slot: imp::register(start as usize, len, &message),
            _message: message,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(index) = self.slot {
            imp::unregister(index);
        }
    }
}
