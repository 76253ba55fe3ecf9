//! Every check against fixture trees and canned command output.

mod config;
mod trust;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use super::*;
use crate::host::{RunError, ScriptedRunner, ScriptedTrust};
use crate::journal::{lock_path, Entry, Journal, Phase, DEFAULT_MAX_BYTES};

const CONFIG: &str = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.sturdy]
  runtime_type = "io.containerd.sturdy.v2"
"#;
/// PID 1 of the fixture is systemd on cgroup v2: both runtimes use its driver.
const SYSTEMD_OPTIONS: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.sturdy.options]
  SystemdCgroup = true
"#;
const RUNC_OK: &str = "runc version 1.2.8\ncommit: v1.2.8-0-gdeadbee\nspec: 1.2.1\n";
const CONTAINERD_OK: &str =
    "containerd github.com/containerd/containerd v1.7.29 442cb34bda9a6a0fed82a2ca7cade05c5c749582\n";
const SHIM_OK: &str = "containerd-shim-sturdy-v2:\n  Version:  0.1.0\n  Revision: abc\n  \
                       Runtime:  io.containerd.sturdy.v2 (Rust, wraps runc)\n";
const MOUNTS_V2: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
31 27 0:28 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n\
40 27 0:30 / /run rw - tmpfs tmpfs rw\n";

/// containerd's pid in the fixture and the PATH it runs with.
const CONTAINERD_PID: i32 = 7;
const CONTAINERD_PATH: &str = "/usr/local/bin:/usr/bin:/usr/sbin";

/// A fixture node: a healthy one unless a test changes it.
struct Node {
    dir: tempfile::TempDir,
    runner: ScriptedRunner,
    opts: Options,
    /// Node paths other users may change.
    untrusted: Vec<&'static str>,
}

