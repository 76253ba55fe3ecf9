//! Helpers shared by the tests that drive the built shim binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The shim binary cargo built for these tests.
pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-sturdy-v2");

/// `exe` in `dir` with `args` and `env` on top of ours, its output piped.
fn command(exe: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the shim in `dir` with `args`, feeding `stdin`, and collects its output.
pub fn run(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = command(Path::new(SHIM), dir, args, env)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn shim");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("wait shim")
}

/// Starts `exe` (a fresh copy of the shim) in `dir` with `args` and `env`, stdin left open.
///
/// A child another test forks while the copy is still open for writing holds that fd
/// until its own exec, and exec of the copy fails with ETXTBSY meanwhile: try again.
#[allow(dead_code)]
pub fn spawn_exe(
    exe: &Path,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut child = None;
    let spawned = wait_for(std::time::Duration::from_secs(10), || {
        let spawn = command(exe, dir, args, env).stdin(Stdio::piped()).spawn();
        match spawn {
            Ok(c) => child = Some(c),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {}
            Err(e) => panic!("spawn {}: {e}", exe.display()),
        }
        child.is_some()
    });
    assert!(spawned, "{} stayed busy", exe.display());
    child.unwrap()
}

/// Runs the shim as [`run`] does (empty stdin), with our `fd` as its fd `target`, not
/// close-on-exec: as a careless parent leaks one.
#[allow(dead_code)]
pub fn run_with_fd(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    fd: i32,
    target: i32,
) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = command(Path::new(SHIM), dir, args, env);
    cmd.stdin(Stdio::null());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run shim")
}

/// Starts the shim in `dir` with `args` and `env` without waiting for it (stdin closed).
#[allow(dead_code)]
pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    command(Path::new(SHIM), dir, args, env)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn shim")
}

/// A fake runtime `dir/bin/<name>`: a shell script that logs each invocation's arguments
/// as one line to the returned calls file, then runs `body` (with the same "$@").
#[allow(dead_code)]
pub fn fake_runtime(dir: &Path, name: &str, body: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join(format!("{name}-calls"));
    let script = bin.join(name);
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n{body}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, calls)
}

/// How many logged calls of a fake runtime were `subcommand`.
#[allow(dead_code)]
pub fn calls_of(calls: &Path, subcommand: &str) -> usize {
    std::fs::read_to_string(calls)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == subcommand))
        .count()
}

/// Writes a bundle record for `id` naming `runtime` and `root`.
#[allow(dead_code)]
pub fn write_record(bundle: &Path, id: &str, runtime: &Path, root: &Path) {
    std::fs::write(
        bundle.join("sturdy.json"),
        serde_json::json!({
            "version": 1, "id": id, "namespace": "sturdy-proto-test", "runtime": runtime,
            "root": root, "systemd_cgroup": false, "mounted_rootfs": false
        })
        .to_string(),
    )
    .unwrap();
}

/// `delete` arguments for `id` with the bundle given by `-bundle`.
#[allow(dead_code)]
pub fn delete_args<'a>(id: &'a str, bundle: &'a str) -> Vec<&'a str> {
    vec![
        "-namespace",
        "sturdy-proto-test",
        "-id",
        id,
        "-address",
        "/nonexistent",
        "-bundle",
        bundle,
        "delete",
    ]
}

/// Whether process `pid` has `path` open.
#[allow(dead_code)]
pub fn has_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
        })
        .unwrap_or(false)
}

/// Polls `f` every few milliseconds for up to `limit`; its last answer.
#[allow(dead_code)]
pub fn wait_for(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    f()
}

/// Running and not a zombie waiting for a reaper that is not us.
#[allow(dead_code)]
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// SIGKILLs `pid` (a daemon a test started) and waits up to 5 s for it to be gone.
#[allow(dead_code)]
pub fn kill_and_wait(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    wait_for(std::time::Duration::from_secs(5), || !alive(pid));
}

pub mod start;
