//! Teardown: everything a fixture caused goes away in `stop()`/Drop, and fixtures of test
//! processes that died without unwinding are reaped by the next fixture.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{cgroup_driver, CgroupDriver, Containerd};
use crate::cleanup;
use crate::error::{Error, IoContext, Result};

impl Containerd {
    /// What this instance has caused right now, for asserting later that it is all gone.
    pub fn footprint(&self) -> Footprint {
        let bundles = cleanup::bundles(&self.state_dir());
        let mut shim_pids: BTreeSet<i32> = bundles.iter().filter_map(|b| b.shim_pid).collect();
        shim_pids.extend(
            cleanup::pids_referencing(&self.socket)
                .into_iter()
                .filter(|p| *p != self.pid),
        );
        let container_pids = bundles.iter().filter_map(|b| b.init_pid).collect();
        let mut netns: BTreeSet<PathBuf> = bundles.iter().filter_map(|b| b.netns.clone()).collect();
        netns.extend(
            self.netns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        let mut shim_sockets: BTreeSet<PathBuf> = bundles
            .iter()
            .filter_map(|b| b.address.as_deref().and_then(cleanup::socket_from_address))
            .collect();
        // The Go shim of 2.x also listens on a second socket no bundle file names.
        for pid in &shim_pids {
            shim_sockets.extend(unix_sockets_of(*pid, Path::new(SHIM_SOCKET_DIR)));
        }
        let mut cgroups = cleanup::cgroup_dirs(&self.cgroup_name);
        cgroups.extend(cleanup::cgroup_dirs(&self.namespace));
        if self.cgroup_driver == CgroupDriver::Systemd {
            cgroups.extend(cleanup::cgroup_dirs(&cgroup_driver::pod_slice_dir(
                &self.slice_name(),
            )));
        }
        let ids = bundles.iter().map(|b| b.id.clone()).collect();
        let cni_results = self
            .cni_results(&ids, &netns)
            .into_iter()
            .map(|r| r.file)
            .collect();
        Footprint {
            containerd_pid: self.pid,
            shim_pids: shim_pids.into_iter().collect(),
            container_pids,
            mounts: cleanup::mounts_under(&self.dir),
            netns: netns.into_iter().collect(),
            bridge: self.bridge.clone(),
            cgroups,
            shim_sockets: shim_sockets.into_iter().collect(),
            cni_results,
            dir: self.dir.clone(),
        }
    }

    /// The CNI results this instance caused: its own network's, and those of CRI's loopback
    /// network, which every fixture shares, told by sandbox id, netns, pod cgroup parent or
    /// the pod uid `pod_config` gives.
    fn cni_results(
        &self,
        sandboxes: &BTreeSet<String>,
        netns: &BTreeSet<PathBuf>,
    ) -> Vec<cleanup::CniResult> {
        let parent = self.cgroup_parent();
        let uid_tail = format!("-{}", self.suffix);
        cleanup::cni_results(Path::new(cleanup::CNI_RESULTS))
            .into_iter()
            .filter(|r| {
                r.network == self.network
                    || sandboxes.contains(&r.container_id)
                    || r.netns.iter().any(|n| netns.contains(n))
                    || r.cgroup_path.as_deref() == Some(parent.as_str())
                    || r.pod_uid.as_deref().is_some_and(|u| u.ends_with(&uid_tail))
            })
            .collect()
    }

    /// Stops the containerd process this fixture started: SIGTERM by PID, SIGKILL after 10 s.
    pub(super) fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Tear everything down now and return what could not be removed (Drop does the same
    /// but panics on leftovers; calling twice is harmless).
    pub fn stop(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        if std::thread::panicking() {
            eprintln!(
                "--- containerd log tail ({}) ---\n{}\n--- end of containerd log ---",
                self.log_path().display(),
                self.log_tail(60)
            );
        }
        self.remove_pods_best_effort();
        let before = self.footprint();
        let sandbox_ids: BTreeSet<String> = cleanup::bundles(&self.state_dir())
            .into_iter()
            .map(|b| b.id)
            .collect();

        // containerd first, so it does not restart or re-create what we remove next.
        self.stop_daemon();

        // Container processes: runc's own view first, then anything whose root is ours.
        let runc_root = self.runc_root();
        for ns in cleanup::read_dir_names(&runc_root) {
            let root = runc_root.join(&ns);
            for (id, pid, cgroups) in cleanup::runc_states(&root) {
                if let Some(pid) = pid {
                    cleanup::kill_pids(&[pid]);
                }
                cleanup::runc_force_delete(&self.oci_runtime_bin, &root, &id);
                for cg in cgroups {
                    cleanup::remove_cgroup_tree(&cg);
                }
            }
        }
        cleanup::kill_pids(&before.container_pids);
        // Shims (and stray runc/ctr children) name our socket or temp dir on their command line.
        // Rescan until nothing is found: a dying shim may have just spawned a runc.
        let mut pids = before.shim_pids.clone();
        let mut stubborn = Vec::new();
        for _ in 0..5 {
            pids.extend(cleanup::pids_referencing(&self.dir));
            if pids.is_empty() {
                break;
            }
            stubborn = cleanup::kill_pids(&pids);
            pids.clear();
        }

        let mut problems = Vec::new();
        if !stubborn.is_empty() {
            problems.push(format!("processes survived SIGKILL: {stubborn:?}"));
        }
        let left = cleanup::unmount_all_under(&self.dir);
        if !left.is_empty() {
            problems.push(format!("mounts left: {left:?}"));
        }
        let mut netns: BTreeSet<PathBuf> = before.netns.iter().cloned().collect();
        netns.extend(
            cleanup::bundles(&self.state_dir())
                .into_iter()
                .filter_map(|b| b.netns),
        );
        // A pod whose sandbox never got a bundle is known only by its CNI results, which
        // name its netns; the results themselves outlive a containerd that was killed.
        let cni_results = self.cni_results(&sandbox_ids, &netns);
        netns.extend(cni_results.iter().flat_map(|r| r.netns.iter().cloned()));
        for ns in &netns {
            cleanup::remove_netns(ns);
        }
        for r in &cni_results {
            let _ = std::fs::remove_file(&r.file);
        }
        cleanup::remove_link(&self.bridge);
        if self.cgroup_driver == CgroupDriver::Systemd {
            // systemd owns the pod slice and the container scopes in it: removing their
            // directories behind its back would leave units it still believes in.
            cgroup_driver::stop_slice(&self.cgroup_parent());
        }
        for name in [&self.cgroup_name, &self.namespace] {
            for cg in cleanup::cgroup_dirs(name) {
                cleanup::remove_cgroup_tree(&cg);
            }
        }
        for sock in &before.shim_sockets {
            let _ = std::fs::remove_file(sock);
        }
        // A Go shim killed during the test (containerd 1.6 and 1.7 then leave its socket) had
        // no bundle left to name it above; its address is a hash of ours and the task's.
        for sock in go_shim_sockets_named_in(&self.log_path(), &self.socket) {
            if sock.exists() {
                eprintln!(
                    "sturdy-integration: removing {} left by a killed shim",
                    sock.display()
                );
                let _ = std::fs::remove_file(sock);
            }
        }
        // Retried because a process killed a moment ago may still have been creating files.
        let mut last_err = None;
        for _ in 0..10 {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(_) if !self.dir.exists() => {
                    last_err = None;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
            cleanup::kill_pids(&cleanup::pids_referencing(&self.dir));
            cleanup::unmount_all_under(&self.dir);
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(e) = last_err {
            problems.push(format!("removing {}: {e}", self.dir.display()));
        }
        self.subnet = None;
        self.owner = None;
        problems.extend(before.leftovers());
        for p in &problems {
            eprintln!("sturdy-integration cleanup [{}]: {p}", self.suffix);
        }
        problems
    }

    /// Stop and remove every CRI pod so CNI tears down netns and veths the normal way.
    fn remove_pods_best_effort(&self) {
        if self.child.is_none() || !self.socket.exists() {
            return;
        }
        let socket = self.socket.clone();
        // A fresh thread with its own runtime: Drop may run inside (or outside) any runtime.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let work = async {
                    let channel = containerd_client::connect(&socket).await.ok()?;
                    let mut cri = crate::cri::runtime_client(channel);
                    let pods = cri
                        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
                        .await
                        .ok()?
                        .into_inner()
                        .items;
                    for pod in pods {
                        let id = pod.id;
                        let _ = cri
                            .stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
                                pod_sandbox_id: id.clone(),
                            })
                            .await;
                        let _ = cri
                            .remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                                pod_sandbox_id: id,
                            })
                            .await;
                    }
                    Some(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
            });
        });
        let _ = handle.join();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let problems = self.stop();
        // Every test doubles as a leak test: a fixture that cannot clean up fails its test.
        // (Not while unwinding: a second panic would abort and hide the first.)
        if !problems.is_empty() && !std::thread::panicking() {
            panic!(
                "fixture {} left things behind: {problems:?}",
                self.dir.display()
            );
        }
    }
}