impl Node {
    fn new() -> Node {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
            runner: ScriptedRunner::new()
                .with("runc", RUNC_OK)
                .with("containerd", CONTAINERD_OK)
                .with("containerd-shim-sturdy-v2", SHIM_OK)
                .with("criu", "Version: 3.17.1\n"),
            opts: Options {
                sturdyctl_version: "0.1.0".into(),
                listener: Some(Ok(Peer {
                    pid: CONTAINERD_PID,
                    uid: 0,
                })),
                ..Options::default()
            },
            untrusted: Vec::new(),
        };
        node.file(
            "/etc/containerd/config.toml",
            &format!("{CONFIG}{SYSTEMD_OPTIONS}"),
        );
        node.file("/proc/sys/fs/pipe-user-pages-soft", "16384\n");
        node.file("/proc/self/mountinfo", MOUNTS_V2);
        node.file("/proc/1/comm", "systemd\n");
        // Booted an hour from now: containerd started after the config was written.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        node.file("/proc/stat", &format!("cpu 1 2 3\nbtime {}\n", now + 3600));
        for bin in ["/usr/bin/containerd", "/usr/sbin/runc", "/usr/sbin/criu"] {
            node.exe(bin);
        }
        node.exe("/usr/local/bin/containerd-shim-sturdy-v2");
        std::fs::create_dir_all(node.path("/var/lib/sturdy")).unwrap();
        node.process(
            CONTAINERD_PID,
            &["/usr/bin/containerd"],
            Some(CONTAINERD_PATH),
            0,
            &[],
        );
        node
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    fn file(&self, p: &str, content: &str) {
        let p = self.path(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn exe(&self, p: &str) {
        self.file(p, "");
        std::fs::set_permissions(self.path(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn remove(&self, p: &str) {
        std::fs::remove_file(self.path(p)).unwrap();
    }

    /// A process in the fixture's /proc (replacing one of that pid).
    fn process(&self, pid: i32, cmdline: &[&str], path_env: Option<&str>, uid: u32, pipes: &[u64]) {
        let base = format!("/proc/{pid}");
        let _ = std::fs::remove_dir_all(self.path(&base));
        self.file(
            &format!("{base}/cmdline"),
            &format!("{}\0", cmdline.join("\0")),
        );
        self.file(
            &format!("{base}/status"),
            &format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        );
        self.file(
            &format!("{base}/stat"),
            &format!("{pid} (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"),
        );
        if let Some(p) = path_env {
            self.file(&format!("{base}/environ"), &format!("HOME=/\0PATH={p}\0"));
        }
        std::os::unix::fs::symlink(cmdline[0], self.path(&format!("{base}/exe"))).unwrap();
        std::fs::create_dir_all(self.path(&format!("{base}/fd"))).unwrap();
        for (fd, ino) in pipes.iter().enumerate() {
            std::os::unix::fs::symlink(
                format!("pipe:[{ino}]"),
                self.path(&format!("{base}/fd/{fd}")),
            )
            .unwrap();
        }
    }

    fn run(&self) -> Vec<Finding> {
        let trust = self
            .untrusted
            .iter()
            .fold(ScriptedTrust::new(self.dir.path()), |t, p| t.untrusted(*p));
        let host = Host::fixture(
            self.dir.path(),
            self.runner.clone(),
            "/usr/local/bin:/usr/bin:/usr/sbin",
        )
        .with_trust(trust);
        super::run(&host, &self.opts)
    }

    /// The journal's lock taken (by this test process) and /proc/locks naming `pid` as its
    /// holder.
    fn watchdog_holds_the_lock(&self, pid: i32) -> Journal {
        let journal = Journal::new(
            self.path("/var/lib/sturdy/watchdog.journal"),
            DEFAULT_MAX_BYTES,
        );
        journal.lock_exclusive().unwrap();
        let meta = std::fs::metadata(lock_path(journal.path())).unwrap();
        self.file(
            "/proc/locks",
            &format!(
                "1: POSIX  ADVISORY  WRITE 99 00:00:1 0 EOF\n\
                 2: FLOCK  ADVISORY  WRITE {pid} {:02x}:{:02x}:{} 0 EOF\n\
                 2: -> FLOCK  ADVISORY  WRITE 77 {:02x}:{:02x}:{} 0 EOF\n",
                libc::major(meta.dev()),
                libc::minor(meta.dev()),
                meta.ino(),
                libc::major(meta.dev()),
                libc::minor(meta.dev()),
                meta.ino(),
            ),
        );
        journal
    }

    fn check(&self, check: &str) -> Vec<Finding> {
        self.run()
            .into_iter()
            .filter(|f| f.check == check)
            .collect()
    }
}

fn worst_of(findings: &[Finding]) -> Severity {
    worst(findings)
}

fn has(findings: &[Finding], severity: Severity, text: &str) -> bool {
    findings
        .iter()
        .any(|f| f.severity == severity && f.summary.contains(text))
}

#[test]
fn a_healthy_node_has_nothing_to_fix() {
    let node = Node::new();
    let _journal = node.watchdog_holds_the_lock(42);
    node.process(42, &["/usr/local/bin/sturdyctl", "watchdog"], None, 0, &[]);
    let findings = node.run();
    assert_eq!(worst(&findings), Severity::Ok, "{findings:#?}");
    for check in [
        "runc",
        "containerd",
        "pipes",
        "cgroup",
        "routing",
        "criu",
        "watchdog",
        "records",
    ] {
        assert!(
            findings.iter().any(|f| f.check == check),
            "no {check} finding: {findings:#?}"
        );
    }
    assert!(
        has(&findings, Severity::Ok, "sturdyctl watchdog runs (pid 42"),
        "{findings:#?}"
    );
}

#[test]
fn exit_codes_follow_the_worst_severity() {
    assert_eq!(Severity::Ok.exit_code(), 0);
    assert_eq!(Severity::Info.exit_code(), 0);
    assert_eq!(Severity::Warn.exit_code(), 1);
    assert_eq!(Severity::Error.exit_code(), 2);
    assert_eq!(worst(&[]), Severity::Ok);
    let json = serde_json::to_value(Finding::new("runc", Severity::Warn, "x").fix("y")).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"check": "runc", "severity": "warn", "summary": "x", "fix": "y"})
    );
}

#[test]
fn runc_known_bad_versions_are_errors_with_their_source() {
    let mut node = Node::new();
    node.runner = node.runner.clone().with(
        "runc",
        "runc version 1.0.0-rc93\ncommit: x\nspec: 1.0.2-dev\n",
    );
    let f = node.check("runc");
    assert_eq!(worst_of(&f), Severity::Error);
    let hang = f
        .iter()
        .find(|f| f.summary.contains("runc-rc93-init-hang"))
        .unwrap();
    assert!(hang.source.as_deref().unwrap().contains("runc/pull/2871"));
    assert!(hang.fix.as_deref().unwrap().contains("1.0.0-rc94"));
    // Debian's patched build: the backport is information, the unfixed CVE an error.
    node.runner = node.runner.clone().with(
        "runc",
        "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n",
    );
    let f = node.check("runc");
    assert!(
        has(
            &f,
            Severity::Info,
            "CVE-2024-21626 is fixed in this distribution build"
        ),
        "{f:#?}"
    );
    assert!(has(&f, Severity::Error, "CVE-2025-31133"), "{f:#?}");
}

#[test]
fn runc_is_the_configured_binary_name_and_a_hang_is_a_finding() {
    let mut node = Node::new();
    node.file(
        "/etc/containerd/config.toml",
        &format!("{CONFIG}  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy.options]\n    BinaryName = \"/usr/bin/crun\"\n"),
    );
    node.exe("/usr/bin/crun");
    node.runner = node.runner.clone().with(
        "/usr/bin/crun",
        "crun version 1.8.1\ncommit: f8a0\nspec: 1.0.0\n",
    );
    let f = node.check("runc");
    assert!(
        has(&f, Severity::Ok, "crun 1.8.1 at /usr/bin/crun"),
        "{f:#?}"
    );
    node.runner = node.runner.clone().failing(
        "/usr/bin/crun",
        RunError::Timeout {
            program: "/usr/bin/crun".into(),
            deadline: std::time::Duration::from_secs(10),
        },
    );
    assert!(has(&node.check("runc"), Severity::Error, "no exit within"));
    node.remove("/usr/bin/crun");
    assert!(has(
        &node.check("runc"),
        Severity::Error,
        "is not on containerd's PATH"
    ));
}

#[test]
fn containerd_incident_000_releases_and_pending_upgrades() {
    let mut node = Node::new();
    node.runner = node.runner.clone().with(
        "containerd",
        "containerd github.com/containerd/containerd v1.6.12 a05d175\n",
    );
    let f = node.check("containerd");
    let ip = f
        .iter()
        .find(|f| f.summary.contains("containerd-7843-pod-ip-loss"))
        .unwrap();
    assert_eq!(ip.severity, Severity::Error);
    assert!(ip.fix.as_deref().unwrap().contains("1.6.15"));
    // The daemon still runs the old release while the binary was upgraded.
    node.runner = node.runner.clone().with("containerd", CONTAINERD_OK);
    node.opts.api_version = Some(Ok(("v1.6.12".into(), "a05d175".into())));
    let f = node.check("containerd");
    assert!(
        has(&f, Severity::Warn, "an upgrade is waiting for a restart"),
        "{f:#?}"
    );
    assert!(
        has(&f, Severity::Error, "containerd v1.6.12 (running"),
        "{f:#?}"
    );
    // Debian 12's build with every backport.
    let deb = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n";
    node.runner = node.runner.clone().with("containerd", deb);
    node.opts.api_version = Some(Ok(("1.6.20~ds1".into(), "1.6.20~ds1-1+deb12u3".into())));
    let f = node.check("containerd");
    assert_eq!(worst_of(&f), Severity::Info, "{f:#?}");
    assert_eq!(f.iter().filter(|f| f.severity == Severity::Info).count(), 3);
    node.remove("/usr/bin/containerd");
    node.opts.api_version = None;
    node.opts.listener = Some(Err("connect: No such file or directory".into()));
    assert!(has(
        &node.check("containerd"),
        Severity::Error,
        "no containerd found"
    ));
}

#[test]
fn pipes_over_the_soft_limit_are_an_error() {
    let node = Node::new();
    node.file("/proc/sys/fs/pipe-user-pages-soft", "56\n");
    node.process(10, &["/usr/bin/a"], None, 0, &[1, 2, 2]);
    node.process(11, &["/usr/bin/b"], None, 0, &[3]);
    node.process(12, &["/usr/bin/c"], None, 1000, &[4, 5, 6, 7, 8]);
    let f = node.check("pipes");
    // 3 distinct root pipes * 16 pages = 48 of 56: above 80 %.
    assert!(
        has(&f, Severity::Warn, "about 3 pipes (~48 pages)"),
        "{f:#?}"
    );
    node.process(13, &["/usr/bin/d"], None, 0, &[9]);
    let f = node.check("pipes");
    assert!(has(&f, Severity::Error, "incident 002"), "{f:#?}");
    assert!(f[0]
        .fix
        .as_deref()
        .unwrap()
        .starts_with("sysctl -w fs.pipe-user-pages-soft="));
    node.file("/proc/sys/fs/pipe-user-pages-soft", "0\n");
    assert!(has(&node.check("pipes"), Severity::Ok, "no soft limit"));
}
