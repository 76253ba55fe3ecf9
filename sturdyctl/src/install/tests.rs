use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::*;
use crate::host::{Host, ScriptedRunner};
use crate::trust::Untrusted;

const SHIM_V: &str = "containerd-shim-sturdy-v2:\n  Version:  0.1.0\n  Runtime:  io.containerd.sturdy.v2 (Rust, wraps runc)\n";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/containerd")
            .join(name),
    )
    .unwrap()
}

const NOBODY: u32 = 65534;

/// A scratch directory only root can change, as install demands of where it writes (/tmp is
/// world-writable, so nothing under it could ever be trusted). The suite runs as root, which
/// owns /run.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sturdy-install-")
        .tempdir_in("/run")
        .expect("a scratch dir in /run (the tests run as root)");
    crate::trust::directory(dir.path()).expect("the scratch dir is trusted");
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    opts: Options,
    runner: ScriptedRunner,
}

impl Setup {
    /// A config from `fixture`, a shim built from `shim_bytes_of` (any binary) and a sturdyctl.
    fn new(config: &str, shim_bytes_of: &str) -> Setup {
        let dir = scratch();
        let etc = dir.path().join("etc/containerd");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("config.toml"), fixture(config)).unwrap();
        let src = dir.path().join("image");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::copy(shim_bytes_of, src.join(SHIM_BINARY)).unwrap();
        std::fs::write(src.join("sturdyctl"), b"sturdyctl bytes").unwrap();
        let opts = Options {
            host_root: "/".into(),
            config: etc.join("config.toml"),
            bin_dir: dir.path().join("usr/local/bin"),
            shim: src.join(SHIM_BINARY),
            sturdyctl: Some(src.join("sturdyctl")),
            handler: "sturdy".into(),
            dry_run: false,
            force: false,
        };
        Setup {
            dir,
            opts,
            runner: ScriptedRunner::new().with(SHIM_BINARY, SHIM_V),
        }
    }

    fn config(&self) -> String {
        std::fs::read_to_string(&self.opts.config).unwrap()
    }

    fn installed(&self, name: &str) -> PathBuf {
        self.opts.bin_dir.join(name)
    }

    fn install(&self) -> Result<Outcome, InstallError> {
        install(&self.opts, &self.runner)
    }

    fn uninstall(&self) -> Result<Outcome, InstallError> {
        uninstall(&self.opts, &Host::system().processes())
    }
}

fn actions(o: &Outcome) -> Vec<Action> {
    o.binaries.iter().map(|b| b.action).collect()
}

#[test]
fn install_then_uninstall_round_trips_and_both_are_idempotent() {
    for config in ["1.6-default.toml", "2.1-default.toml", "commented-v2.toml"] {
        let s = Setup::new(config, "/bin/true");
        std::fs::set_permissions(&s.opts.config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let first = s.install().unwrap();
        assert_eq!(
            actions(&first),
            [Action::Installed, Action::Installed],
            "{config}"
        );
        assert!(first.config_changed && first.restart_needed, "{config}");
        assert!(
            first.diff.contains("+  ") && first.diff.contains("runtimes.sturdy]"),
            "{config}: {}",
            first.diff
        );
        assert!(first
            .diff
            .starts_with(&format!("--- {}", s.opts.config.display())));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.opts.config), 0o600, "config mode kept");
        assert_eq!(mode(&s.installed(SHIM_BINARY)), 0o755);
        assert_eq!(
            std::fs::read(s.installed(SHIM_BINARY)).unwrap(),
            std::fs::read("/bin/true").unwrap()
        );

        let again = s.install().unwrap();
        assert_eq!(actions(&again), [Action::Unchanged, Action::Unchanged]);
        assert!(!again.config_changed && !again.restart_needed && again.diff.is_empty());

        let removed = s.uninstall().unwrap();
        assert_eq!(actions(&removed), [Action::Removed, Action::Removed]);
        assert!(removed.config_changed && removed.restart_needed);
        assert_eq!(
            s.config(),
            fixture(config),
            "{config}: not restored byte for byte"
        );
        let none = s.uninstall().unwrap();
        assert_eq!(actions(&none), [Action::Absent, Action::Absent]);
        assert!(!none.config_changed && none.diff.is_empty());
        // Nothing but the files we put there is left in the bin dir (no temp files).
        assert_eq!(std::fs::read_dir(&s.opts.bin_dir).unwrap().count(), 0);
    }
}