pub(super) fn lock_file(path: &Path, arg: FlockArg) -> Result<Flock<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))?;
    Flock::lock(file, arg).map_err(|(_, e)| Error::Io {
        context: format!("locking {}", path.display()),
        source: e.into(),
    })
}

/// Where containerd's shims put their sockets, whatever the fixture's state dir.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// The shim sockets containerd's shims could have used for any task `log` names: the Go
/// shim's address is `/run/containerd/s/` + sha256 of `<containerd address>/<ns>/<id>` (the
/// id is the sandbox's for a grouped pod, `/debug` appended in debug mode on 2.x), so these
/// are ours alone, whatever other containerd runs on the host.
fn go_shim_sockets_named_in(log: &Path, address: &Path) -> Vec<PathBuf> {
    use sha2::{Digest, Sha256};
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    let mut namespaces = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for word in text.split(|c: char| c.is_whitespace() || c == '"') {
        if let Some(ns) = word.strip_prefix("namespace=") {
            namespaces.insert(ns.to_string());
        } else if let Some(id) = word.strip_prefix("id=") {
            ids.insert(id.to_string());
        } else if let Some((_, rest)) = word.split_once("io.containerd.runtime.v2.task/") {
            if let Some((ns, id)) = rest.split_once('/') {
                namespaces.insert(ns.to_string());
                ids.insert(id.split('/').next().unwrap_or(id).to_string());
            }
        }
    }
    let mut out = Vec::new();
    for ns in &namespaces {
        for id in &ids {
            let key = address.join(ns).join(id);
            for key in [key.clone(), key.join("debug")] {
                let digest = Sha256::digest(key.as_os_str().as_encoded_bytes());
                out.push(Path::new(SHIM_SOCKET_DIR).join(hex::encode(digest)));
            }
        }
    }
    out
}

