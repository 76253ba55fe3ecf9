//! The binary's three personalities, chosen by containerd's command line:
//! `start` (launch or reuse the daemon and print its address), `delete` (clean up
//! after a task without the daemon) and the daemon itself (serve the Task API).

mod delete;
mod handover_check;
mod info;
mod params;
mod resume;
mod serve;
mod socket_dir;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use containerd_shim::Flags;

use crate::cgroups;
use crate::options::RuntimeOptions;
use crate::record::write_atomic;
use params::StartInput;

/// Annotation grouping containers into one shim (set by users or other tools).
pub const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
/// Annotation CRI sets on every container of a pod (after any annotations it passes
/// through from the pod, so the pod cannot choose it).
pub const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Environment variable naming the inherited listener fd of the daemon.
const LISTEN_FD_ENV: &str = "STURDY_LISTEN_FD";
/// The fd number the listener is handed down on.
const LISTEN_FD: i32 = 3;
/// Environment variable carrying containerd's TTRPC address.
const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";
/// File in the bundle holding the daemon's pid.
const SHIM_PID_FILE: &str = "shim.pid";
/// File in the bundle holding the daemon's address.
const ADDRESS_FILE: &str = "address";
/// What `start` executes to run the daemon: its own binary, even once unlinked.
const SELF_EXE: &str = "/proc/self/exe";

/// Entry point of `containerd-shim-sturdy-v2`; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Not containerd's flags: asked by `sturdyctl upgrade-shims` only, before any parsing.
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if handover_check::CHECK.contains(&first) {
        return handover_check::check(args.get(2).and_then(|a| a.to_str()));
    }
    if handover_check::SAMPLE.contains(&first) {
        return handover_check::sample();
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-sturdy-v2: {e}");
            return 2;
        }
    };
    if flags.version {
        println!("containerd-shim-sturdy-v2:");
        println!("  Version:  {}", crate::VERSION);
        println!("  Revision: {}", crate::REVISION);
        println!("  Build id: {}", own_build_id());
        println!(
            "  Handover: writes {}, reads {}",
            crate::handover::WRITES,
            crate::handover::READS
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        println!("  Runtime:  io.containerd.sturdy.v2 (Rust, wraps runc)");
        return 0;
    }
    if flags.info {
        let name = info::runtime_name(Path::new(&args[0]));
        return match info::info(&name) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{name} -info: {e}");
                1
            }
        };
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete::delete(&flags),
        "" => serve::serve(&flags),
        other => Err(format!(
            "unknown action {other:?} (expected start or delete)"
        )),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("containerd-shim-sturdy-v2 {}: {e}", flags.action);
            1
        }
    }
}