#[test]
fn dry_run_reports_and_writes_nothing() {
    let mut s = Setup::new("1.7-default.toml", "/bin/true");
    s.opts.dry_run = true;
    let o = s.install().unwrap();
    assert!(o.dry_run && o.config_changed && !o.diff.is_empty());
    assert_eq!(actions(&o), [Action::Installed, Action::Installed]);
    assert_eq!(s.config(), fixture("1.7-default.toml"));
    assert!(!s.opts.bin_dir.exists());
}

#[test]
fn a_wrong_shim_or_a_missing_config_changes_nothing() {
    let mut s = Setup::new("commented-v3.toml", "/bin/true");
    s.runner =
        ScriptedRunner::new().with(SHIM_BINARY, "containerd-shim-runc-v2:\n  Version: 1.7.29\n");
    let err = s.install().unwrap_err();
    assert!(matches!(err, InstallError::NotSturdyShim { .. }), "{err}");
    assert_eq!(s.config(), fixture("commented-v3.toml"));
    assert!(!s.opts.bin_dir.exists());

    std::fs::remove_file(&s.opts.config).unwrap();
    let err = Setup::install(&s).unwrap_err();
    assert!(
        err.to_string().contains("containerd config default"),
        "{err}"
    );
}

#[test]
fn a_symlinked_config_is_edited_where_it_points() {
    let s = Setup::new("minimal-v2.toml", "/bin/true");
    let real = s.dir.path().join("managed.toml");
    std::fs::rename(&s.opts.config, &real).unwrap();
    std::os::unix::fs::symlink(&real, &s.opts.config).unwrap();
    s.install().unwrap();
    assert!(std::fs::symlink_metadata(&s.opts.config)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&real)
        .unwrap()
        .contains("runtimes.sturdy]"));
}

/// Kills and reaps the child on drop, so a failing test leaks no process.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_running_shim_keeps_its_binary_and_blocks_uninstall() {
    let s = Setup::new("1.6-default.toml", "/bin/sleep");
    s.install().unwrap();
    let mut shim = Running(
        Command::new(s.installed(SHIM_BINARY))
            .arg("1000")
            .spawn()
            .unwrap(),
    );
    let pid = shim.0.id() as i32;
    // A newer shim replaces the file; the running one keeps the old inode.
    let newer = s.dir.path().join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::copy("/bin/true", newer.join(SHIM_BINARY)).unwrap();
    let mut opts = s.opts.clone();
    opts.shim = newer.join(SHIM_BINARY);
    let o = install(&opts, &s.runner).unwrap();
    assert_eq!(o.binaries[0].action, Action::Replaced);
    assert!(
        shim.0.try_wait().unwrap().is_none(),
        "the old shim was disturbed"
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.to_string_lossy().ends_with(" (deleted)"), "{exe:?}");

    let err = s.uninstall().unwrap_err();
    assert!(
        matches!(&err, InstallError::ShimsRunning { pids, .. } if pids == &[pid]),
        "{err}"
    );
    assert!(
        s.config().contains("runtimes.sturdy]"),
        "refused uninstall changed the config"
    );
    assert!(s.installed(SHIM_BINARY).exists());

    let mut forced = s.opts.clone();
    forced.force = true;
    let o = uninstall(&forced, &Host::system().processes()).unwrap();
    assert!(
        o.notes.iter().any(|n| n.contains(&pid.to_string())),
        "{:?}",
        o.notes
    );
    assert_eq!(s.config(), fixture("1.6-default.toml"));
    drop(shim);
}