/// Paths under `dir` of the unix sockets process `pid` holds open.
fn unix_sockets_of(pid: i32, dir: &Path) -> Vec<PathBuf> {
    let inodes: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    // Num RefCount Protocol Flags Type St Inode Path
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let inode: u64 = f.get(6)?.parse().ok()?;
            let path = Path::new(f.get(7)?);
            (inodes.contains(&inode) && path.starts_with(dir)).then(|| path.to_path_buf())
        })
        .collect()
}

impl Containerd {
    /// The fixture `dir`'s `fixture.json` (`raw`) describes, to be stopped by the reaper;
    /// `None` if it is not a record.
    pub(super) fn from_record(dir: &Path, raw: &[u8]) -> Option<Containerd> {
        let rec = serde_json::from_slice::<serde_json::Value>(raw).ok()?;
        let suffix = rec["suffix"].as_str()?;
        let mut fx = Containerd::identity(
            dir.to_path_buf(),
            suffix,
            PathBuf::from(rec["shim_bin"].as_str().unwrap_or_default()),
        );
        // Not our child: its command line names our dir, so the PID scan kills it.
        fx.pid = rec["pid"].as_i64().unwrap_or(0) as i32;
        // Its containers' state is that runtime's (records from before it was recorded:
        // Debian's runc, the only runtime then).
        if let Some(runtime) = rec["oci_runtime_bin"].as_str() {
            fx.oci_runtime_bin = PathBuf::from(runtime);
        }
        Some(fx)
    }
}

