//! A single-node Kubernetes cluster on one of our private containerds: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and a kubelet, all in the node's own mount and
//! network namespaces ([`namespace`]), with per-run certificates ([`pki`]), a private
//! kubelet cgroup root ([`cgroup_root`]) and the RuntimeClasses `runc` and `sturdy`.
//! Dropping a [`KubeNode`] stops everything by PID and removes everything it made.

pub mod binaries;
pub mod cgroup_root;
pub mod config;
pub mod daemon;
pub mod kubectl;
pub mod namespace;
pub mod pki;
pub mod pod;
pub mod reaper;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use binaries::{KubeBinaries, KUBERNETES_NODE};
pub use kubectl::Kubectl;
pub use namespace::NODE_IP;
pub use pki::NODE_NAME;

use crate::containerd::{fixture_base, Builder, Containerd, Generation};
use crate::error::{Error, IoContext, Result};
use crate::image::BUSYBOX_IMAGE;
use crate::{until_some, CRI_NAMESPACE};
use cgroup_root::CgroupRoot;
use daemon::Daemon;
use namespace::NodeNamespace;
use pki::Pki;

/// The busybox image as pods name it (imported offline; pods use `imagePullPolicy: Never`).
pub const POD_IMAGE: &str = "sturdy.test/busybox:latest";

/// The RuntimeClasses every node has, named like their containerd handlers.
pub const RUNTIME_CLASSES: &str = r#"apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: runc
handler: runc
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: sturdy
handler: sturdy
"#;

/// How long a node may take to come up before the harness gives up (it takes ~20 s).
const STARTUP_LIMIT: Duration = Duration::from_secs(150);

type ContainerdOptions = Box<dyn FnOnce(Builder) -> Builder + Send>;

/// Options of a [`KubeNode`].
pub struct KubeBuilder {
    generation: Option<Generation>,
    dir: Option<PathBuf>,
    containerd: Option<ContainerdOptions>,
    kubelet_extra: serde_json::Value,
}

impl std::fmt::Debug for KubeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBuilder")
            .field("generation", &self.generation)
            .field("dir", &self.dir)
            .field("kubelet_extra", &self.kubelet_extra)
            .finish_non_exhaustive()
    }
}

/// A running node. Dropping it (even while unwinding) tears it down.
#[derive(Debug)]
pub struct KubeNode {
    dir: PathBuf,
    /// Components in start order; stopped in reverse.
    daemons: Vec<Daemon>,
    containerd: Option<Containerd>,
    cgroup_root: Option<CgroupRoot>,
    namespace: Option<NodeNamespace>,
    kubectl: Kubectl,
    bins: KubeBinaries,
    startup: Duration,
    cleaned: bool,
    /// Held for the node's lifetime ([`reaper`]).
    owner: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Default for KubeBuilder {
    fn default() -> Self {
        KubeBuilder {
            generation: None,
            dir: None,
            containerd: None,
            kubelet_extra: serde_json::json!({}),
        }
    }
}

impl KubeBuilder {
    /// containerd generation (default: `STURDY_CONTAINERD`, else 1.6).
    pub fn generation(mut self, g: Generation) -> Self {
        self.generation = Some(g);
        self
    }

    /// Use this (empty or missing) directory instead of a fresh `sturdy-kube-*` one; it is
    /// removed on teardown all the same.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Further options of the node's containerd (a runc wrapper, environment, ...).
    pub fn containerd(mut self, f: impl FnOnce(Builder) -> Builder + Send + 'static) -> Self {
        self.containerd = Some(Box::new(f));
        self
    }

    /// KubeletConfiguration fields merged over the defaults, e.g.
    /// `{"runtimeRequestTimeout": "20s"}`.
    pub fn kubelet_config(mut self, extra: serde_json::Value) -> Self {
        self.kubelet_extra = extra;
        self
    }