/// L19: install writes only where only root can write: a bin dir or a config directory
/// others may change (by mode or owner), or under one, is refused before anything changes.
#[test]
fn directories_others_can_change_are_refused() {
    let s = Setup::new("1.7-default.toml", "/bin/true");
    let unchanged = |s: &Setup| {
        assert_eq!(s.config(), fixture("1.7-default.toml"));
        assert!(!s.installed(SHIM_BINARY).exists());
    };
    let bin = s.opts.bin_dir.clone();
    std::fs::create_dir_all(&bin).unwrap();
    chmod(&bin, 0o777);
    let err = s.install().unwrap_err();
    assert!(
        matches!(&err, InstallError::Untrusted { what: "--bin-dir", source: Untrusted::Writable { path, mode: 0o777 }, .. } if path == &bin),
        "{err}"
    );
    unchanged(&s);
    chmod(&bin, 0o755);
    std::os::unix::fs::chown(&bin, Some(NOBODY), None).unwrap();
    let err = s.install().unwrap_err();
    assert!(
        matches!(
            &err,
            InstallError::Untrusted {
                what: "--bin-dir",
                source: Untrusted::Owner { uid: NOBODY, .. },
                ..
            }
        ),
        "{err}"
    );
    unchanged(&s);
    // Not there yet, under a directory others may write: not created either.
    std::fs::remove_dir(&bin).unwrap();
    let local = bin.parent().unwrap();
    chmod(local, 0o1777);
    let err = s.install().unwrap_err();
    assert!(
        matches!(&err, InstallError::Untrusted { what: "--bin-dir", source: Untrusted::Writable { path, .. }, .. } if path == local),
        "{err}"
    );
    assert!(!bin.exists());
    chmod(local, 0o755);
    // The config's directory.
    let etc = s.opts.config.parent().unwrap();
    chmod(etc, 0o775);
    let err = s.install().unwrap_err();
    assert!(
        matches!(
            &err,
            InstallError::Untrusted {
                what: "the config's directory",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("chmod go-w"), "{err}");
    unchanged(&s);
    chmod(etc, 0o755);
    s.install().unwrap();
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Everything under /tmp (world-writable) is refused: nothing there is root's alone.
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = s.opts.clone();
    opts.bin_dir = tmp.path().join("bin");
    let err = install(&opts, &s.runner).unwrap_err();
    assert!(matches!(err, InstallError::Untrusted { .. }), "{err}");
}

/// L19: in a container the host's tree is mounted under a root; a config.toml that is an
/// absolute symlink on the host is followed on the host, not in the container. (The host
/// paths exist on no real machine: resolved outside the root they fail rather than touch
/// this machine's files.)
#[test]
fn a_symlinked_config_resolves_under_the_host_root() {
    let s = Setup::new("minimal-v2.toml", "/bin/true");
    let host = s.dir.path().join("host");
    let etc = host.join("etc/sturdy-test-containerd");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(host.join("etc/sturdy-test-k8s")).unwrap();
    let real = host.join("etc/sturdy-test-k8s/containerd.toml");
    std::fs::copy(&s.opts.config, &real).unwrap();
    std::os::unix::fs::symlink(
        "/etc/sturdy-test-k8s/containerd.toml",
        etc.join("config.toml"),
    )
    .unwrap();
    let opts = Options {
        host_root: host.clone(),
        config: "/etc/sturdy-test-containerd/config.toml".into(),
        bin_dir: "/opt/sturdy-test/bin".into(),
        ..s.opts.clone()
    };
    let o = install(&opts, &s.runner).unwrap();
    assert!(std::fs::read_to_string(&real)
        .unwrap()
        .contains("runtimes.sturdy]"));
    assert!(std::fs::symlink_metadata(etc.join("config.toml"))
        .unwrap()
        .file_type()
        .is_symlink());
    let installed = host.join("opt/sturdy-test/bin").join(SHIM_BINARY);
    assert!(installed.is_file());
    assert_eq!(o.config, opts.config);
    assert_eq!(o.binaries[0].path, opts.bin_dir.join(SHIM_BINARY));
    let u = uninstall(&opts, &[]).unwrap();
    assert_eq!(actions(&u), [Action::Removed, Action::Removed]);
    assert!(!installed.exists());
    assert!(!std::fs::read_to_string(&real)
        .unwrap()
        .contains("runtimes.sturdy]"));
}

/// L18: a process of another user running the installed shim binary is no shim of
/// containerd and does not block an uninstall.
#[test]
fn a_user_running_the_shim_binary_does_not_block_uninstall() {
    let s = Setup::new("1.6-default.toml", "/bin/sleep");
    s.install().unwrap();
    // nobody must reach the binary.
    chmod(s.dir.path(), 0o755);
    let user = Running(
        Command::new(s.installed(SHIM_BINARY))
            .arg("1000")
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .unwrap(),
    );
    // spawn returns once the exec happened.
    let pid = user.0.id() as i32;
    assert_eq!(
        crate::procfs::exe(pid).unwrap(),
        s.installed(SHIM_BINARY),
        "pid {pid}"
    );
    let o = s.uninstall().unwrap();
    assert_eq!(actions(&o), [Action::Removed, Action::Removed]);
    drop(user);
}
