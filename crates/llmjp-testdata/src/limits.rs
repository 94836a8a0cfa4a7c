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

/// Environment variable set in the child process [`run_test_in_child`] starts.
pub const TEST_CHILD: &str = "LLMJP_TEST_CHILD";

/// Whether this process is a child started by [`run_test_in_child`]: a test that calls
/// `run_test_in_child(its own name, …)` outside runs its body inside.
pub fn is_test_child() -> bool {
    std::env::var_os(TEST_CHILD).is_some()
}

/// Runs the test `name` of the current test binary alone, in a child process under an
/// address-space limit of `address_space` bytes (with at most two malloc arenas, whose
/// reservations would otherwise count against it) and a `deadline`; panics with the
/// child's output unless the test passed there. Returns the child's stderr.
pub fn run_test_in_child(name: &str, address_space: u64, deadline: std::time::Duration) -> String {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(TEST_CHILD, "1")
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    limit_address_space(&mut command, address_space);
    let mut child = command.spawn().expect("spawning the test child");
    // Read both pipes as the child runs, so that a chatty child cannot block on them.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut text);
        text
    });
    let start = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the test child") {
            break status;
        }
        if !killed && start.elapsed() > deadline {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    assert!(
        status.success() && stdout.contains("1 passed"),
        "{name} failed in the child ({status:?} after {:?}{}, {} MiB address space):\n{stdout}\n{stderr}",
        start.elapsed(),
        if killed { ", killed at the deadline" } else { "" },
        address_space >> 20,
    );
    stderr
}