    /// Brings the node up: Ready, with the RuntimeClasses and the `default` ServiceAccount.
    pub async fn start(self) -> Result<KubeNode> {
        let t0 = Instant::now();
        let generation = match self.generation {
            Some(g) => g,
            None => Generation::from_env()?,
        };
        // Before anything exists: a host without the binaries leaves nothing behind.
        let bins = KubeBinaries::locate()?;
        generation.binaries()?;
        reaper::reap_stale_nodes();
        let dir = match self.dir {
            Some(d) => {
                std::fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
                if std::fs::read_dir(&d)
                    .ctx(|| format!("listing {}", d.display()))?
                    .next()
                    .is_some()
                {
                    return Err(Error::Kube(format!("{} is not empty", d.display())));
                }
                d
            }
            None => tempfile::Builder::new()
                .prefix(reaper::NODE_DIR_PREFIX)
                .tempdir_in(fixture_base()?)
                .ctx(|| "creating the node dir".into())?
                .keep(),
        };
        let owner = reaper::lock_owner(&dir, nix::fcntl::FlockArg::LockExclusiveNonblock)?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).ctx(|| format!("creating {}", logs.display()))?;
        // Rewritten below once the namespace exists; Drop needs a value now.
        let kubectl = Kubectl::write(
            &dir,
            &bins.kubectl,
            &dir.join("kubeconfig/admin.kubeconfig"),
            Path::new("/proc/self/ns/net"),
        )?;
        // From here on Drop removes whatever got made if a later step fails.
        let mut node = KubeNode {
            dir: dir.clone(),
            daemons: Vec::new(),
            containerd: None,
            cgroup_root: None,
            namespace: None,
            kubectl,
            bins,
            startup: Duration::ZERO,
            cleaned: false,
            owner: Some(owner),
        };
        let pki = Pki::create(&dir.join("pki"))?;
        let ns = NodeNamespace::create(&dir)?;
        let enter = ns.enter();
        node.kubectl = Kubectl::write(
            &dir,
            &node.bins.kubectl,
            &dir.join("kubeconfig/admin.kubeconfig"),
            &ns.net_path(),
        )?;
        node.namespace = Some(ns);
        node.spawn(&enter, "etcd", &config::etcd_args(&dir.join("etcd")))?;
        node.spawn(&enter, "kube-apiserver", &config::apiserver_args(&pki))?;
        config::write_kubeconfig(&dir, &pki, "admin", "admin")?;
        let kcm_kc = config::write_kubeconfig(&dir, &pki, "kcm", "kcm")?;
        let sched_kc = config::write_kubeconfig(&dir, &pki, "scheduler", "scheduler")?;
        let kubelet_kc = config::write_kubeconfig(&dir, &pki, "kubelet", "kubelet-client")?;

        let mut builder = Containerd::builder()
            .generation(generation)
            .launcher(enter.clone());
        if let Some(f) = self.containerd {
            builder = f(builder);
        }
        let containerd = builder.start().await?;
        containerd
            .ctr_in(
                CRI_NAMESPACE,
                &["images", "tag", "--force", BUSYBOX_IMAGE, POD_IMAGE],
                Duration::from_secs(60),
            )
            .await?;
        let socket = containerd.socket().to_path_buf();
        let suffix = containerd.suffix().to_string();
        node.containerd = Some(containerd);

        let root = CgroupRoot::create(&format!("sturdy-kube-{suffix}"))?;
        let paths = config::KubeletPaths::under(&dir);
        config::write_kubelet_config(&paths, &pki, &socket, &root.path(), &self.kubelet_extra)?;
        node.cgroup_root = Some(root);
        node.write_record()?;
        // The controller-manager exits at once if the API server has not yet created its
        // bootstrap RBAC roles ("cannot get resource configmaps"): on a loaded machine that
        // takes longer than containerd's start above.
        node.wait_api_ready(t0 + STARTUP_LIMIT).await?;
        node.spawn(
            &enter,
            "kube-controller-manager",
            &config::kcm_args(&pki, &kcm_kc),
        )?;
        node.spawn(&enter, "kube-scheduler", &config::scheduler_args(&sched_kc))?;
        node.spawn(
            &enter,
            "kubelet",
            &config::kubelet_args(&paths, &kubelet_kc),
        )?;

