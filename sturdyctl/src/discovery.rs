//! Which shims serve tasks of the watched runtimes, read from containerd's runtime-v2 task
//! bundles (`<state>/io.containerd.runtime.v2.task/<ns>/<id>/`) and, when it answers,
//! containerd's API.
//!
//! A bundle holds `address` (the shim's socket), `config.json` (the OCI spec, with
//! `linux.cgroupsPath`) and `shim-binary-path` (containerd 1.6.20+). sturdy adds
//! `shim.pid` and `sturdy.json` (with its runc `root`); containerd's Go shim adds
//! `options.json` (runc options, `root` without the namespace). Tasks with the same
//! `address` share one shim: a pod's shim serves its sandbox and all its containers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::procfs::{self, ProcIdentity};

mod identity;
pub use identity::{check_shim_process, NotTheShim, START_SLACK};

/// containerd's runtime-v2 bundle directory below its state dir.
pub const TASK_DIR: &str = "io.containerd.runtime.v2.task";
/// Refusals remembered for logging once; a bound, since look-alikes can be started forever.
const MAX_REFUSED: usize = 4096;
/// runc root of containerd's Go shim when its options name none.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";

/// One task, as its bundle describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// containerd namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Runtime name (`io.containerd.sturdy.v2`), "" if unknown.
    pub runtime: String,
    /// runc root holding `<id>/state.json` (namespace included).
    pub runc_root: Option<PathBuf>,
    /// `linux.cgroupsPath` of the spec.
    pub cgroups_path: Option<String>,
    /// Shim binary containerd recorded (`shim-binary-path`).
    pub shim_binary: Option<PathBuf>,
    /// Shim socket address.
    pub address: String,
    /// Content of `shim.pid` (sturdy writes it for the task the shim was started for).
    pub shim_pid: Option<i32>,
    /// When the shim's address was recorded in the bundle (mtime of `address`, or of
    /// containerd 2.x's `bootstrap.json`), in ms since the Unix epoch: the shim serving
    /// it was started before that.
    #[serde(default)]
    pub announced_ms: Option<u64>,
}

/// One shim process and the tasks it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shim {
    /// Socket address (`unix:///run/containerd/s/…`), the grouping key.
    pub address: String,
    /// Namespace it was started in.
    pub namespace: String,
    /// The id it was started for (`-id`; a pod's sandbox).
    pub id: String,
    /// Runtime name.
    pub runtime: String,
    /// The process, if one was found alive.
    pub process: Option<ProcIdentity>,
    /// containerd's gRPC address the shim was given (`-address`).
    pub containerd_address: String,
    /// containerd's binary the shim was given (`-publish-binary`), "" if none.
    pub publish_binary: String,
    /// Its tasks, the one it was started for first.
    pub tasks: Vec<Task>,
}

impl Shim {
    /// A stable id for its incidents: namespace, shim id, pid and start time.
    pub fn incident_id(&self) -> String {
        match &self.process {
            Some(p) => format!("{}/{}@{}.{}", self.namespace, self.id, p.pid, p.start_time),
            None => format!(
                "{}/{}@dead.{}",
                self.namespace,
                self.id,
                self.tasks.iter().find_map(|t| t.shim_pid).unwrap_or(0)
            ),
        }
    }
}

/// `io.containerd.sturdy.v2` → `containerd-shim-sturdy-v2`, the way containerd maps it.
pub fn binary_name(runtime: &str) -> Option<String> {
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 {
        return None;
    }
    let (name, version) = (parts[parts.len() - 2], parts[parts.len() - 1]);
    Some(format!("containerd-shim-{name}-{version}"))
}

/// The inverse of [`binary_name`] for `containerd-shim-<name>-<version>` binaries.
pub fn runtime_of_binary(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let rest = file.strip_prefix("containerd-shim-")?;
    let (name, version) = rest.rsplit_once('-')?;
    Some(format!("io.containerd.{name}.{version}"))
}

/// The shim's socket: the `address` file, or for containerd 2.x's Go shim (which writes
/// none) the `address` that containerd recorded in `bootstrap.json`; with the time it was
/// recorded.
fn bundle_address(dir: &Path) -> Option<(String, Option<u64>)> {
    let mtime_ms = |file: &Path| {
        let t = std::fs::metadata(file).and_then(|m| m.modified()).ok()?;
        let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        u64::try_from(since.as_millis()).ok()
    };
    let file = dir.join("address");
    if let Ok(a) = std::fs::read_to_string(&file) {
        return Some((a.trim().to_string(), mtime_ms(&file)));
    }
    let file = dir.join("bootstrap.json");
    let raw = std::fs::read(&file).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    let address = v["address"].as_str().map(|a| a.trim().to_string())?;
    Some((address, mtime_ms(&file)))
}

