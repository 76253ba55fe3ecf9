//! Helpers shared by the tests that drive the built shim binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The shim binary cargo built for these tests.
pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-sturdy-v2");

/// Runs the shim in `dir` with `args`, feeding `stdin`, and collects its output.
pub fn run(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(SHIM)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shim");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("wait shim")
}