        node.wait_ready(t0 + STARTUP_LIMIT).await?;
        node.kubectl
            .apply("runtimeclasses", RUNTIME_CLASSES)
            .await?;
        node.startup = t0.elapsed();
        Ok(node)
    }
}

impl KubeNode {
    /// Options builder.
    pub fn builder() -> KubeBuilder {
        KubeBuilder::default()
    }

    /// A node with default options.
    pub async fn start() -> Result<KubeNode> {
        KubeBuilder::default().start().await
    }

    fn spawn(&mut self, enter: &[String], name: &str, args: &[String]) -> Result<()> {
        let program = match name {
            "etcd" => &self.bins.etcd,
            "kube-apiserver" => &self.bins.apiserver,
            "kube-controller-manager" => &self.bins.kcm,
            "kube-scheduler" => &self.bins.scheduler,
            _ => &self.bins.kubelet,
        }
        .clone();
        let d = Daemon::spawn(name, enter, &program, args, &self.dir.join("logs"))?;
        self.daemons.push(d);
        Ok(())
    }

    /// `node.json`: what `kube-node.sh down` needs if the process holding the node died.
    fn write_record(&self) -> Result<()> {
        let record = serde_json::json!({
            "containerd_dir": self.containerd.as_ref().map(|c| c.dir().to_path_buf()),
            "cgroup_root": self.cgroup_root.as_ref().map(|c| c.path()),
            "namespace_pid": self.namespace.as_ref().map(|n| n.pid()),
        });
        let path = self.dir.join("node.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&record)?)
            .ctx(|| format!("writing {}", path.display()))
    }

    /// An error naming the first component that died, with its log tail.
    fn dead_component(&mut self) -> Option<Error> {
        let dead = self
            .daemons
            .iter_mut()
            .find_map(|d| (!d.running()).then_some(d))?;
        Some(Error::Kube(format!(
            "{} exited; its log ({}) ends:\n{}",
            dead.name(),
            dead.log().display(),
            dead.log_tail(30)
        )))
    }

    /// Waits until the API server reports `/readyz` ok, its post-start hooks (the
    /// bootstrap RBAC policy among them) done.
    async fn wait_api_ready(&mut self, deadline: Instant) -> Result<()> {
        self.wait_for("the API server was not ready", deadline, |k| async move {
            let out = k.run(&["get", "--raw", "/readyz"]).await.ok()?;
            (out.trim() == "ok").then_some(())
        })
        .await
    }

    /// Waits for the node Ready and the default ServiceAccount made (pods need both).
    async fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        self.wait_for("the node was not Ready", deadline, |k| async move {
            let node = k.get_json(&["node", NODE_NAME]).await.ok()?;
            ready_condition(&node).filter(|s| s == "True")?;
            k.run(&["get", "serviceaccount", "default"]).await.ok()?;
            Some(())
        })
        .await
    }

    /// Polls `check` until it holds, failing early with the log of a component that died,
    /// or at `deadline` with `failure` and every component's log tail.
    async fn wait_for<F, Fut>(&mut self, failure: &str, deadline: Instant, check: F) -> Result<()>
    where
        F: Fn(Kubectl) -> Fut,
        Fut: std::future::Future<Output = Option<()>>,
    {
        let kubectl = self.kubectl.clone();
        let mut dead = None;
        let ready = until_some(deadline.saturating_duration_since(Instant::now()), || {
            let died = self.dead_component();
            let done = died.is_some();
            if died.is_some() {
                dead = died;
            }
            let probe = (!done).then(|| check(kubectl.clone()));
            async move {
                match probe {
                    None => Some(false),
                    Some(p) => p.await.map(|()| true),
                }
            }
        })
        .await;
        if let Some(e) = dead {
            return Err(e);
        }
        if ready != Some(true) {
            let tails: String = self
                .daemons
                .iter()
                .map(|d| format!("--- {} ---\n{}\n", d.name(), d.log_tail(8)))
                .collect();
            return Err(Error::Kube(format!(
                "{failure} within {STARTUP_LIMIT:?}:\n{tails}"
            )));
        }
        Ok(())
    }