/// Reads one bundle; `None` while it has no address (its shim is not started yet).
pub fn read_bundle(dir: &Path, namespace: &str, id: &str) -> Option<Task> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (address, announced_ms) = bundle_address(dir)?;
    if address.is_empty() {
        return None;
    }
    let mut task = Task {
        namespace: namespace.into(),
        id: id.into(),
        bundle: dir.to_path_buf(),
        address,
        announced_ms,
        shim_pid: read("shim.pid").and_then(|s| s.trim().parse().ok()),
        shim_binary: read("shim-binary-path")
            .map(|s| PathBuf::from(s.trim()))
            .filter(|p| !p.as_os_str().is_empty()),
        ..Default::default()
    };
    if let Some(spec) = read("config.json") {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&spec) {
            task.cgroups_path = v["linux"]["cgroupsPath"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from);
        }
    }
    if let Some(rec) = read("sturdy.json") {
        // sturdy's record names the root with the namespace already in it.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&rec) {
            task.runc_root = v["root"].as_str().map(PathBuf::from);
        }
        task.runtime = "io.containerd.sturdy.v2".into();
    } else if let Some(opts) = read("options.json") {
        // The Go shim's runc options: it runs runc with `<root>/<namespace>`.
        let root = serde_json::from_str::<serde_json::Value>(&opts)
            .ok()
            .and_then(|v| v["root"].as_str().map(String::from))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_RUNC_ROOT.into());
        task.runc_root = Some(Path::new(&root).join(namespace));
    }
    if task.runtime.is_empty() {
        task.runtime = task
            .shim_binary
            .as_deref()
            .and_then(runtime_of_binary)
            .unwrap_or_default();
    }
    if task.runc_root.is_none() && task.runtime == "io.containerd.runc.v2" {
        task.runc_root = Some(Path::new(DEFAULT_RUNC_ROOT).join(namespace));
    }
    Some(task)
}

/// Every bundle with an address under `state_dir`.
pub fn bundles(state_dir: &Path) -> Vec<Task> {
    BundleCache::default().bundles(state_dir)
}

/// Bundles read by earlier scans, reused while their directory is unchanged.
///
/// The watchdog rescans every interval; parsing every bundle's `config.json` each time was
/// most of its CPU with 100 pods. Shims and containerd add a bundle's files by creating or
/// renaming them into it (`address`, `shim.pid`), which changes the directory's mtime, and
/// nothing rewrites what discovery reads in place, so (inode, mtime) of the directory tells
/// when to read it again.
#[derive(Debug, Default)]
pub struct BundleCache {
    entries: HashMap<PathBuf, (DirKey, Option<Task>)>,
    /// Shims known alive by address (the watchdog follows each through a pidfd): their
    /// process is taken from here instead of /proc.
    pub alive: HashMap<String, Shim>,
    /// Processes refused as shims (pid, start time), so each refusal is logged once.
    refused: std::collections::HashSet<(i32, u64)>,
}

/// A bundle directory's inode and mtime (seconds, nanoseconds).
type DirKey = (u64, i64, i64);

impl BundleCache {
    /// Every bundle with an address under `state_dir`, reading only new or changed ones.
    pub fn bundles(&mut self, state_dir: &Path) -> Vec<Task> {
        use std::os::unix::fs::MetadataExt;
        let base = state_dir.join(TASK_DIR);
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(self.entries.len());
        for ns in dir_names(&base) {
            for id in dir_names(&base.join(&ns)) {
                let dir = base.join(&ns).join(&id);
                let Ok(meta) = std::fs::metadata(&dir) else {
                    continue;
                };
                let key = (meta.ino(), meta.mtime(), meta.mtime_nsec());
                let task = match self.entries.remove(&dir) {
                    Some((k, task)) if k == key => task,
                    _ => read_bundle(&dir, &ns, &id),
                };
                if let Some(t) = &task {
                    out.push(t.clone());
                }
                seen.insert(dir, (key, task));
            }
        }
        // Bundles gone since the last scan are forgotten.
        self.entries = seen;
        out
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What discovery is told.
#[derive(Debug, Clone)]
pub struct Scope {
    /// containerd's state dir.
    pub state_dir: PathBuf,
    /// containerd's gRPC socket (shims were given it as `-address`).
    pub containerd_address: String,
    /// Runtime names to watch.
    pub runtimes: Vec<String>,
}

/// A running shim process as its command line shows it.
#[derive(Debug, Clone)]
struct ShimProc {
    pid: i32,
    args: Vec<String>,
}

/// A process whose command line names a shim daemon, with what tells the daemon apart from
/// its own children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Process id.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Start time (clock ticks since boot).
    pub start_time: u64,
}

/// The daemon among processes whose command lines all name the same shim.
///
/// A shim forking a child (to exec runc) shows its own command line in that child until the
/// exec: such a child's parent is the daemon. Taking it for the shim once made its exit, a
/// moment later, look like the shim's death, and the pod was killed (seen with containerd
/// 1.7's Go shim). So the daemon is the candidate whose parent is no candidate; the oldest
/// if several are.
pub fn pick_daemon(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| !candidates.iter().any(|p| p.pid == c.ppid))
        .min_by_key(|c| (c.start_time, c.pid))
}

