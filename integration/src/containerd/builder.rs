//! Options of a fixture, and starting one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::FlockArg;

use super::teardown::lock_file;
use super::{
    default_shim_bin, random_suffix, reap_stale_fixtures, CgroupDriver, Containerd, Generation,
    OciRuntime, SubnetSlot,
};
use crate::error::{Error, IoContext, Result};
use crate::image::PAUSE_IMAGE;

/// Options for [`Containerd`]; `Containerd::start()` uses the defaults.
#[derive(Debug, Clone)]
pub struct Builder {
    shim_bin: PathBuf,
    import_images: bool,
    start_timeout: Duration,
    extra_runtimes: Vec<ExtraRuntime>,
    sturdy_as_runc_v2: bool,
    sturdy_handler: bool,
    sturdy_runc_type: bool,
    generation: Option<Generation>,
    oci_runtime: Option<OciRuntime>,
    cgroup_driver: Option<CgroupDriver>,
    sandbox_image: String,
    registry_config_path: Option<PathBuf>,
    port_mapping: bool,
    env: Vec<(String, String)>,
    launcher: Vec<std::ffi::OsString>,
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

impl ExtraRuntime {
    /// A handler `name` of the sturdy shim whose options file, written to `options`, makes
    /// `runc` its runc and `root` its runc root.
    pub fn sturdy_with_runc(
        name: &str,
        options: &Path,
        runc: &Path,
        root: &Path,
    ) -> Result<ExtraRuntime> {
        std::fs::write(
            options,
            format!(
                "BinaryName = \"{}\"\nRoot = \"{}\"\n",
                runc.display(),
                root.display()
            ),
        )
        .ctx(|| format!("writing {}", options.display()))?;
        Ok(ExtraRuntime {
            name: name.into(),
            runtime_type: "io.containerd.sturdy.v2".into(),
            runtime_path: None,
            options: format!("  ConfigPath = \"{}\"", options.display()),
        })
    }

    /// A handler `name` of sturdy as `sturdyctl install` registers it: `runtime_type =
    /// "io.containerd.sturdy.v2"` and no options table, so the shim gets no options (runc
    /// from PATH, runc's default root, the default sandbox record dir).
    pub fn sturdy_as_installed(name: &str) -> ExtraRuntime {
        ExtraRuntime {
            name: name.into(),
            runtime_type: "io.containerd.sturdy.v2".into(),
            runtime_path: None,
            options: String::new(),
        }
    }

    /// A handler `name` of the sturdy shim `shim` registered as `io.containerd.runc.v2` with
    /// `runtime_path`, so containerd sends it runc's own options type: what containerd
    /// needs for `hostUsers: false` pods (2.1 introspects only runc.v2 handlers; 2.2+ sets
    /// the IO owner through runc's options and refuses a `ConfigPath` handler).
    pub fn sturdy_as_runc_v2_with_runc(
        name: &str,
        shim: &Path,
        runc: &Path,
        root: &Path,
    ) -> ExtraRuntime {
        ExtraRuntime {
            runtime_path: Some(shim.to_path_buf()),
            ..ExtraRuntime::go_with_runc(name, runc, root)
        }
    }

    /// A handler `name` of the Go shim (`io.containerd.runc.v2`) running `runc` as its runc
    /// with `root` as its runc root.
    pub fn go_with_runc(name: &str, runc: &Path, root: &Path) -> ExtraRuntime {
        ExtraRuntime {
            name: name.into(),
            runtime_type: "io.containerd.runc.v2".into(),
            runtime_path: None,
            options: format!(
                "  BinaryName = \"{}\"\n  Root = \"{}\"",
                runc.display(),
                root.display()
            ),
        }
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            shim_bin: default_shim_bin(),
            import_images: true,
            start_timeout: Duration::from_secs(30),
            extra_runtimes: Vec::new(),
            sturdy_as_runc_v2: false,
            sturdy_handler: true,
            sturdy_runc_type: false,
            generation: None,
            oci_runtime: None,
            cgroup_driver: None,
            sandbox_image: PAUSE_IMAGE.into(),
            registry_config_path: None,
            port_mapping: false,
            env: Vec::new(),
            launcher: Vec::new(),
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

    /// Registers the `sturdy` handler as `runtime_type = "io.containerd.runc.v2"` with
    /// `runtime_path` naming sturdy, with runc's options (no `ConfigPath`): the registration
    /// containerd needs for `hostUsers: false` pods (docs/operations.md, "User namespaces").
    pub fn sturdy_handler_as_runc_type(mut self) -> Self {
        self.sturdy_runc_type = true;
        self
    }

    /// Leaves the `sturdy` handler out of the config and the shim off containerd's PATH, for
    /// tests where `sturdyctl install` adds both.
    pub fn without_sturdy_handler(mut self) -> Self {
        self.sturdy_handler = false;
        self
    }

    /// How long to wait for containerd to answer.
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    /// Run this containerd generation (default: [`super::GENERATION_ENV`], else 1.6).
    pub fn generation(mut self, g: Generation) -> Self {
        self.generation = Some(g);
        self
    }

    /// Run this OCI runtime under both handlers (default: [`super::RUNTIME_ENV`], else
    /// Debian's runc 1.1).
    pub fn oci_runtime(mut self, r: OciRuntime) -> Self {
        self.oci_runtime = Some(r);
        self
    }

    /// Use this cgroup driver in both handlers (default: [`super::CGROUP_DRIVER_ENV`], else
    /// cgroupfs).
    pub fn cgroup_driver(mut self, d: CgroupDriver) -> Self {
        self.cgroup_driver = Some(d);
        self
    }

    /// CRI's sandbox (pause) image (default: the locally built [`PAUSE_IMAGE`]).
    pub fn sandbox_image(mut self, reference: impl Into<String>) -> Self {
        self.sandbox_image = reference.into();
        self
    }

    /// CRI's registry `config_path`: a dir of `<registry>/hosts.toml` files.
    pub fn registry_config_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.registry_config_path = Some(dir.into());
        self
    }

