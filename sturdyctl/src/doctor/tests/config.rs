//! Checks of containerd's configuration, routing, CRIU, the watchdog and the records.

use super::*;

#[test]
fn cgroup_driver_mismatches() {
    let node = Node::new();
    assert_eq!(worst_of(&node.check("cgroup")), Severity::Ok);
    // v2 + systemd init + cgroupfs driver for both.
    node.file("/etc/containerd/config.toml", CONFIG);
    assert!(has(&node.check("cgroup"), Severity::Warn, "two managers"));
    // sturdy and runc disagree.
    let mixed = SYSTEMD_OPTIONS.replacen("SystemdCgroup = true", "SystemdCgroup = false", 1);
    node.file("/etc/containerd/config.toml", &format!("{CONFIG}{mixed}"));
    assert!(has(
        &node.check("cgroup"),
        Severity::Warn,
        "the runc handler uses SystemdCgroup = false, sturdy true"
    ));
    // SystemdCgroup without systemd.
    node.file("/proc/1/comm", "tini\n");
    node.file(
        "/etc/containerd/config.toml",
        &format!("{CONFIG}{SYSTEMD_OPTIONS}"),
    );
    let f = node.check("cgroup");
    assert!(
        has(
            &f,
            Severity::Error,
            "runc cannot use systemd without systemd"
        ),
        "{f:#?}"
    );
    // kubelet disagrees.
    node.file("/proc/1/comm", "systemd\n");
    node.file(
        "/var/lib/kubelet/config.yaml",
        "kind: KubeletConfiguration\ncgroupDriver: cgroupfs\n",
    );
    assert!(has(
        &node.check("cgroup"),
        Severity::Error,
        "kubelet's cgroupDriver is cgroupfs"
    ));
    // v1 hybrid, cgroupfs everywhere.
    node.file("/etc/containerd/config.toml", CONFIG);
    node.file(
        "/proc/self/mountinfo",
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n31 27 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
         32 31 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    );
    let f = node.check("cgroup");
    assert!(has(&f, Severity::Ok, "cgroup v1 (hybrid)"), "{f:#?}");
}

#[test]
fn routing_needs_the_handler_the_type_and_sturdys_binary() {
    let mut node = Node::new();
    node.remove("/etc/containerd/config.toml");
    assert!(has(
        &node.check("routing"),
        Severity::Error,
        "no containerd config"
    ));
    node.file("/etc/containerd/config.toml", "version = 2\n");
    let f = node.check("routing");
    assert!(
        has(&f, Severity::Error, "defines no runtime `sturdy`"),
        "{f:#?}"
    );
    assert_eq!(
        f[0].fix.as_deref(),
        Some("sturdyctl install --config /etc/containerd/config.toml")
    );
    node.file(
        "/etc/containerd/config.toml",
        &CONFIG.replace("sturdy.v2", "runc.v2"),
    );
    assert!(has(
        &node.check("routing"),
        Severity::Error,
        "not \"io.containerd.sturdy.v2\""
    ));
    node.file("/etc/containerd/config.toml", CONFIG);
    node.runner = node.runner.clone().with(
        "containerd-shim-sturdy-v2",
        "containerd-shim-runc-v2:\n  Version: 1.7\n",
    );
    assert!(has(
        &node.check("routing"),
        Severity::Error,
        "is not sturdy's shim"
    ));
    node.runner = node.runner.clone().with(
        "containerd-shim-sturdy-v2",
        &SHIM_OK.replace("0.1.0", "0.0.9"),
    );
    assert!(has(
        &node.check("routing"),
        Severity::Warn,
        "half-finished upgrade"
    ));
    node.remove("/usr/local/bin/containerd-shim-sturdy-v2");
    assert!(has(
        &node.check("routing"),
        Severity::Error,
        "containerd-shim-sturdy-v2 is not on containerd's PATH"
    ));
}

#[test]
fn routing_uses_containerds_path_and_imports() {
    let node = Node::new();
    node.remove("/usr/local/bin/containerd-shim-sturdy-v2");
    node.exe("/opt/sturdy/bin/containerd-shim-sturdy-v2");
    node.process(
        7,
        &["/usr/bin/containerd"],
        Some("/opt/sturdy/bin:/usr/bin:/usr/sbin"),
        0,
        &[],
    );
    let f = node.check("routing");
    assert!(
        has(
            &f,
            Severity::Ok,
            "→ /opt/sturdy/bin/containerd-shim-sturdy-v2"
        ),
        "{f:#?}"
    );
    // The handler in an imported drop-in.
    node.file(
        "/etc/containerd/config.toml",
        "version = 2\nimports = [\"conf.d/*.toml\"]\n",
    );
    node.file(
        "/etc/containerd/conf.d/50-sturdy.toml",
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy]\n  runtime_type = \"io.containerd.sturdy.v2\"\n",
    );
    assert!(has(
        &node.check("routing"),
        Severity::Ok,
        "handler `sturdy`"
    ));
}

