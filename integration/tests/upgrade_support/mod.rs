//! Helpers of the upgrade tests: CRI pods whose identity (sandbox id, IP, pause and
//! container processes, shim process) is recorded when they start and checked after every
//! upgrade step, together with exec and logs through whatever containerd runs now.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sturdy_integration::k8s_cri::v1::{
    ContainerState, LinuxContainerConfig, LinuxContainerSecurityContext, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxState,
};
use sturdy_integration::{
    cleanup, container_config, Containerd, Cri, Generation, Handler, CRI_NAMESPACE,
};

/// Longest any single step may take on a loaded 2-core machine.
pub const T: Duration = Duration::from_secs(60);

/// A container's main process: exits 0 on SIGTERM, so a stop is quick and graceful.
const APP: &str = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

/// A process by pid and start time, so a recycled pid never passes for the old process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

impl Proc {
    /// The process `pid` is now, if it exists (zombies count as gone).
    pub fn of(pid: i32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields follow the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        Some(Proc {
            pid,
            start: fields.get(19)?.parse().ok()?,
        })
    }

    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        Proc::of(self.pid) == Some(*self)
    }
}

/// Waits until `what` holds, panicking with `msg` after [`T`].
pub async fn wait_for(msg: impl Fn() -> String, mut what: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !what() {
        assert!(Instant::now() < end, "timed out: {}", msg());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Init process of container `id` as runc recorded it in the fixture's runc root (both
/// handlers use it), independent of any shim or containerd.
pub fn runc_init(fx: &Containerd, id: &str) -> Option<Proc> {
    let state = fx
        .runc_root()
        .join(CRI_NAMESPACE)
        .join(id)
        .join("state.json");
    let raw = std::fs::read(state).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    Proc::of(v["init_process_pid"].as_i64()? as i32)
}

/// One container of a [`Pod`].
#[derive(Debug, Clone)]
pub struct Ctr {
    /// Name in the pod (and its log file's name).
    pub name: String,
    /// CRI container id.
    pub id: String,
    /// Its init process.
    pub init: Proc,
}

/// A CRI pod with one or more running containers, and what must not change about it.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod name (unique per fixture).
    pub name: String,
    /// The runtime handler it runs under.
    pub handler: Handler,
    /// Sandbox id.
    pub id: String,
    /// Config it was started with (CreateContainer needs it).
    pub config: PodSandboxConfig,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// The pause (sandbox init) process.
    pub pause: Proc,
    /// The shim process serving it.
    pub shim: Proc,
    /// That shim's executable when the pod started.
    pub shim_exe: PathBuf,
    /// Its containers.
    pub containers: Vec<Ctr>,
    /// Whether its shim may outlive the pod's removal (reported, not asserted): a Go
    /// shim whose container containerd deleted behind its back never gets its last
    /// Delete and so never exits.
    pub shim_may_linger: bool,
}

impl Pod {
    /// Runs pod `name` through `handler` with one container, `app`.
    pub async fn start(fx: &Containerd, cri: &mut Cri, handler: Handler, name: &str) -> Pod {
        let config = fx.pod_config(name);
        let id = cri.run_pod(handler, &config).await.expect("RunPodSandbox");
        let ip = cri.pod_ip(&id).await.expect("pod IP");
        let pause = runc_init(fx, &id).expect("pause process in runc's state");
        let shim_pid = fx.shim_pid(CRI_NAMESPACE, &id).expect("pod shim");
        let shim = Proc::of(shim_pid).expect("pod shim process");
        let shim_exe = std::fs::read_link(format!("/proc/{shim_pid}/exe")).expect("shim exe");
        let mut pod = Pod {
            name: name.into(),
            handler,
            id,
            config,
            ip,
            pause,
            shim,
            shim_exe,
            containers: Vec::new(),
            shim_may_linger: false,
        };
        pod.add_container(fx, cri, "app").await;
        pod
    }

    /// Creates and starts container `name` in the pod.
    pub async fn add_container(&mut self, fx: &Containerd, cri: &mut Cri, name: &str) -> String {
        self.add_container_running(fx, cri, name, APP).await
    }

    /// Creates and starts container `name` in the pod, running `/bin/sh -c script`.
    pub async fn add_container_running(
        &mut self,
        fx: &Containerd,
        cri: &mut Cri,
        name: &str,
        script: &str,
    ) -> String {
        let mut config = container_config(name, &["/bin/sh", "-c", script]);
        // Its own PID namespace, as kubelet gives a container unless the pod shares one:
        // /proc/1 in an exec is then the container's main process.
        config.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = cri
            .create_container(&self.id, config, &self.config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name} in {}: {e}", self.name));
        cri.start_container(&id)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name} in {}: {e}", self.name));
        let init = runc_init(fx, &id).expect("container init in runc's state");
        self.containers.push(Ctr {
            name: name.into(),
            id: id.clone(),
            init,
        });
        id
    }

    /// The container called `name`.
    pub fn container(&self, name: &str) -> &Ctr {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{} has no container {name}", self.name))
    }

    /// Takes container `name` out of the pod's record (it is no longer checked).
    pub fn take_container(&mut self, name: &str) -> Ctr {
        let c = self.container(name).clone();
        self.containers.retain(|x| x.name != name);
        c
    }

    /// Where CRI writes container `container`'s log.
    pub fn log_path(&self, fx: &Containerd, container: &str) -> PathBuf {
        fx.dir()
            .join("pod-logs")
            .join(&self.name)
            .join(format!("{container}.log"))
    }

    /// Everything about the pod is as it was when it started, and it still works: same
    /// sandbox id, READY, same IP, same pause, shim and container processes (pid and start
    /// time), containers RUNNING, exec answers, and what a container writes reaches its
    /// CRI log. `step` names the moment in failure messages and log markers.
    pub async fn check(&self, fx: &Containerd, cri: &mut Cri, step: &str) {
        let p = format!("{} ({}) after {step}", self.name, self.handler);
        let status = cri
            .pod_status(&self.id)
            .await
            .unwrap_or_else(|e| panic!("{p}: PodSandboxStatus: {e}"));
        assert_eq!(status.id, self.id, "{p}: sandbox id");
        assert_eq!(
            status.state,
            PodSandboxState::SandboxReady as i32,
            "{p}: pod not READY"
        );
        let ip = cri.pod_ip(&self.id).await.expect("pod IP");
        assert_eq!(ip, self.ip, "{p}: pod IP changed");
        assert!(
            self.pause.alive(),
            "{p}: pause process {:?} gone",
            self.pause
        );
        assert_eq!(runc_init(fx, &self.id), Some(self.pause), "{p}: pause pid");
        assert!(self.shim.alive(), "{p}: shim {:?} gone", self.shim);
        assert_eq!(
            fx.shim_pid(CRI_NAMESPACE, &self.id),
            Some(self.shim.pid),
            "{p}: another shim serves the pod"
        );
        for c in &self.containers {
            let s = cri
                .container_status(&c.id)
                .await
                .unwrap_or_else(|e| panic!("{p}: ContainerStatus {}: {e}", c.name));
            assert_eq!(
                s.state,
                ContainerState::ContainerRunning as i32,
                "{p}: container {} not RUNNING",
                c.name
            );
            assert!(c.init.alive(), "{p}: {} init {:?} gone", c.name, c.init);
            assert_eq!(
                runc_init(fx, &c.id),
                Some(c.init),
                "{p}: {} init pid",
                c.name
            );
            let out = cri
                .exec_sync(&c.id, &["echo", step], T)
                .await
                .unwrap_or_else(|e| panic!("{p}: ExecSync in {}: {e}", c.name));
            assert_eq!(
                (out.exit_code, out.stdout.trim()),
                (0, step),
                "{p}: exec in {}",
                c.name
            );
            // Written by the container's own pid 1, so it travels the container's stdout
            // (shim, FIFO, CRI's logger of the containerd running now) into its CRI log.
            let marker = format!("log-{}-{}", c.name, step.replace(' ', "-"));
            let out = cri
                .exec_sync(
                    &c.id,
                    &["/bin/sh", "-c", &format!("echo {marker} > /proc/1/fd/1")],
                    T,
                )
                .await
                .unwrap_or_else(|e| panic!("{p}: ExecSync (log) in {}: {e}", c.name));
            assert_eq!(
                out.exit_code, 0,
                "{p}: writing to {}'s stdout: {out:?}",
                c.name
            );
            let log = self.log_path(fx, &c.name);
            wait_for(
                || format!("{p}: {marker} never reached {}", log.display()),
                || {
                    std::fs::read_to_string(&log)
                        .map(|t| t.contains(&marker))
                        .unwrap_or(false)
                },
            )
            .await;
        }
    }

    /// StopContainer (SIGTERM: the container exits 0) and RemoveContainer of `name`; its
    /// process and runc state are gone afterwards.
    pub async fn remove_container(&mut self, fx: &Containerd, cri: &mut Cri, name: &str) {
        let c = self.container(name).clone();
        let p = format!("{} ({}) container {name}", self.name, self.handler);
        cri.stop_container(&c.id, 30)
            .await
            .unwrap_or_else(|e| panic!("{p}: StopContainer: {e}"));
        let s = cri.container_status(&c.id).await.expect("ContainerStatus");
        assert_eq!(
            s.state,
            ContainerState::ContainerExited as i32,
            "{p}: state"
        );
        assert_eq!(s.exit_code, 0, "{p}: exit code of a graceful stop");
        cri.remove_container(&c.id)
            .await
            .unwrap_or_else(|e| panic!("{p}: RemoveContainer: {e}"));
        wait_for(|| format!("{p}: init still alive"), || !c.init.alive()).await;
        let state = fx.runc_root().join(CRI_NAMESPACE).join(&c.id);
        assert!(!state.exists(), "{p}: runc state {} left", state.display());
        self.containers.retain(|x| x.name != name);
    }

    /// After the pod's shim died: waits until containerd's cleanup killed its processes
    /// and CRI reports the pod NOTREADY and every container EXITED (as kubelet sees it).
    pub async fn wait_crashed(&self, cri: &mut Cri) {
        let p = format!("{} ({}) after its shim died", self.name, self.handler);
        let procs: Vec<Proc> = std::iter::once(self.pause)
            .chain(self.containers.iter().map(|c| c.init))
            .collect();
        wait_for(
            || format!("{p}: processes outlived the cleanup: {procs:?}"),
            || procs.iter().all(|x| !x.alive()),
        )
        .await;
        let end = Instant::now() + T;
        loop {
            let pod = cri.pod_status(&self.id).await.expect("PodSandboxStatus");
            let mut exited = pod.state == PodSandboxState::SandboxNotready as i32;
            for c in &self.containers {
                let s = cri.container_status(&c.id).await.expect("ContainerStatus");
                exited &= s.state == ContainerState::ContainerExited as i32;
            }
            if exited {
                return;
            }
            assert!(
                Instant::now() < end,
                "{p}: CRI never saw it: pod state {}",
                pod.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sandbox and container ids of the pod.
    pub fn ids(&self) -> Vec<String> {
        std::iter::once(self.id.clone())
            .chain(self.containers.iter().map(|c| c.id.clone()))
            .collect()
    }

    /// Waits until runc's state of the pod's sandbox and containers is gone: CRI may
    /// learn of a dead shim's exits before containerd's cleanup (`<shim> delete`) is done.
    pub async fn wait_runc_state_gone(&self, fx: &Containerd) {
        let left = || -> Vec<PathBuf> {
            self.ids()
                .iter()
                .map(|id| fx.runc_root().join(CRI_NAMESPACE).join(id))
                .filter(|p| p.exists())
                .collect()
        };
        wait_for(
            || format!("{}: runc state left: {:?}", self.name, left()),
            || left().is_empty(),
        )
        .await;
    }

    /// StopPodSandbox and RemovePodSandbox; afterwards its pause, containers, shim (unless
    /// [`Pod::shim_may_linger`]), netns and bundle are gone.
    pub async fn remove(self, fx: &Containerd, cri: &mut Cri) {
        let p = format!("{} ({})", self.name, self.handler);
        let netns = cri.pod_netns(&self.id).await.ok().flatten();
        cri.stop_pod(&self.id)
            .await
            .unwrap_or_else(|e| panic!("{p}: StopPodSandbox: {e}"));
        cri.remove_pod(&self.id)
            .await
            .unwrap_or_else(|e| panic!("{p}: RemovePodSandbox: {e}"));
        let mut procs: Vec<Proc> = std::iter::once(self.pause)
            .chain(self.containers.iter().map(|c| c.init))
            .collect();
        if self.shim_may_linger {
            eprintln!(
                "{p}: removed; its shim {} {}",
                self.shim.pid,
                if self.shim.alive() {
                    "still runs"
                } else {
                    "is gone"
                }
            );
        } else {
            procs.push(self.shim);
        }
        wait_for(
            || {
                let alive: Vec<&Proc> = procs.iter().filter(|x| x.alive()).collect();
                format!("{p}: processes left: {alive:?} (shim {:?})", self.shim)
            },
            || procs.iter().all(|x| !x.alive()),
        )
        .await;
        let pods = cri.list_pods().await.expect("ListPodSandbox");
        assert!(pods.iter().all(|x| x.id != self.id), "{p}: still listed");
        if let Some(ns) = netns {
            assert!(!ns.exists(), "{p}: netns {} left", ns.display());
        }
        let bundles = cleanup::bundles(&fx.state_dir());
        assert!(bundles.iter().all(|b| b.id != self.id), "{p}: bundle left");
    }
}

/// A runc stand-in at `path` that appends `<tag> <its arguments>` to `log`, then execs
/// `real` (the fixture's runtime): the log tells which configured binary served which
/// container and call.
pub fn logging_runc(path: &Path, log: &Path, tag: &str, real: &Path) {
    let script = format!(
        "#!/bin/sh\necho \"{tag} $*\" >> '{}'\nexec '{}' \"$@\"\n",
        log.display(),
        real.display()
    );
    std::fs::write(path, script).expect("write runc wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The runc calls a [`logging_runc`] log records for container `id`: each entry is the
/// runc subcommand (`create`, `start`, `exec`, `kill`, `delete`, `state`, ...).
pub fn calls_for(log: &Path, id: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.split_whitespace().any(|w| w == id))
        .filter_map(subcommand)
        .collect()
}

/// The runc subcommand of a logged command line (the first word that is not a global
/// flag or its value).
fn subcommand(line: &str) -> Option<String> {
    const WITH_VALUE: [&str; 4] = ["--root", "--log", "--log-format", "--criu"];
    let mut words = line.split_whitespace().skip(1);
    while let Some(w) = words.next() {
        if WITH_VALUE.contains(&w) {
            words.next();
        } else if !w.starts_with('-') {
            return Some(w.to_string());
        }
    }
    None
}

/// One pod per handler and `name`, e.g. `b-runc` and `b-sturdy`.
pub async fn start_pods(fx: &Containerd, cri: &mut Cri, name: &str) -> Vec<Pod> {
    let mut out = Vec::new();
    for h in Handler::ALL {
        let pod = Pod::start(fx, cri, h, &format!("{name}-{h}")).await;
        // A new pod is served by the shim binary this containerd resolves now.
        assert_eq!(
            std::fs::canonicalize(&pod.shim_exe).unwrap_or(pod.shim_exe.clone()),
            fx.expected_shim_exe(h),
            "{}: new pod's shim binary",
            pod.name
        );
        out.push(pod);
    }
    out
}

/// New pods got addresses no live pod holds: the IPAM state survived the swap too.
pub fn distinct_ips<'a>(pods: impl Iterator<Item = &'a Pod>) {
    let mut seen = BTreeSet::new();
    for pod in pods {
        assert!(
            seen.insert(pod.ip),
            "{}: IP {} given twice",
            pod.name,
            pod.ip
        );
    }
}

/// The step: containerd replaced by `g` under `pods`; every pod is checked, and the time
/// it took is printed for the report.
pub async fn upgrade(fx: &mut Containerd, g: Generation, pods: &[Pod], label: &str) {
    let from = fx.version().await.expect("version before");
    let t0 = Instant::now();
    fx.restart_as(g)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let swap = t0.elapsed();
    let to = fx.version().await.expect("version after");
    assert!(
        to.contains(g.version()),
        "{label}: runs {to}, not {}",
        g.version()
    );
    let mut cri = fx.cri().await.expect("cri client");
    for pod in pods {
        pod.check(fx, &mut cri, label).await;
    }
    // Old pods stay on the shim binary that started them: for the Go shim that is the
    // previous generation's binary, still running after its file was replaced.
    let old_go_shims: Vec<String> = pods
        .iter()
        .filter(|p| p.handler == Handler::Runc)
        .map(|p| format!("{} on {}", p.name, p.shim_exe.display()))
        .collect();
    eprintln!(
        "{label}: {from} -> {to} in {:.1}s (daemon swap {:.1}s); {} pods kept; Go shims of old pods: {old_go_shims:?}",
        t0.elapsed().as_secs_f64(),
        swap.as_secs_f64(),
        pods.len()
    );
}