/// A candidate and its command line.
type CandidateArgs = (Candidate, Vec<String>);

/// Shim daemons of this containerd, by (namespace, id): processes whose command line
/// carries `-namespace`, `-id` and our `-address`, other than `start`/`delete` runs and
/// children not yet exec'd.
fn shim_processes(containerd_address: &str) -> HashMap<(String, String), ShimProc> {
    let mut found: HashMap<(String, String), Vec<CandidateArgs>> = HashMap::new();
    for pid in procfs::pids() {
        let args = procfs::cmdline(pid);
        if !is_shim_daemon(&args, containerd_address) {
            continue;
        }
        let (Some(ns), Some(id)) = (
            procfs::flag(&args, "-namespace"),
            procfs::flag(&args, "-id"),
        ) else {
            continue;
        };
        let (Ok((state, start_time)), Some(ppid)) = (procfs::stat(pid), procfs::parent(pid)) else {
            continue;
        };
        if state == 'Z' || state == 'X' {
            continue;
        }
        // Only root's processes from root's binaries can be a shim (or its forked child,
        // which pick_daemon needs to see); anything else is someone's look-alike.
        if crate::trust::process(pid).is_err() {
            continue;
        }
        let key = (ns.to_string(), id.to_string());
        let cand = Candidate {
            pid,
            ppid,
            start_time,
        };
        found.entry(key).or_default().push((cand, args));
    }
    found
        .into_iter()
        .filter_map(|(key, procs)| {
            let cands: Vec<Candidate> = procs.iter().map(|(c, _)| c.clone()).collect();
            let daemon = pick_daemon(&cands)?.pid;
            let (_, args) = procs.into_iter().find(|(c, _)| c.pid == daemon)?;
            Some((key, ShimProc { pid: daemon, args }))
        })
        .collect()
}

/// Whether a command line is a shim daemon started by the containerd at `address`.
pub fn is_shim_daemon(args: &[String], containerd_address: &str) -> bool {
    let Some(bin) = args.first() else {
        return false;
    };
    let bin_ok = Path::new(bin)
        .file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with("containerd-shim"));
    let action = args.last().map(String::as_str);
    bin_ok
        && !matches!(action, Some("start") | Some("delete"))
        && procfs::flag(args, "-id").is_some()
        && procfs::flag(args, "-address").is_some_and(|a| same_address(a, containerd_address))
}

fn same_address(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim_start_matches("unix://").to_string();
    let (a, b) = (strip(a), strip(b));
    a == b
        || std::fs::canonicalize(&a)
            .ok()
            .zip(std::fs::canonicalize(&b).ok())
            .is_some_and(|(x, y)| x == y)
}

/// Runtime names of containers, from containerd's API, by (namespace, id).
pub type Runtimes = HashMap<(String, String), String>;

/// The shims serving tasks of the watched runtimes, with their processes where alive.
pub fn discover(scope: &Scope, api_runtimes: Option<&Runtimes>) -> Vec<Shim> {
    discover_cached(scope, api_runtimes, &mut BundleCache::default())
}