    /// The node's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`KubeBuilder::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// kubectl as the cluster admin.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// The node's containerd.
    pub fn containerd(&self) -> &Containerd {
        self.containerd
            .as_ref()
            .expect("containerd runs for as long as the node")
    }

    /// The node's containerd, for a restart.
    pub fn containerd_mut(&mut self) -> &mut Containerd {
        self.containerd
            .as_mut()
            .expect("containerd runs for as long as the node")
    }

    /// `nsenter` arguments that run a program inside the node's namespaces.
    pub fn enter(&self) -> Vec<String> {
        self.namespace
            .as_ref()
            .map(NodeNamespace::enter)
            .unwrap_or_default()
    }

    /// PID of the process holding the node's namespaces: `nsenter --target` it to run
    /// something where the node's containerd, shims and kubelet are.
    pub fn namespace_pid(&self) -> Option<i32> {
        self.namespace.as_ref().map(NodeNamespace::pid)
    }

    /// PID of a component (`etcd`, `kube-apiserver`, `kubelet`, ...).
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.daemons
            .iter()
            .find(|d| d.name() == name)
            .map(Daemon::pid)
    }

    /// Restarts a component (`kubelet`, ...) as an operator would: SIGTERM, then the same
    /// command line again.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let d = self
            .daemons
            .iter_mut()
            .find(|d| d.name() == name)
            .ok_or_else(|| Error::Kube(format!("no component {name}")))?;
        d.restart(Duration::from_secs(10))
    }

    /// The kubelet's `cgroupRoot`.
    pub fn cgroup_root(&self) -> Option<String> {
        self.cgroup_root.as_ref().map(CgroupRoot::path)
    }

    /// Stops everything and removes everything; what could not be removed.
    pub fn stop(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        if std::thread::panicking() {
            for d in &self.daemons {
                eprintln!(
                    "--- {} log tail ({}) ---\n{}",
                    d.name(),
                    d.log().display(),
                    d.log_tail(25)
                );
            }
        }
        // The kubelet first, so it does not restart what goes next; etcd last.
        while let Some(mut d) = self.daemons.pop() {
            d.stop(Duration::from_secs(10));
        }
        let mut problems = Vec::new();
        if let Some(mut c) = self.containerd.take() {
            problems.extend(c.stop());
        }
        if let Some(mut ns) = self.namespace.take() {
            ns.stop();
        }
        if let Some(mut root) = self.cgroup_root.take() {
            let left = root.remove();
            if !left.is_empty() {
                problems.push(format!("cgroups left: {left:?}"));
            }
        }
        // The namespace's mounts (the kubelet's volumes) went with its last process.
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if self.dir.exists() {
                problems.push(format!("removing {}: {e}", self.dir.display()));
            }
        }
        self.owner = None;
        for p in &problems {
            eprintln!("sturdy-integration kube cleanup: {p}");
        }
        problems
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        let problems = self.stop();
        if !problems.is_empty() && !std::thread::panicking() {
            panic!("kube node cleanup left: {problems:?}");
        }
    }
}

/// `status` of the node's `Ready` condition (`True`, `False`, `Unknown`).
pub fn ready_condition(node: &serde_json::Value) -> Option<String> {
    condition(node, "Ready").map(|(s, _, _)| s)
}

/// `(status, reason, message)` of a condition of a node or pod object.
pub fn condition(object: &serde_json::Value, kind: &str) -> Option<(String, String, String)> {
    let c = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}
