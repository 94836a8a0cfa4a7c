//! Project automation. `cargo xtask golden` regenerates the reference data that the tests
//! compare against (needs Python with `transformers`; never needed by CI).

use std::process::{Command, ExitCode};

const GOLDEN_SCRIPTS: [&str; 4] = [
    "xtask/golden/tokenizer_golden.py",
    "xtask/golden/chat_golden.py",
    "xtask/golden/sampler_golden.py",
    "xtask/golden/model_golden.py",
];

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("golden") => run_python(&GOLDEN_SCRIPTS),
        _ => {
            eprintln!("usage: cargo xtask golden");
            ExitCode::from(2)
        }
    }
}

fn run_python(scripts: &[&str]) -> ExitCode {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for script in scripts {
        eprintln!("running {script}");
        let status = Command::new("python3")
            .arg(script)
            .current_dir(root)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("{script} failed: {s}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("cannot run python3: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
