//! A private containerd per test: own root, state, sockets, CNI network, runc root and cgroup.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::cleanup;
use crate::error::{Error, IoContext, Result};
use crate::image::{self, PAUSE_IMAGE};
use crate::Handler;

/// CRI's fixed containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Name of the shim binary containerd looks up on its PATH for `io.containerd.sturdy.v2`.
pub const SHIM_BINARY: &str = "containerd-shim-sturdy-v2";
/// The whole pod network; each fixture gets one /28 of it.
pub const POD_NETWORK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Number of /28 slices in the /24, i.e. how many fixtures may run pods at once.
pub const SUBNET_SLOTS: usize = 16;

/// Where the sturdy shim is taken from when the builder is not told: `STURDY_SHIM_BIN`, else
/// `$CARGO_TARGET_DIR/debug/…`, else `<workspace>/target/debug/…`.
pub fn default_shim_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STURDY_SHIM_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("debug").join(SHIM_BINARY)
}

/// Root of the cargo workspace this crate was built in.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

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

/// TOML basic string of a value (JSON string syntax is valid TOML for our paths).
fn q(s: impl AsRef<str>) -> String {
    serde_json::Value::String(s.as_ref().to_string()).to_string()
}

fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

/// One /28 of the pod network, held via an flock for as long as the fixture lives.
///
/// flock rather than a counter file: the kernel drops the lock when a test process dies, so
/// a crashed run can never leak a slot.
#[derive(Debug)]
pub struct SubnetSlot {
    index: usize,
    _lock: Flock<File>,
}

impl SubnetSlot {
    fn acquire() -> Result<SubnetSlot> {
        let dir = std::env::temp_dir().join("sturdy-subnet-locks");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        // Start at a pseudo-random slot so parallel fixtures rarely contend on the same file.
        let start = std::process::id() as usize;
        for i in 0..SUBNET_SLOTS {
            let index = (start + i) % SUBNET_SLOTS;
            let path = dir.join(format!("slot-{index}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ctx(|| format!("opening {}", path.display()))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(SubnetSlot { index, _lock: lock });
            }
        }
        Err(Error::NoSubnetSlot(SUBNET_SLOTS))
    }

    /// First address of the slice.
    pub fn network(&self) -> Ipv4Addr {
        let base = u32::from(POD_NETWORK) + (self.index as u32) * 16;
        Ipv4Addr::from(base)
    }

    /// The bridge's (gateway) address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    /// CIDR notation of the slice.
    pub fn cidr(&self) -> String {
        format!("{}/28", self.network())
    }

    /// True if `ip` lies inside this slice.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & !0xf == u32::from(self.network())
    }
}

/// Options for [`Containerd`]; `Containerd::start()` uses the defaults.
#[derive(Debug, Clone)]
pub struct Builder {
    shim_bin: PathBuf,
    import_images: bool,
    start_timeout: Duration,
    extra_runtimes: Vec<ExtraRuntime>,
    sturdy_as_runc_v2: bool,
}

/// An additional CRI runtime handler written into the fixture's config.
#[derive(Debug, Clone)]
pub struct ExtraRuntime {
    /// Handler name (`runtime_handler` in RunPodSandbox).
    pub name: String,
    /// containerd runtime type, e.g. `io.containerd.runc.v2`.
    pub runtime_type: String,
    /// Shim binary path (`runtime_path`), if not found by name.
    pub runtime_path: Option<PathBuf>,
    /// Lines of the `options` table, verbatim TOML.
    pub options: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            shim_bin: default_shim_bin(),
            import_images: true,
            start_timeout: Duration::from_secs(30),
            extra_runtimes: Vec::new(),
            sturdy_as_runc_v2: false,
        }
    }
}

