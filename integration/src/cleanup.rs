//! Synchronous, best-effort teardown primitives.
//!
//! They run from `Drop`, possibly while unwinding and possibly inside a tokio runtime, so
//! nothing here is async and nothing here panics: every step logs and carries on, because a
//! half-finished cleanup is still better than skipping the remaining steps.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What containerd left in one task bundle dir, read without asking containerd.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// containerd namespace of the task.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// The bundle directory.
    pub dir: PathBuf,
    /// PID of the shim serving it.
    pub shim_pid: Option<i32>,
    /// PID of the container's init process.
    pub init_pid: Option<i32>,
    /// Shim socket address (`unix:///run/containerd/s/...`), from `address` or 2.x's
    /// `bootstrap.json`.
    pub address: Option<String>,
    /// Network namespace the spec joins (pod sandboxes).
    pub netns: Option<PathBuf>,
    /// cgroupsPath from the spec.
    pub cgroups_path: Option<String>,
}

/// Read every bundle under `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
pub fn bundles(state_dir: &Path) -> Vec<Bundle> {
    let mut out = Vec::new();
    let base = state_dir.join("io.containerd.runtime.v2.task");
    for ns in read_dir_names(&base) {
        for id in read_dir_names(&base.join(&ns)) {
            let dir = base.join(&ns).join(&id);
            let mut b = Bundle {
                namespace: ns.clone(),
                id,
                shim_pid: read_pid(&dir.join("shim.pid")),
                init_pid: read_pid(&dir.join("init.pid")),
                address: std::fs::read_to_string(dir.join("address"))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .or_else(|| bootstrap_address(&dir)),
                ..Default::default()
            };
            if let Ok(spec) = std::fs::read(dir.join("config.json")) {
                if let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&spec) {
                    b.netns = network_ns_path(&spec);
                    b.cgroups_path = spec["linux"]["cgroupsPath"].as_str().map(String::from);
                }
            }
            b.dir = dir;
            out.push(b);
        }
    }
    out
}

/// The shim address containerd 2.x records in a bundle's `bootstrap.json` (its Go shim
/// writes no `address` file).
fn bootstrap_address(bundle: &Path) -> Option<String> {
    let raw = std::fs::read(bundle.join("bootstrap.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v["address"].as_str().map(String::from)
}

/// The `path` of the network namespace a runtime spec joins, if it names one.
pub fn network_ns_path(spec: &serde_json::Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(|p| canonical_run(Path::new(p)))
}

/// Map `/var/run/...` to `/run/...` when that is a symlink, as mountinfo only shows the latter.
pub fn canonical_run(path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("/var/run") {
        if std::fs::canonicalize("/var/run").ok().as_deref() == Some(Path::new("/run")) {
            return Path::new("/run").join(rest);
        }
    }
    path.to_path_buf()
}

/// Init PIDs and cgroup dirs recorded in runc's state under `<root>/<id>/state.json`.
pub fn runc_states(root: &Path) -> Vec<(String, Option<i32>, Vec<PathBuf>)> {
    read_dir_names(root)
        .into_iter()
        .filter_map(|id| {
            let raw = std::fs::read(root.join(&id).join("state.json")).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
            let pid = v["init_process_pid"].as_i64().map(|p| p as i32);
            let cgroups = v["cgroup_paths"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|p| p.as_str().map(PathBuf::from))
                        .collect()
                })
                .unwrap_or_default();
            Some((id, pid, cgroups))
        })
        .collect()
}

/// Names of the entries of a directory; empty if it does not exist.
pub fn read_dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True if the process exists and is not a zombie (PID 1 here may never reap orphans).
pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised comm, which may itself contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Wait until none of `pids` is alive; returns the ones still alive at the deadline.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL the given PIDs (skipping ourselves and PID 1) and wait for them to die.
pub fn kill_pids(pids: &[i32]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let pids: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| *p > 1 && *p != me)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    wait_gone(&pids, Duration::from_secs(5))
}