/// [`discover`], reusing the bundles `cache` read before.
pub fn discover_cached(
    scope: &Scope,
    api_runtimes: Option<&Runtimes>,
    cache: &mut BundleCache,
) -> Vec<Shim> {
    let mut groups: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for mut t in cache.bundles(&scope.state_dir) {
        if let Some(r) = api_runtimes.and_then(|m| m.get(&(t.namespace.clone(), t.id.clone()))) {
            t.runtime = r.clone();
        }
        groups.entry(t.address.clone()).or_default().push(t);
    }
    let mut procs: Option<HashMap<(String, String), ShimProc>> = None;
    let mut shims = Vec::new();
    for (address, mut tasks) in groups {
        let runtime = tasks
            .iter()
            .map(|t| t.runtime.clone())
            .find(|r| !r.is_empty())
            .unwrap_or_default();
        if !scope.runtimes.contains(&runtime) {
            continue;
        }
        for t in &mut tasks {
            if t.runtime.is_empty() {
                t.runtime = runtime.clone();
            }
        }
        // A shim the caller already follows through a pidfd (which tells its death) needs no
        // /proc reads: most of an idle watchdog's system time went to them.
        if let Some(k) = cache.alive.get(&address).filter(|k| {
            k.process.as_ref().is_some_and(|p| {
                tasks
                    .iter()
                    .filter_map(|t| t.shim_pid)
                    .all(|pid| pid == p.pid)
            })
        }) {
            let first = k.id.clone();
            tasks.sort_by_key(|t| t.id != first);
            shims.push(Shim {
                tasks,
                runtime,
                ..k.clone()
            });
            continue;
        }
        let found = find_process(scope, &tasks, &mut procs, &mut cache.refused);
        let (process, args) = match found {
            Some((pid, args)) => match procfs::identity(pid) {
                Ok(id) => (Some(id), args),
                Err(_) => (None, Vec::new()),
            },
            None => (None, Vec::new()),
        };
        let shim_id = procfs::flag(&args, "-id")
            .map(String::from)
            .or_else(|| {
                tasks
                    .iter()
                    .find(|t| t.shim_pid.is_some())
                    .map(|t| t.id.clone())
            })
            .unwrap_or_else(|| tasks[0].id.clone());
        // The task the shim was started for first: its delete is the last to run.
        tasks.sort_by_key(|t| t.id != shim_id);
        shims.push(Shim {
            namespace: procfs::flag(&args, "-namespace")
                .map(String::from)
                .unwrap_or_else(|| tasks[0].namespace.clone()),
            id: shim_id,
            runtime,
            process,
            containerd_address: procfs::flag(&args, "-address")
                .map(String::from)
                .unwrap_or_else(|| scope.containerd_address.clone()),
            publish_binary: procfs::flag(&args, "-publish-binary")
                .unwrap_or_default()
                .to_string(),
            address,
            tasks,
        });
    }
    shims
}

/// The shim process serving `tasks`: sturdy's `shim.pid` first, else the daemon among
/// the processes whose command line names one of the tasks. Either way it must pass
/// [`check_shim_process`]: a command line and a pid file name a process, they do not prove
/// it is the shim (any user can run `exec -a containerd-shim-… -id <id> …`, and a dead
/// shim's pid can be taken by anyone).
fn find_process(
    scope: &Scope,
    tasks: &[Task],
    procs: &mut Option<HashMap<(String, String), ShimProc>>,
    refused: &mut std::collections::HashSet<(i32, u64)>,
) -> Option<(i32, Vec<String>)> {
    let pid_files = tasks.iter().filter_map(|t| t.shim_pid).filter_map(|pid| {
        let args = procfs::cmdline(pid);
        let ids_match =
            procfs::flag(&args, "-id").is_some_and(|id| tasks.iter().any(|t| t.id == id));
        (ids_match && is_shim_daemon(&args, &scope.containerd_address) && procfs::alive(pid))
            .then_some((pid, args))
    });
    let mut candidates: Vec<(i32, Vec<String>)> = pid_files.collect();
    if candidates.is_empty() {
        let procs = procs.get_or_insert_with(|| shim_processes(&scope.containerd_address));
        candidates.extend(tasks.iter().find_map(|t| {
            procs
                .get(&(t.namespace.clone(), t.id.clone()))
                .map(|p| (p.pid, p.args.clone()))
        }));
    }
    candidates.into_iter().find(|(pid, _)| {
        let Ok((_, start_time)) = procfs::stat(*pid) else {
            return false;
        };
        match check_shim_process(*pid, start_time, tasks) {
            Ok(()) => true,
            Err(e) => {
                if refused.len() >= MAX_REFUSED {
                    refused.clear();
                }
                if refused.insert((*pid, start_time)) {
                    log::warn!(
                        "not taking pid {pid} for the shim of {}: {e}",
                        tasks
                            .iter()
                            .map(|t| format!("{}/{}", t.namespace, t.id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                false
            }
        }
    })
}

#[cfg(test)]
mod tests;
