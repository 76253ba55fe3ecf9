//! A private containerd per test: own root, state, sockets, CNI network, runc root and cgroup,
//! of any supported generation (1.6 from Debian, 1.7 and 2.1 to 2.4 from `../shared/tools`),
//! over any supported OCI runtime (Debian's runc 1.1 or crun, runc 1.3 or 1.4 from there).

mod builder;
mod cgroup_driver;
mod config;
mod generation;
mod oci_runtime;
mod subnets;
mod tasks;
mod teardown;
mod upgrade;
mod workspace;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

pub use builder::{fixture_base, Builder, ExtraRuntime, FIXTURE_BASE_ENV};
pub use cgroup_driver::{CgroupDriver, CGROUP_DRIVER_ENV};
pub use generation::{Binaries, Generation, GENERATION_ENV};
pub use oci_runtime::{OciRuntime, RUNTIME_ENV};
pub use subnets::{SubnetSlot, POD_NETWORK, SUBNET_SLOTS};
pub use teardown::{log_tail, reap_stale_fixtures, Footprint};
pub use workspace::{default_shim_bin, sturdyctl_bin, target_dir, workspace_dir};

use crate::error::{Error, IoContext, Result};
use crate::image::{self, PAUSE_IMAGE};

/// CRI's fixed containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Name of the shim binary containerd looks up on its PATH for `io.containerd.sturdy.v2`.
pub const SHIM_BINARY: &str = "containerd-shim-sturdy-v2";
/// Name of the Go shim binary containerd looks up for `io.containerd.runc.v2`.
pub const GO_SHIM_BINARY: &str = "containerd-shim-runc-v2";

/// Short random hex id, unique enough to name bridges, namespaces and cgroups per fixture.
fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hex::encode(h.finalize())[..8].to_string()
}

/// A running private containerd. Dropping it tears down everything it caused.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    suffix: String,
    namespace: String,
    cgroup_name: String,
    bridge: String,
    network: String,
    socket: PathBuf,
    shim_bin: PathBuf,
    generation: Generation,
    bins: Binaries,
    extra_runtimes: Vec<ExtraRuntime>,
    sturdy_as_runc_v2: bool,
    /// Whether the config defines the `sturdy` handler (and bin/ holds its shim).
    sturdy_handler: bool,
    /// The `sturdy` handler is registered as `io.containerd.runc.v2` with `runtime_path`.
    sturdy_runc_type: bool,
    sandbox_image: String,
    registry_config_path: Option<PathBuf>,
    port_mapping: bool,
    /// `BinaryName` of the `runc` and `sturdy` handlers (`None`: runc on PATH).
    runc_binary: Option<PathBuf>,
    /// The OCI runtime linked as `bin/runc`, the `runc` both shims find on their PATH.
    oci_runtime: OciRuntime,
    oci_runtime_bin: PathBuf,
    /// The cgroup driver of both handlers (`SystemdCgroup`).
    cgroup_driver: CgroupDriver,
    /// Extra environment of containerd (and its shims).
    env: Vec<(String, String)>,
    /// Command prefix containerd is started through (empty: none).
    launcher: Vec<std::ffi::OsString>,
    child: Option<Child>,
    pid: i32,
    subnet: Option<SubnetSlot>,
    netns: Arc<Mutex<BTreeSet<PathBuf>>>,
    cleaned: bool,
    /// Held for the fixture's lifetime; a lockable owner.lock means the owner died.
    owner: Option<Flock<File>>,
}

impl Containerd {
    /// Start an instance with default options.
    pub async fn start() -> Result<Containerd> {
        Builder::default().start().await
    }

    /// Options builder.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The instance's temp dir (`sturdy-test-*`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Random id shared by this instance's namespace, bridge and cgroup names.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// gRPC socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The containerd namespace tests use for non-CRI work (unique per instance).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// PID of the containerd daemon.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Name of the CNI bridge this instance's pods attach to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pod /28 this instance owns.
    pub fn subnet(&self) -> &SubnetSlot {
        self.subnet
            .as_ref()
            .expect("subnet is acquired before start returns")
    }