/// PIDs whose command line mentions `needle` or whose root dir lies under it.
///
/// Shims carry our socket path on their command line, and container processes have their
/// root inside our state dir, so this finds exactly what one fixture caused.
pub fn pids_referencing(needle: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle_s = needle.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for name in read_dir_names(Path::new("/proc")) {
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap_or_default();
        if cmdline.contains(&needle_s) || root.starts_with(needle) {
            out.push(pid);
        }
    }
    out
}

/// Undo the octal escapes (`\040` for space...) of /proc/self/mountinfo.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && octal.is_some_and(|o| o.iter().all(|c| (b'0'..=b'7').contains(c))) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, fs type) of every mount in our mount namespace, in mount order.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let point = PathBuf::from(unescape_mount(fields.get(4)?));
            Some((point, fields.get(sep + 1)?.to_string()))
        })
        .collect()
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Unmount everything at or below `dir`, newest first, lazily if a normal unmount fails.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..5 {
        let mut points = mounts_under(dir);
        if points.is_empty() {
            break;
        }
        // Later entries may sit on top of earlier ones, so undo them in reverse.
        points.reverse();
        for p in points {
            if umount2(&p, MntFlags::empty()).is_err() {
                let _ = umount2(&p, MntFlags::MNT_DETACH);
            }
        }
    }
    mounts_under(dir)
}

/// Remove a named network namespace file, unmounting its nsfs bind first.
pub fn remove_netns(path: &Path) {
    if !path.exists() {
        return;
    }
    // umount2 resolves symlinks itself; the mountinfo scan catches stacked mounts.
    let _ = umount2(path, MntFlags::MNT_DETACH);
    for p in mounts_under(&canonical_run(path)) {
        let _ = umount2(&p, MntFlags::MNT_DETACH);
    }
    if let Err(e) = std::fs::remove_file(path) {
        log::warn!("removing netns {}: {e}", path.display());
    }
}

/// Where libcni caches each ADD's result: one file per network, container and interface.
pub const CNI_RESULTS: &str = "/var/lib/cni/results";

/// One cached CNI result, as far as cleanup needs it.
#[derive(Debug, Clone)]
pub struct CniResult {
    /// The cache file.
    pub file: PathBuf,
    /// The network's name (CRI's loopback network is `cni-loopback`).
    pub network: String,
    /// The sandbox id.
    pub container_id: String,
    /// The pod's cgroup parent (CRI passes it as a capability argument; not every
    /// containerd release does).
    pub cgroup_path: Option<String>,
    /// The pod's uid (CRI passes it as `K8S_POD_UID`).
    pub pod_uid: Option<String>,
    /// The network namespaces the result's interfaces live in.
    pub netns: Vec<PathBuf>,
}

/// Every cached CNI result under `dir` that parses.
pub fn cni_results(dir: &Path) -> Vec<CniResult> {
    read_dir_names(dir)
        .into_iter()
        .filter_map(|name| {
            let file = dir.join(name);
            let raw = std::fs::read(&file).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
            let netns = v["result"]["interfaces"]
                .as_array()
                .map(|all| {
                    all.iter()
                        .filter_map(|i| i["sandbox"].as_str())
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect::<BTreeSet<_>>()
                })
                .unwrap_or_default();
            Some(CniResult {
                network: v["networkName"].as_str()?.to_string(),
                container_id: v["containerId"].as_str()?.to_string(),
                cgroup_path: v["capabilityArgs"]["cgroupPath"]
                    .as_str()
                    .map(str::to_string),
                pod_uid: v["cniArgs"].as_array().and_then(|args| {
                    args.iter()
                        .find(|kv| kv[0] == "K8S_POD_UID")
                        .and_then(|kv| kv[1].as_str())
                        .map(str::to_string)
                }),
                netns: netns.into_iter().collect(),
                file,
            })
        })
        .collect()
}