/// The GNU build-id of the running image, hex, or why there is none.
fn own_build_id() -> String {
    match build_id::of_self() {
        Ok(Some(id)) => id.to_string(),
        Ok(None) => "none (linked without --build-id)".into(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The id of the shim a container belongs to: its pod, its group, or itself.
///
/// The pod wins over the group annotation, unlike in the Go shim: CRI passes pod
/// annotations into the spec when its `pod_annotations` allow them, so under CRI the group
/// may come from a tenant, who could put its containers into another pod's shim (sharing
/// its limits, budgets and fate). Outside CRI (no sandbox id) the group comes from
/// containerd's client and still groups.
pub fn grouping_id(bundle: &Path, id: &str) -> String {
    let annotations = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("annotations").cloned());
    for key in [SANDBOX_ANNOTATION, GROUP_ANNOTATION] {
        if let Some(g) = annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|g| g.as_str())
            .filter(|g| !g.is_empty())
        {
            return g.to_string();
        }
    }
    id.to_string()
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the shim socket, or reports that a live shim already serves it.
enum Bind {
    Bound(UnixListener),
    Live,
}

fn bind_or_reuse(address: &str) -> Result<Bind, String> {
    let path = Path::new(socket_path(address));
    if let Some(dir) = path.parent() {
        socket_dir::ensure(dir).map_err(|e| e.to_string())?;
    }
    for _ in 0..2 {
        match UnixListener::bind(path) {
            Ok(l) => {
                // Path sockets only, mode 0600: no other uid may talk to the shim
                // (abstract sockets were CVE-2020-15257).
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("chmod {}: {e}", path.display()))?;
                return Ok(Bind::Bound(l));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if UnixStream::connect(path).is_ok() {
                    return Ok(Bind::Live);
                }
                // A dead shim left its socket behind.
                let _ = std::fs::remove_file(path);
            }
            Err(e) => return Err(format!("listen on {}: {e}", path.display())),
        }
    }
    Err(format!("cannot bind {}", path.display()))
}

fn start(flags: &Flags) -> Result<(), String> {
    // Everything containerd sent is checked before anything is bound or spawned: a refusal
    // leaves nothing behind.
    let input = params::read_stdin().map_err(|e| e.to_string())?;
    let parsed = StartInput::parse(&input, flags).map_err(|e| e.to_string())?;
    let options = RuntimeOptions::from_any(parsed.options()).unwrap_or_else(|e| {
        // Create reports bad options with the container id; start must still succeed, and
        // print nothing but its reply (containerd reads stderr with stdout).
        log::warn!("start: ignoring runtime options: {e}");
        RuntimeOptions::default()
    });
    let bundle = std::env::current_dir().map_err(|e| format!("cwd: {e}"))?;
    let grouping = grouping_id(&bundle, &parsed.opts.id);
    let address = parsed.opts.socket_address(&grouping);

    match bind_or_reuse(&address)? {
        // Someone else's daemon: nothing of ours to undo if recording it fails.
        Bind::Live => announce(&bundle, &address, &parsed),
        Bind::Bound(listener) => {
            let child = match spawn_daemon(&parsed, &address, listener) {
                Ok(child) => child,
                Err(e) => {
                    remove_socket(&address);
                    return Err(e);
                }
            };
            let pid = child.id();
            let placed = place_daemon(&bundle, pid, &options)
                .and_then(|()| announce(&bundle, &address, &parsed));
            if let Err(e) = placed {
                // containerd will never learn of this daemon: left running it would hold
                // the group's socket (and its memory) forever.
                abandon_daemon(child, &bundle, &address);
                return Err(e);
            }
            Ok(())
        }
    }
}

/// Records a freshly spawned daemon in the bundle and puts it where the options say.
fn place_daemon(bundle: &Path, pid: u32, options: &RuntimeOptions) -> Result<(), String> {
    let pid_file = bundle.join(SHIM_PID_FILE);
    write_atomic(&pid_file, pid.to_string().as_bytes())
        .map_err(|e| format!("write {}: {e}", pid_file.display()))?;
    if !options.shim_cgroup.is_empty() {
        cgroups::add_shim_process(&options.shim_cgroup, pid)
            .map_err(|e| format!("move shim into cgroup {}: {e}", options.shim_cgroup))?;
    }
    cgroups::adjust_oom_score(pid);
    Ok(())
}

/// Writes the bundle's `address` file and tells containerd where the daemon listens, in
/// the format of the protocol it spoke.
fn announce(bundle: &Path, address: &str, parsed: &StartInput) -> Result<(), String> {
    let address_file = bundle.join(ADDRESS_FILE);
    write_atomic(&address_file, address.as_bytes())
        .map_err(|e| format!("write {}: {e}", address_file.display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&parsed.reply(address))
        .and_then(|_| out.flush())
        .map_err(|e| format!("write address to stdout: {e}"))
}

/// Kills a daemon `start` could not hand over, and removes every trace of it.
fn abandon_daemon(mut child: std::process::Child, bundle: &Path, address: &str) {
    let pid = child.id();
    if let Err(e) = child.kill() {
        eprintln!("containerd-shim-sturdy-v2 start: kill daemon {pid}: {e}");
    }
    // `start` runs no reaper: collect our child here, so it does not linger as a zombie.
    if let Err(e) = child.wait() {
        eprintln!("containerd-shim-sturdy-v2 start: wait for daemon {pid}: {e}");
    }
    remove_socket(address);
    for (file, content) in [
        (SHIM_PID_FILE, pid.to_string()),
        (ADDRESS_FILE, address.into()),
    ] {
        let path = bundle.join(file);
        // Only what this start wrote: a directory or another daemon's pid is not ours.
        if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn remove_socket(address: &str) {
    let path = socket_path(address);
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("containerd-shim-sturdy-v2: remove socket {path}: {e}");
        }
    }
}

fn spawn_daemon(
    parsed: &StartInput,
    address: &str,
    listener: UnixListener,
) -> Result<std::process::Child, String> {
    let opts = &parsed.opts;
    // After an upgrade replaced the binary, its old path names another file, or none
    // (`current_exe` then ends in " (deleted)"): the daemon runs the very binary of this
    // `start`, and only its argv[0] names the path, as before.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let name = exe.as_os_str().as_bytes();
    let mut cmd = Command::new(SELF_EXE);
    cmd.arg0(OsStr::from_bytes(
        name.strip_suffix(b" (deleted)").unwrap_or(name),
    ));
    cmd.args(["-namespace", &opts.namespace, "-id", &opts.id])
        .args(["-address", &opts.address])
        .args(["-publish-binary", &opts.publish_binary, "-socket", address])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env(LISTEN_FD_ENV, LISTEN_FD.to_string());
    if opts.debug {
        cmd.arg("-debug");
    }
    // 2.3+ name it in the params; older ones set it in our environment, which the daemon
    // inherits.
    if !opts.ttrpc_address.is_empty() {
        cmd.env(TTRPC_ADDRESS_ENV, &opts.ttrpc_address);
    }
    cloexec_inherited()?;
    let fd = listener.into_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl, setsid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: signals aimed at containerd's process group must not reach it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == LISTEN_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    // SAFETY: fd came from into_raw_fd above and is owned here.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    child.map_err(|e| format!("spawn shim daemon: {e}"))
}

/// Marks every fd above stderr close-on-exec: whatever containerd leaked to `start` must not
/// live on in the daemon (and from there reach runc and containers).
///
/// Done before the fork, not by closing fds between fork and exec: that also closed std's
/// pipe reporting a failed exec, so a daemon that never ran was announced as started.
/// `start` runs no other thread that could open an fd meanwhile.
fn cloexec_inherited() -> Result<(), String> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("list open fds: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        set_cloexec(fd);
    }
    Ok(())
}

fn set_cloexec(fd: i32) {
    // SAFETY: plain fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_prefers_the_pod_then_the_group() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(grouping_id(dir.path(), "c1"), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"annotations": {SANDBOX_ANNOTATION: "pod1"}}).to_string(),
        )
        .unwrap();
        assert_eq!(grouping_id(dir.path(), "c1"), "pod1");
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"annotations": {SANDBOX_ANNOTATION: "pod1", GROUP_ANNOTATION: "g"}})
                .to_string(),
        )
        .unwrap();
        assert_eq!(
            grouping_id(dir.path(), "c1"),
            "pod1",
            "a pod's annotation moved it into another shim"
        );
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"annotations": {GROUP_ANNOTATION: "g"}}).to_string(),
        )
        .unwrap();
        assert_eq!(
            grouping_id(dir.path(), "c1"),
            "g",
            "outside CRI the group groups"
        );
    }

    #[test]
    fn bind_replaces_stale_and_reuses_live() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}/s/abc", dir.path().display());
        let l = match bind_or_reuse(&addr).unwrap() {
            Bind::Bound(l) => l,
            Bind::Live => panic!("nothing was listening"),
        };
        let mode = std::fs::metadata(socket_path(&addr))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind_or_reuse(&addr).unwrap(), Bind::Live));
        drop(l); // socket file stays behind, stale
        assert!(matches!(bind_or_reuse(&addr).unwrap(), Bind::Bound(_)));
    }
}