    /// Private runc root; runc state lives in `<runc_root>/<namespace>/<id>`.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Runtime options file handed to the sturdy shim (ctr `--runtime-config-path`, CRI
    /// `ConfigPath`); it holds `Root = "<runc_root>"` and `SandboxRecordDir`.
    pub fn sturdy_options_path(&self) -> PathBuf {
        self.dir.join("sturdy-runtime.toml")
    }

    /// Where the sturdy shim keeps this instance's pod sandbox network records (its
    /// `SandboxRecordDir` option): `<dir>/sandboxes/<namespace>/<sandbox id>.json`.
    pub fn sandbox_record_dir(&self) -> PathBuf {
        self.dir.join("sandboxes")
    }

    /// cgroup parent of CRI pods (and ctr containers live under `/<namespace>`): one name per
    /// instance so cleanup can remove the whole subtree. Under the systemd driver it is a
    /// slice unit kubelet-style (`kubepods-sturdy<suffix>.slice`, nested in kubepods.slice).
    pub fn cgroup_parent(&self) -> String {
        match self.cgroup_driver {
            CgroupDriver::Cgroupfs => self.cgroupfs_parent(),
            CgroupDriver::Systemd => cgroup_driver::pod_slice(&self.slice_name()),
        }
    }

    /// A cgroup directory of this instance written directly, whatever the driver (e.g. a
    /// `ShimCgroup`): `/sturdy-<suffix>`, removed with the fixture.
    pub fn cgroupfs_parent(&self) -> String {
        format!("/{}", self.cgroup_name)
    }

    /// The cgroup driver both handlers use.
    pub fn cgroup_driver(&self) -> CgroupDriver {
        self.cgroup_driver
    }

    /// `ctr run` flags that place container `id` under this instance's cgroup the way the
    /// driver needs it: systemd's takes `slice:prefix:name`, and the Go shim learns the
    /// driver from ctr's `--runc-systemd-cgroup` (sturdy from its options file).
    pub fn ctr_cgroup_flags(&self, handler: crate::Handler, id: &str) -> Vec<String> {
        let mut flags = Vec::new();
        if self.cgroup_driver == CgroupDriver::Systemd {
            // ctr refuses this flag for any runtime type but runc's.
            if handler == crate::Handler::Runc {
                flags.push("--runc-systemd-cgroup".into());
            }
            // systemd names the scope `<prefix>-<id>.scope`, one name space for the whole
            // machine: with a fixed prefix, two fixtures' containers of the same id collide
            // ("Unit ctr-counter.scope was already loaded").
            flags.push("--cgroup".into());
            flags.push(format!("{}:ctr{}:{id}", self.cgroup_parent(), self.suffix));
        }
        flags
    }

    /// The per-instance part of the pod slice name (no `-`: systemd nests at each one).
    pub(crate) fn slice_name(&self) -> String {
        format!("sturdy{}", self.suffix)
    }

    /// FIFO dir for ctr, so no IO fifos land in /run/containerd/fifo.
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    /// containerd's state dir (bundles live under it).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Path of containerd's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// Path of the sturdy shim as containerd sees it (`<dir>/bin/containerd-shim-sturdy-v2`).
    pub fn shim_on_path(&self) -> PathBuf {
        self.dir.join("bin").join(SHIM_BINARY)
    }

    /// The containerd generation this instance runs.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The containerd and Go shim binaries this instance runs.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// The OCI runtime both handlers run as `runc` (unless a `BinaryName` says otherwise).
    pub fn oci_runtime(&self) -> OciRuntime {
        self.oci_runtime
    }

    /// That runtime's binary; what a test runs to ask the runtime itself (`state`, `delete`).
    pub fn oci_runtime_binary(&self) -> &Path {
        &self.oci_runtime_bin
    }