/// Tear down fixtures whose test process died without running Drop.
///
/// A live fixture holds an flock on its `owner.lock`; if we can take it, the owner is gone
/// (the kernel dropped its lock), and whoever holds the lock does the cleanup, so two
/// reapers never work on the same dir. Dirs without `fixture.json` are still being set up.
pub fn reap_stale_fixtures() -> Vec<PathBuf> {
    let Ok(base) = super::fixture_base() else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    let fixtures = cleanup::read_dir_names(&base)
        .into_iter()
        .filter(|name| name.starts_with("sturdy-test-"))
        .map(|name| base.join(name));
    for dir in fixtures {
        let Ok(raw) = std::fs::read(dir.join("fixture.json")) else {
            continue;
        };
        let Ok(lock) = lock_file(&dir.join("owner.lock"), FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let Some(mut fx) = Containerd::from_record(&dir, &raw) else {
            continue;
        };
        eprintln!(
            "sturdy-integration: reaping fixture {} left by a dead test process",
            dir.display()
        );
        fx.owner = Some(lock);
        fx.stop();
        reaped.push(dir);
    }
    reaped
}

/// Last `lines` lines of a (possibly large) log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("<no log>");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Everything one fixture caused, captured so a test can check it is all gone afterwards.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Footprint {
    /// The containerd daemon.
    pub containerd_pid: i32,
    /// Shim processes.
    pub shim_pids: Vec<i32>,
    /// Container init processes.
    pub container_pids: Vec<i32>,
    /// Mounts under the temp dir.
    pub mounts: Vec<PathBuf>,
    /// Pod network namespaces.
    pub netns: Vec<PathBuf>,
    /// The CNI bridge name.
    pub bridge: String,
    /// cgroup directories of our containers.
    pub cgroups: Vec<PathBuf>,
    /// Shim sockets under /run/containerd/s.
    pub shim_sockets: Vec<PathBuf>,
    /// libcni's cached results of our pods.
    #[serde(default)]
    pub cni_results: Vec<PathBuf>,
    /// The temp dir.
    pub dir: PathBuf,
}

impl Footprint {
    /// Human-readable list of whatever of this footprint still exists.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.containerd_pid > 0 && cleanup::pid_alive(self.containerd_pid) {
            out.push(format!("containerd pid {} alive", self.containerd_pid));
        }
        for p in self.shim_pids.iter().chain(&self.container_pids) {
            if cleanup::pid_alive(*p) {
                out.push(format!("process {p} alive"));
            }
        }
        let mounts: Vec<PathBuf> = cleanup::mounts()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.starts_with(&self.dir) || self.netns.contains(p))
            .collect();
        for m in mounts {
            out.push(format!("mount {} present", m.display()));
        }
        for p in self
            .netns
            .iter()
            .chain(&self.cgroups)
            .chain(&self.shim_sockets)
            .chain(&self.cni_results)
        {
            if p.exists() {
                out.push(format!("{} exists", p.display()));
            }
        }
        if !self.bridge.is_empty() && cleanup::link_exists(&self.bridge) {
            out.push(format!("bridge {} exists", self.bridge));
        }
        if self.dir.exists() {
            out.push(format!("temp dir {} exists", self.dir.display()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Go shim's socket of a task the log names is found (sha256 of address/ns/id, the
    /// value containerd 1.6's shim.SocketAddress gives for these inputs).
    #[test]
    fn go_shim_socket_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("containerd.log");
        std::fs::write(
            &log,
            "time=\"t\" level=info msg=\"starting signal loop\" namespace=k8s.io \
             path=/tmp/x/state/io.containerd.runtime.v2.task/k8s.io/abc pid=7\n",
        )
        .unwrap();
        let found = go_shim_sockets_named_in(&log, Path::new("/tmp/x/containerd.sock"));
        assert!(found.contains(&PathBuf::from(
            "/run/containerd/s/1007340b7a8858d4d0bcaa4fe6fc4551d9761394cd40e818d501857f206388f9"
        )));
        assert!(go_shim_sockets_named_in(&dir.path().join("none"), Path::new("/a")).is_empty());
    }

    #[test]
    fn sockets_a_process_holds_are_found_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listening.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let found = unix_sockets_of(std::process::id() as i32, dir.path());
        assert_eq!(found, vec![path]);
        assert!(unix_sockets_of(std::process::id() as i32, Path::new("/nonexistent")).is_empty());
    }
}
