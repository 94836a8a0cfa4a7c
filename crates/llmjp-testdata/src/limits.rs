//! Child processes under an address-space limit, as every hostile test runs its cases.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `command`'s process start under an address-space limit (`RLIMIT_AS`) of `bytes`:
/// an allocation past it fails (and Rust aborts) instead of the machine swapping, so a
/// case that asks for too much is seen as a failed child, not a stalled test run.
pub fn limit_address_space(command: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