/// True if a network interface of that name exists in our netns.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Delete a network interface (our bridge) if it exists.
pub fn remove_link(name: &str) {
    if !link_exists(name) {
        return;
    }
    match Command::new("ip").args(["link", "del", name]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => log::warn!(
            "ip link del {name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => log::warn!("ip link del {name}: {e}"),
    }
}

/// All cgroup v1/v2 mount points, so per-controller copies of one cgroup can be found.
pub fn cgroup_roots() -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|(_, fs)| fs == "cgroup" || fs == "cgroup2")
        .map(|(p, _)| p)
        .collect()
}

/// Every existing directory `<hierarchy>/<rel>` over all cgroup hierarchies. `rel` may
/// also be a systemd-driver cgroupsPath (`slice:prefix:name`), as a bundle's spec holds it.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    // runc's own reading of it, the systemd driver's `slice:prefix:name` included.
    let rel = runc_client::cgroup::relative_path(rel);
    let rel = rel.to_string_lossy();
    if rel.is_empty() {
        return Vec::new();
    }
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(&*rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Kill every process in a cgroup subtree, then remove its directories deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    for _ in 0..10 {
        let mut dirs = Vec::new();
        collect_dirs(dir, &mut dirs);
        let mut pids = Vec::new();
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        kill_pids(&pids);
        // Children were pushed after their parents, so reverse order is deepest first.
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        if !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log::warn!("cgroup {} could not be removed", dir.display());
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// `runc --root <root> delete --force <id>`, ignoring failures (the container may be gone).
/// `runc` is the runtime that made the state (crun's is not runc's, nor is every runc's
/// state readable by an older runc).
pub fn runc_force_delete(runc: impl AsRef<std::ffi::OsStr>, root: &Path, id: &str) {
    let _ = Command::new(runc)
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", id])
        .output();
}

/// Path of a shim socket from an `address` file (`unix:///run/containerd/s/<hash>`).
pub fn socket_from_address(address: &str) -> Option<PathBuf> {
    address
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result as libcni 1.x writes it for CRI's loopback network.
    #[test]
    fn cni_results_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cni-loopback-abc-lo"),
            r#"{"kind":"cniCacheV1","containerId":"abc","ifName":"lo",
               "networkName":"cni-loopback",
               "cniArgs":[["K8S_POD_UID","doomed-1234abcd"],["IgnoreUnknown","1"]],
               "capabilityArgs":{"cgroupPath":"/sturdy-1234abcd"},
               "result":{"interfaces":[{"name":"lo","sandbox":"/var/run/netns/cni-x"}]}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("garbage"), "{").unwrap();
        let all = cni_results(dir.path());
        assert_eq!(all.len(), 1);
        let r = &all[0];
        assert_eq!(r.network, "cni-loopback");
        assert_eq!(r.container_id, "abc");
        assert_eq!(r.cgroup_path.as_deref(), Some("/sturdy-1234abcd"));
        assert_eq!(r.pod_uid.as_deref(), Some("doomed-1234abcd"));
        assert_eq!(r.netns, vec![PathBuf::from("/var/run/netns/cni-x")]);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount(r"/tmp/a\040b\011c"), "/tmp/a b\tc");
        assert_eq!(unescape_mount(r"/plain\9"), r"/plain\9");
    }

    #[test]
    fn liveness_follows_the_process() {
        assert!(pid_alive(std::process::id() as i32));
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(pid_alive(pid));
        assert_eq!(kill_pids(&[pid]), Vec::<i32>::new());
        // Dead but not yet reaped: a zombie must already count as gone.
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn mounts_are_listed_and_filtered() {
        assert!(mounts_under(Path::new("/proc")).contains(&PathBuf::from("/proc")));
        assert!(mounts_under(Path::new("/nonexistent-sturdy")).is_empty());
    }

    #[test]
    fn run_paths_are_canonical() {
        let p = canonical_run(Path::new("/var/run/netns/cni-1"));
        assert!(p == Path::new("/run/netns/cni-1") || p == Path::new("/var/run/netns/cni-1"));
        assert_eq!(canonical_run(Path::new("/tmp/x")), PathBuf::from("/tmp/x"));
    }
}
