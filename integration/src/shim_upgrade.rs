//! What the shim-upgrade test (tests/upgrade_shims.rs) and benchmark (sturdy-upgrade-bench)
//! share: another build of the shim, and `sturdyctl` run against a fixture.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::containerd::sturdyctl_bin;
use crate::Containerd;

/// `sturdyctl <args> --address … --state-dir … --journal … --upgrade-dir …` against `fx`:
/// whether it exited 0, and the JSON it printed (panics when it printed none).
pub fn sturdyctl(fx: &Containerd, args: &[&str]) -> (bool, serde_json::Value) {
    run_json(sturdyctl_command(fx, args), args)
}

/// The command [`sturdyctl`] runs, for a caller that runs it where `fx` cannot go (a
/// thread of its own while the fixture restarts containerd).
pub fn sturdyctl_command(fx: &Containerd, args: &[&str]) -> Command {
    let mut command = Command::new(sturdyctl_bin());
    command
        .args(args)
        .arg("--address")
        .arg(fx.socket())
        .arg("--state-dir")
        .arg(fx.state_dir())
        .arg("--journal")
        .arg(fx.dir().join("journal"))
        .arg("--upgrade-dir")
        .arg(upgrade_dir(fx));
    command
}

/// Where [`sturdyctl`] marks upgrade windows: a watchdog of `fx` must be given the same.
pub fn upgrade_dir(fx: &Containerd) -> PathBuf {
    fx.dir().join("upgrading")
}

/// Runs a [`sturdyctl_command`] of `args`: whether it exited 0, and the JSON it printed.
pub fn run_json(mut command: Command, args: &[&str]) -> (bool, serde_json::Value) {
    let out = command.output().expect("run sturdyctl");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sturdyctl {args:?}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

/// Another build of the shim: a copy whose GNU build-id differs in its last byte. The same
/// code, which `-v` and every check of `sturdyctl upgrade-shims` then see as another build.
/// Writes it from `from` to `to` (mode 0755); returns the old and the new build-id.
/// Panics if `from` has no build-id or holds its bytes more than once.
pub fn another_build(from: &Path, to: &Path) -> (String, String) {
    let old = build_id::of_path(from)
        .expect("read build-id")
        .expect("the shim has a build-id");
    let mut bytes = std::fs::read(from).expect("read shim binary");
    let at: Vec<usize> = bytes
        .windows(old.as_bytes().len())
        .enumerate()
        .filter(|(_, w)| *w == old.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the build-id occurs once, in its note");
    let last = at[0] + old.as_bytes().len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(to, &bytes).expect("write the new build");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let new = build_id::of_path(to).unwrap().unwrap();
    assert_ne!(old, new);
    (old.to_string(), new.to_string())
}

/// Start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22), so a
/// recycled pid never passes for the process it replaced; `None` if gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Build-id of the image process `pid` executes, read from the image itself (what runs,
/// even after its path was replaced).
pub fn running_build(pid: i32) -> Option<String> {
    build_id::of_path(Path::new(&format!("/proc/{pid}/exe")))
        .ok()
        .flatten()
        .map(|b| b.to_string())
}