    /// `<dir>/bin/runc`, the link to [`Containerd::oci_runtime_binary`] on containerd's PATH.
    pub fn runc_on_path(&self) -> PathBuf {
        self.dir.join("bin").join("runc")
    }

    /// containerd's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The shim binary this fixture was configured with.
    pub fn shim_bin(&self) -> &Path {
        &self.shim_bin
    }

    /// Record a network namespace a pod of ours uses, so Drop removes it if CRI does not.
    pub fn record_netns(&self, path: PathBuf) {
        self.netns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path);
    }

    pub(crate) fn netns_registry(&self) -> Arc<Mutex<BTreeSet<PathBuf>>> {
        self.netns.clone()
    }

    /// Last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    fn prepare(&self) -> Result<()> {
        let d = &self.dir;
        for sub in [
            "root",
            "state",
            "opt",
            "bin",
            "cni/net.d",
            "cni/ipam",
            "runc",
            "fifo",
            "tmp",
            "pod-logs",
            "images",
            "certs.d",
        ] {
            let p = d.join(sub);
            std::fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        // A symlink keeps `cargo build` updates visible; a missing target only hurts sturdy runs.
        let link = self.shim_on_path();
        if self.sturdy_handler {
            std::os::unix::fs::symlink(&self.shim_bin, &link)
                .ctx(|| format!("linking {}", link.display()))?;
        }
        // containerd finds shims by a PATH lookup, and bin/ comes first on its PATH: this
        // makes `runc` the generation's own Go shim, or sturdy shadowing it.
        let go_shim = if self.sturdy_as_runc_v2 {
            Some(self.shim_bin.clone())
        } else if self.generation.archive().is_some() {
            Some(self.bins.go_shim.clone())
        } else {
            None
        };
        if let Some(target) = go_shim {
            let link = d.join("bin").join(GO_SHIM_BINARY);
            std::os::unix::fs::symlink(&target, &link)
                .ctx(|| format!("linking {}", link.display()))?;
        }
        // Both shims run `runc` from their PATH (containerd's) unless `BinaryName` is set:
        // one link gives both the chosen runtime, Debian's runc included.
        let runc = self.runc_on_path();
        std::os::unix::fs::symlink(&self.oci_runtime_bin, &runc)
            .ctx(|| format!("linking {}", runc.display()))?;
        let cni = self.cni_conflist();
        let conf = d.join("cni/net.d/10-sturdy.conflist");
        std::fs::write(&conf, cni).ctx(|| format!("writing {}", conf.display()))?;
        std::fs::write(self.sturdy_options_path(), self.sturdy_options_toml())
            .ctx(|| "writing sturdy runtime options".into())?;
        let cfg = d.join("config.toml");
        std::fs::write(&cfg, self.config_toml()).ctx(|| format!("writing {}", cfg.display()))
    }

    fn spawn(&mut self) -> Result<()> {
        // Append: a restarted containerd must not wipe the log of the first one.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .ctx(|| "creating containerd log".into())?;
        let log2 = log.try_clone().ctx(|| "cloning log fd".into())?;
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bins.containerd);
                c
            }
            None => Command::new(&self.bins.containerd),
        };
        let child = command
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", path)
            // containerd and its shims put temporary mounts under TMPDIR; keep them ours.
            .env("TMPDIR", self.dir.join("tmp"))
            .env_remove("XDG_RUNTIME_DIR")
            // containerd looks for shims in its working directory before PATH.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: a Ctrl-C meant for the test must not race our orderly stop.
            .process_group(0)
            .spawn()
            .ctx(|| "spawning containerd (is it installed?)".into())?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("socket never appeared");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.start_error(format!("containerd exited: {status}")));
                }
            }
            if self.socket.exists() {
                match self.version().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(self.start_error(format!("no answer after {timeout:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn start_error(&self, reason: String) -> Error {
        Error::ContainerdStart {
            reason,
            log: self.log_path(),
            tail: self.log_tail(40),
        }
    }

    /// containerd's version string, via the gRPC Version service.
    pub async fn version(&self) -> Result<String> {
        let client = self.client().await?;
        let v = client
            .version()
            .version(())
            .await
            .map_err(crate::error::rpc("Version"))?;
        Ok(v.into_inner().version)
    }

    /// A containerd API client over this instance's socket.
    pub async fn client(&self) -> Result<containerd_client::Client> {
        let channel = self.channel().await?;
        Ok(containerd_client::Client::from(channel))
    }

    /// A raw tonic channel to this instance's socket (CRI and containerd services share it).
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        containerd_client::connect(&self.socket)
            .await
            .map_err(|source| Error::Connect {
                socket: self.socket.clone(),
                source,
            })
    }

    /// Import the busybox and pause images into our namespace and CRI's.
    pub async fn import_images(&self) -> Result<()> {
        let tar = self.dir.join("images/images.tar");
        let archive = image::default_archive()?;
        std::fs::write(&tar, archive).ctx(|| format!("writing {}", tar.display()))?;
        let tar_s = tar.to_string_lossy().into_owned();
        for ns in [self.namespace.as_str(), CRI_NAMESPACE] {
            self.ctr_in(ns, &["images", "import", &tar_s], Duration::from_secs(120))
                .await?;
        }
        Ok(())
    }

    /// Writes `fixture.json`, what the stale-fixture reaper needs to clean up after a test
    /// process that died without unwinding (SIGKILL, Ctrl-C of `cargo test`).
    fn write_record(&self) -> Result<()> {
        let record = serde_json::json!({
            "suffix": self.suffix,
            "pid": self.pid,
            "shim_bin": self.shim_bin,
            "oci_runtime_bin": self.oci_runtime_bin,
        });
        let path = self.dir.join("fixture.json");
        std::fs::write(&path, serde_json::to_vec(&record)?)
            .ctx(|| format!("writing {}", path.display()))
    }

    /// A fixture value for `dir` and `suffix`, with every name derived from the suffix and
    /// nothing started, locked or recorded yet.
    fn identity(dir: PathBuf, suffix: &str, shim_bin: PathBuf) -> Containerd {
        Containerd {
            namespace: format!("sturdy-{suffix}"),
            cgroup_name: format!("sturdy-{suffix}"),
            bridge: format!("stu{suffix}"),
            network: format!("sturdy-{suffix}"),
            socket: dir.join("containerd.sock"),
            shim_bin,
            generation: Generation::V1_6,
            bins: Binaries::debian(),
            extra_runtimes: Vec::new(),
            sturdy_as_runc_v2: false,
            sturdy_handler: true,
            sturdy_runc_type: false,
            sandbox_image: PAUSE_IMAGE.into(),
            registry_config_path: None,
            port_mapping: false,
            runc_binary: None,
            oci_runtime: OciRuntime::Runc1_1,
            oci_runtime_bin: PathBuf::from("/usr/sbin/runc"),
            cgroup_driver: CgroupDriver::Cgroupfs,
            env: Vec::new(),
            launcher: Vec::new(),
            dir,
            suffix: suffix.to_string(),
            child: None,
            pid: 0,
            subnet: None,
            netns: Arc::new(Mutex::new(BTreeSet::new())),
            cleaned: false,
            owner: None,
        }
    }

    /// Stops containerd (SIGTERM, by PID) and starts it again with the same config, leaving
    /// shims and containers running, as an operator restart or upgrade does.
    pub async fn restart(&mut self) -> Result<()> {
        // A blocking wait of at most 10 s; restart is only called from multi-thread tests.
        self.stop_daemon();
        let _ = std::fs::remove_file(&self.socket);
        self.spawn()?;
        self.write_record()?;
        self.wait_ready(Duration::from_secs(30)).await?;
        // containerd's API answers before CRI has recovered its pods ("server is not
        // initialized yet"); a busy machine made a test's next CRI call land in that gap.
        self.wait_cri_ready(Duration::from_secs(30)).await
    }
}

#[cfg(test)]
mod tests;