    /// Adds the `portmap` CNI plugin, so pods' host ports work (it installs iptables rules
    /// on the host for as long as such a pod lives).
    pub fn port_mapping(mut self) -> Self {
        self.port_mapping = true;
        self
    }

    /// Sets an environment variable of containerd, and so of the shims it starts (e.g. a
    /// test-only fault hook of the debug shim).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts containerd through this command prefix, which must exec it in place (so its PID
    /// stays containerd's), e.g. `nsenter --target PID --mount --net --`: how a Kubernetes
    /// node runs containerd in the namespaces its kubelet lives in.
    pub fn launcher<S: Into<std::ffi::OsString>>(
        mut self,
        prefix: impl IntoIterator<Item = S>,
    ) -> Self {
        self.launcher = prefix.into_iter().map(Into::into).collect();
        self
    }

    /// Create the temp dir, write the config, start containerd and import the images.
    pub async fn start(self) -> Result<Containerd> {
        let generation = match self.generation {
            Some(g) => g,
            None => Generation::from_env()?,
        };
        let oci_runtime = match self.oci_runtime {
            Some(r) => r,
            None => OciRuntime::from_env()?,
        };
        let cgroup_driver = match self.cgroup_driver {
            Some(d) => d,
            None => CgroupDriver::from_env()?,
        };
        // Before anything exists: a generation, runtime or driver this host cannot run
        // leaves nothing behind.
        if let Some(why) = cgroup_driver.unavailable() {
            return Err(Error::Unexpected(why));
        }
        let bins = generation.binaries()?;
        let oci_runtime_bin = oci_runtime.binary()?;
        reap_stale_fixtures();
        let dir = tempfile::Builder::new()
            .prefix("sturdy-test-")
            .tempdir_in(fixture_base()?)
            .ctx(|| "creating temp dir".into())?
            // Drop owns removal: it has to unmount first, which TempDir would not.
            .keep();
        let suffix = random_suffix();
        let mut fx = Containerd::identity(dir, &suffix, self.shim_bin.clone());
        fx.generation = generation;
        fx.bins = bins;
        fx.oci_runtime = oci_runtime;
        fx.oci_runtime_bin = oci_runtime_bin;
        fx.cgroup_driver = cgroup_driver;
        fx.extra_runtimes = self.extra_runtimes;
        fx.sturdy_as_runc_v2 = self.sturdy_as_runc_v2;
        fx.sturdy_handler = self.sturdy_handler;
        fx.sturdy_runc_type = self.sturdy_runc_type;
        fx.sandbox_image = self.sandbox_image;
        fx.registry_config_path = self.registry_config_path;
        fx.port_mapping = self.port_mapping;
        fx.env = self.env;
        fx.launcher = self.launcher;
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

/// Overrides where fixtures are created (default [`DEFAULT_FIXTURE_BASE`]).
pub const FIXTURE_BASE_ENV: &str = "STURDY_TEST_TMPDIR";
/// Where fixtures are created unless [`FIXTURE_BASE_ENV`] says otherwise.
const DEFAULT_FIXTURE_BASE: &str = "/var/lib/sturdy-test";

/// The directory fixtures are created in, made (0755, root's) if missing. Not TMPDIR: the
/// watchdog runs a shim binary only from directories no one but root can change, which
/// rules out anything under the world-writable /tmp, and a fixture's `bin/` holds the
/// shims containerd runs. Not 0700 either: a container in a user namespace (its root an
/// unprivileged host uid) must reach its rootfs below it, as under /var/lib/containerd.
pub fn fixture_base() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let base = std::env::var_os(FIXTURE_BASE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FIXTURE_BASE));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&base)
        .ctx(|| format!("creating {}", base.display()))?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod 0755 {}", base.display()))?;
    Ok(base)
}