#[test]
fn containerd_16_ignores_inline_options_and_config_edits_need_a_restart() {
    let mut node = Node::new();
    node.runner = node.runner.clone().with(
        "containerd",
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
    );
    node.file(
        "/etc/containerd/config.toml",
        &format!("{CONFIG}  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy.options]\n    Root = \"/run/sturdy\"\n"),
    );
    // containerd started at btime 1000 + 100 ticks: long before the config was written.
    node.file("/proc/stat", "cpu 1 2 3\nbtime 1000\n");
    node.process(
        7,
        &["/usr/bin/containerd"],
        Some("/usr/local/bin:/usr/bin:/usr/sbin"),
        0,
        &[],
    );
    let f = node.check("routing");
    assert!(
        has(&f, Severity::Warn, "Root in `sturdy`'s options are ignored"),
        "{f:#?}"
    );
    assert!(
        has(
            &f,
            Severity::Warn,
            "changed after containerd (pid 7) started"
        ),
        "{f:#?}"
    );
}

#[test]
fn criu_is_optional_unless_configured() {
    let node = Node::new();
    assert!(has(
        &node.check("criu"),
        Severity::Ok,
        "checkpoint/restore available"
    ));
    node.remove("/usr/sbin/criu");
    assert!(has(
        &node.check("criu"),
        Severity::Info,
        "criu not installed"
    ));
    node.file(
        "/etc/containerd/criu.toml",
        "CriuImagePath = \"/var/lib/criu\"\n",
    );
    node.file(
        "/etc/containerd/config.toml",
        &format!("{CONFIG}  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy.options]\n    ConfigPath = \"/etc/containerd/criu.toml\"\n"),
    );
    assert!(has(&node.check("criu"), Severity::Warn, "set Criu paths"));
}

#[test]
fn watchdog_absent_and_unfinished_recoveries() {
    let node = Node::new();
    let f = node.check("watchdog");
    assert!(
        has(&f, Severity::Warn, "no sturdyctl watchdog runs"),
        "{f:#?}"
    );
    let journal = Journal::new(
        node.path("/var/lib/sturdy/watchdog.journal"),
        DEFAULT_MAX_BYTES,
    );
    journal
        .append(&Entry {
            at_ms: 1,
            incident: "k8s.io/abc/1/2".into(),
            phase: Phase::Step {
                step: "kill shim".into(),
                ok: true,
                ms: 1,
                detail: String::new(),
            },
        })
        .unwrap();
    assert!(has(
        &node.check("watchdog"),
        Severity::Warn,
        "unfinished recoveries in the journal: k8s.io/abc/1/2"
    ));
    journal.lock_exclusive().unwrap();
    // Held, but /proc/locks does not say by whom: nothing to vouch for.
    let f = node.check("watchdog");
    assert!(has(&f, Severity::Warn, "not visible here"), "{f:#?}");
    assert!(has(&f, Severity::Warn, "unfinished recoveries"), "{f:#?}");
    drop(journal);
    let _held = node.watchdog_holds_the_lock(42);
    node.process(42, &["/usr/local/bin/sturdyctl", "watchdog"], None, 0, &[]);
    let f = node.check("watchdog");
    assert!(has(&f, Severity::Ok, "watchdog runs (pid 42"), "{f:#?}");
    assert_eq!(worst_of(&f), Severity::Ok, "{f:#?}");
}

#[test]
fn records_on_tmpfs_or_not_a_directory() {
    let node = Node::new();
    assert!(has(
        &node.check("records"),
        Severity::Ok,
        "/var/lib/sturdy is writable (ext4)"
    ));
    node.file(
        "/proc/self/mountinfo",
        &format!("{MOUNTS_V2}50 27 0:40 / /var/lib/sturdy rw - tmpfs tmpfs rw\n"),
    );
    assert!(has(
        &node.check("records"),
        Severity::Warn,
        "lost at reboot"
    ));
    std::fs::remove_dir(node.path("/var/lib/sturdy")).unwrap();
    assert!(has(
        &node.check("records"),
        Severity::Info,
        "does not exist yet"
    ));
    node.file("/var/lib/sturdy", "oops");
    assert!(has(
        &node.check("records"),
        Severity::Error,
        "is not a directory"
    ));
}