impl Builder {
    /// Use this sturdy shim binary (it may be missing; only sturdy runs need it).
    pub fn shim_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.shim_bin = path.into();
        self
    }

    /// Skip importing the busybox and pause images.
    pub fn without_images(mut self) -> Self {
        self.import_images = false;
        self
    }

    /// Adds a CRI runtime handler beyond `runc` and `sturdy`.
    pub fn runtime(mut self, runtime: ExtraRuntime) -> Self {
        self.extra_runtimes.push(runtime);
        self
    }

    /// Installs sturdy as a drop-in `containerd-shim-runc-v2` on this containerd's PATH, so
    /// `io.containerd.runc.v2` runtimes (and the runc options encoding) reach sturdy.
    pub fn sturdy_as_runc_v2(mut self) -> Self {
        self.sturdy_as_runc_v2 = true;
        self
    }

    /// How long to wait for containerd to answer.
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    /// Create the temp dir, write the config, start containerd and import the images.
    pub async fn start(self) -> Result<Containerd> {
        reap_stale_fixtures();
        let dir = tempfile::Builder::new()
            .prefix("sturdy-test-")
            .tempdir()
            .ctx(|| "creating temp dir".into())?
            // Drop owns removal: it has to unmount first, which TempDir would not.
            .keep();
        let suffix = random_suffix();
        let mut fx = Containerd::identity(dir, &suffix, self.shim_bin.clone());
        fx.extra_runtimes = self.extra_runtimes.clone();
        fx.sturdy_as_runc_v2 = self.sturdy_as_runc_v2;
        // From here on Drop cleans whatever got created if a later step fails.
        fx.owner = Some(lock_file(
            &fx.dir.join("owner.lock"),
            FlockArg::LockExclusive,
        )?);
        fx.subnet = Some(SubnetSlot::acquire()?);
        fx.prepare()?;
        fx.spawn()?;
        fx.write_record()?;
        fx.wait_ready(self.start_timeout).await?;
        if self.import_images {
            fx.import_images().await?;
        }
        Ok(fx)
    }
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
    extra_runtimes: Vec<ExtraRuntime>,
    sturdy_as_runc_v2: bool,
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
    /// `ConfigPath`); it holds `Root = "<runc_root>"`.
    pub fn sturdy_options_path(&self) -> PathBuf {
        self.dir.join("sturdy-runtime.toml")
    }

    /// cgroup parent of CRI pods (and ctr containers live under `/<namespace>`): one name per
    /// instance so cleanup can remove the whole subtree.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.cgroup_name)
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
        ] {
            let p = d.join(sub);
            std::fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        // A symlink keeps `cargo build` updates visible; a missing target only hurts sturdy runs.
        let link = self.shim_on_path();
        std::os::unix::fs::symlink(&self.shim_bin, &link)
            .ctx(|| format!("linking {}", link.display()))?;
        if self.sturdy_as_runc_v2 {
            // containerd 1.6 finds shims with a PATH lookup first, so ours shadows the Go one.
            let link = d.join("bin").join("containerd-shim-runc-v2");
            std::os::unix::fs::symlink(&self.shim_bin, &link)
                .ctx(|| format!("linking {}", link.display()))?;
        }
        let cni = self.cni_conflist();
        let conf = d.join("cni/net.d/10-sturdy.conflist");
        std::fs::write(&conf, cni).ctx(|| format!("writing {}", conf.display()))?;
        let opts = format!("Root = {}\n", qp(&self.runc_root()));
        std::fs::write(self.sturdy_options_path(), opts)
            .ctx(|| "writing sturdy runtime options".into())?;
        let cfg = d.join("config.toml");
        std::fs::write(&cfg, self.config_toml()).ctx(|| format!("writing {}", cfg.display()))
    }

    /// The CNI network: our own bridge on our /28, IPAM state kept in the temp dir.
    pub fn cni_conflist(&self) -> String {
        let slot = self.subnet();
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.network,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": slot.cidr(), "gateway": slot.gateway().to_string()}]],
                    "dataDir": self.dir.join("cni/ipam"),
                },
            }],
        })
        .to_string()
    }

    /// containerd config.toml (version 2) confining everything to the temp dir.
    pub fn config_toml(&self) -> String {
        let d = &self.dir;
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let mut runtimes = String::new();
        for h in Handler::ALL {
            runtimes.push_str(&format!(
                "\n[{cri}.containerd.runtimes.{name}]\n  runtime_type = {rt}\n\
                 [{cri}.containerd.runtimes.{name}.options]\n  Root = {root}\n",
                name = h.name(),
                rt = q(h.runtime_type()),
                root = qp(&self.runc_root()),
            ));
            if h == Handler::Sturdy {
                // containerd 1.6 passes non-runc runtime types only TypeUrl/ConfigPath.
                runtimes.push_str(&format!(
                    "  ConfigPath = {}\n",
                    qp(&self.sturdy_options_path())
                ));
            }
        }
        for extra in &self.extra_runtimes {
            runtimes.push_str(&format!(
                "\n[{cri}.containerd.runtimes.{name}]\n  runtime_type = {rt}\n",
                name = extra.name,
                rt = q(&extra.runtime_type),
            ));
            if let Some(path) = &extra.runtime_path {
                runtimes.push_str(&format!("  runtime_path = {}\n", qp(path)));
            }
            runtimes.push_str(&format!(
                "[{cri}.containerd.runtimes.{name}.options]\n{opts}\n",
                name = extra.name,
                opts = extra.options,
            ));
        }
        format!(
            r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[debug]
  address = {debug}
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[{cri}]
  sandbox_image = {pause}
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = {cni_conf}
  max_conf_num = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{runtimes}"#,
            root = qp(&d.join("root")),
            state = qp(&d.join("state")),
            sock = qp(&self.socket),
            ttrpc = qp(&d.join("containerd.sock.ttrpc")),
            debug = qp(&d.join("debug.sock")),
            opt = qp(&d.join("opt")),
            pause = q(PAUSE_IMAGE),
            cni_conf = qp(&d.join("cni/net.d")),
        )
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
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            // containerd and its shims put temporary mounts under TMPDIR; keep them ours.
            .env("TMPDIR", self.dir.join("tmp"))
            .env_remove("XDG_RUNTIME_DIR")
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
        let mut cgroups = cleanup::cgroup_dirs(&self.cgroup_name);
        cgroups.extend(cleanup::cgroup_dirs(&self.namespace));
        Footprint {
            containerd_pid: self.pid,
            shim_pids: shim_pids.into_iter().collect(),
            container_pids,
            mounts: cleanup::mounts_under(&self.dir),
            netns: netns.into_iter().collect(),
            bridge: self.bridge.clone(),
            cgroups,
            shim_sockets: bundles
                .iter()
                .filter_map(|b| b.address.as_deref().and_then(cleanup::socket_from_address))
                .collect(),
            dir: self.dir.clone(),
        }
    }

    /// Persist what teardown needs, so a later fixture can reap this one if our process dies
    /// without unwinding (SIGKILL, Ctrl-C of `cargo test`).
    fn write_record(&self) -> Result<()> {
        let record = serde_json::json!({
            "suffix": self.suffix,
            "pid": self.pid,
            "shim_bin": self.shim_bin,
        });
        let path = self.dir.join("fixture.json");
        std::fs::write(&path, serde_json::to_vec(&record)?)
            .ctx(|| format!("writing {}", path.display()))
    }

    /// The task bundle of container `id` in namespace `ns`, if containerd has one.
    pub fn bundle(&self, ns: &str, id: &str) -> Option<cleanup::Bundle> {
        let mut b = cleanup::bundles(&self.state_dir())
            .into_iter()
            .find(|b| b.namespace == ns && b.id == id)?;
        if b.shim_pid.is_none() {
            b.shim_pid = self.shim_pid(ns, id);
        }
        Some(b)
    }

    /// The binary a task of `handler` must be served by (resolved through symlinks).
    pub fn expected_shim_exe(&self, handler: Handler) -> PathBuf {
        let bin = match handler {
            Handler::Runc => PathBuf::from("/usr/bin/containerd-shim-runc-v2"),
            Handler::Sturdy => self.shim_bin.clone(),
        };
        std::fs::canonicalize(&bin).unwrap_or(bin)
    }

    /// The executable of the shim serving task `id` in `ns`, if one is running.
    pub fn shim_exe(&self, ns: &str, id: &str) -> Option<PathBuf> {
        let pid = self.bundle(ns, id)?.shim_pid?;
        std::fs::read_link(format!("/proc/{pid}/exe")).ok()
    }

    /// PID of the shim started for task `id` in `ns`, found by its command line (the Go
    /// shim keeps no `shim.pid` in the bundle). Grouped CRI containers share their sandbox's
    /// shim, so pass the sandbox id for those.
    pub fn shim_pid(&self, ns: &str, id: &str) -> Option<i32> {
        cleanup::pids_referencing(&self.socket)
            .into_iter()
            .filter(|p| *p != self.pid)
            .find(|p| {
                let raw = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                let has = |flag: &str, value: &str| {
                    args.windows(2)
                        .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
                };
                has("-namespace", ns) && has("-id", id)
            })
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
            extra_runtimes: Vec::new(),
            sturdy_as_runc_v2: false,
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

    /// Stops the containerd process this fixture started: SIGTERM by PID, SIGKILL after 10 s.
    fn stop_daemon(&mut self) {
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

    /// Stops containerd (SIGTERM, by PID) and starts it again with the same config, leaving
    /// shims and containers running, as an operator restart or upgrade does.
    pub async fn restart(&mut self) -> Result<()> {
        // A blocking wait of at most 10 s; restart is only called from multi-thread tests.
        self.stop_daemon();
        let _ = std::fs::remove_file(&self.socket);
        self.spawn()?;
        self.write_record()?;
        self.wait_ready(Duration::from_secs(30)).await
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
                cleanup::runc_force_delete("runc", &root, &id);
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
        let mut netns = before.netns.clone();
        netns.extend(
            cleanup::bundles(&self.state_dir())
                .into_iter()
                .filter_map(|b| b.netns),
        );
        for ns in &netns {
            cleanup::remove_netns(ns);
        }
        cleanup::remove_link(&self.bridge);
        for name in [&self.cgroup_name, &self.namespace] {
            for cg in cleanup::cgroup_dirs(name) {
                cleanup::remove_cgroup_tree(&cg);
            }
        }
        for sock in &before.shim_sockets {
            let _ = std::fs::remove_file(sock);
        }
        // libcni caches results outside our dir, keyed by network name.
        for name in cleanup::read_dir_names(Path::new("/var/lib/cni/results")) {
            if name.starts_with(&format!("{}-", self.network)) {
                let _ = std::fs::remove_file(Path::new("/var/lib/cni/results").join(name));
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

fn lock_file(path: &Path, arg: FlockArg) -> Result<Flock<File>> {
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

/// Tear down fixtures whose test process died without running Drop.
///
/// A live fixture holds an flock on its `owner.lock`; if we can take it, the owner is gone
/// (the kernel dropped its lock), and whoever holds the lock does the cleanup, so two
/// reapers never work on the same dir. Dirs without `fixture.json` are still being set up.
pub fn reap_stale_fixtures() -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    let mut reaped = Vec::new();
    for name in cleanup::read_dir_names(&tmp) {
        if !name.starts_with("sturdy-test-") {
            continue;
        }
        let dir = tmp.join(&name);
        let Ok(raw) = std::fs::read(dir.join("fixture.json")) else {
            continue;
        };
        let Ok(lock) = lock_file(&dir.join("owner.lock"), FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&raw) else {
            continue;
        };
        let Some(suffix) = rec["suffix"].as_str() else {
            continue;
        };
        eprintln!(
            "sturdy-integration: reaping fixture {} left by a dead test process",
            dir.display()
        );
        let mut fx = Containerd::identity(
            dir.clone(),
            suffix,
            PathBuf::from(rec["shim_bin"].as_str().unwrap_or_default()),
        );
        // Not our child: its command line names our dir, so the PID scan kills it.
        fx.pid = rec["pid"].as_i64().unwrap_or(0) as i32;
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

    #[test]
    fn subnet_slots_are_disjoint_slices_of_the_pod_network() {
        let a = SubnetSlot::acquire().unwrap();
        let b = SubnetSlot::acquire().unwrap();
        assert_ne!(a.index, b.index, "a held slot was handed out twice");
        for s in [&a, &b] {
            assert_eq!(s.network().octets()[..3], [198, 18, 0]);
            assert_eq!(s.network().octets()[3] % 16, 0);
            assert!(s.contains(s.gateway()));
            assert!(!s.contains(Ipv4Addr::from(u32::from(s.network()) + 16)));
        }
        assert!(!a.contains(b.gateway()));
        let index = a.index;
        drop(a);
        // Released on drop: the same slot can be taken again.
        let mut held = Vec::new();
        while let Ok(s) = SubnetSlot::acquire() {
            let found = s.index == index;
            held.push(s);
            if found {
                return;
            }
        }
        panic!("slot {index} was not released: {held:?}");
    }

    #[test]
    fn config_keeps_everything_in_the_temp_dir() {
        let mut fx = Containerd::identity(
            PathBuf::from("/tmp/sturdy-test-unit"),
            "0123abcd",
            PathBuf::from("/nonexistent"),
        );
        // Nothing was started: Drop has nothing to clean.
        fx.cleaned = true;
        // A lock on a private file: this test must not take one of the shared slots.
        fx.subnet = Some(SubnetSlot {
            index: 3,
            _lock: Flock::lock(tempfile::tempfile().unwrap(), FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .unwrap(),
        });
        let cfg = fx.config_toml();
        for key in ["root", "state"] {
            let line = cfg
                .lines()
                .find(|l| l.starts_with(&format!("{key} =")))
                .unwrap();
            assert!(line.contains("/tmp/sturdy-test-unit/"), "{line}");
        }
        for want in [
            "restrict_oom_score_adj = true",
            "sandbox_image = \"sturdy.local/pause:3\"",
            "runtime_type = \"io.containerd.runc.v2\"",
            "runtime_type = \"io.containerd.sturdy.v2\"",
            "default_runtime_name = \"runc\"",
            "Root = \"/tmp/sturdy-test-unit/runc\"",
        ] {
            assert!(cfg.contains(want), "missing {want}");
        }
        let cni: serde_json::Value = serde_json::from_str(&fx.cni_conflist()).unwrap();
        let bridge = &cni["plugins"][0];
        assert_eq!(bridge["bridge"], "stu0123abcd");
        assert_eq!(bridge["ipMasq"], false);
        assert!(bridge["bridge"].as_str().unwrap().len() <= 15);
        let range = &bridge["ipam"]["ranges"][0][0];
        assert_eq!(range["subnet"], "198.18.0.48/28");
        assert_eq!(range["gateway"], "198.18.0.49");
    }
}
