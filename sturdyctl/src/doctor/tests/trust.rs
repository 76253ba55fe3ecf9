//! What doctor believes and runs (security review 2026-12): containerd is who listens on
//! its socket (H2), the watchdog is who holds the journal's lock (L18), and nothing others
//! can change is run.

use std::path::PathBuf;

use super::*;

/// A path under `prefix` that the fixture's runner was asked to run.
fn ran_under(node: &Node, prefix: &str) -> Vec<PathBuf> {
    node.runner
        .ran()
        .into_iter()
        .filter(|p| p.starts_with(prefix))
        .collect()
}

/// H2, the review's scenario: a process named `containerd`, older (lower pid) than the real
/// one, with a PATH leading to its own look-alikes of everything doctor runs. Doctor takes
/// containerd from its socket, runs none of the look-alikes, and reports the real daemon.
#[test]
fn a_process_named_containerd_is_not_containerd() {
    for uid in [65534, 0] {
        let mut node = Node::new();
        for bin in ["runc", "criu", "containerd-shim-sturdy-v2", "containerd"] {
            node.exe(&format!("/home/evil/bin/{bin}"));
        }
        node.untrusted.push("/home/evil");
        node.process(
            5,
            &["/home/evil/bin/containerd"],
            Some("/home/evil/bin"),
            uid,
            &[],
        );
        let f = node.run();
        assert_eq!(
            ran_under(&node, "/home/evil"),
            Vec::<PathBuf>::new(),
            "uid {uid}"
        );
        assert!(
            has(
                &f,
                Severity::Ok,
                "containerd pid 7 listens on /run/containerd/containerd.sock (/usr/bin/containerd)"
            ),
            "{f:#?}"
        );
        assert!(has(&f, Severity::Ok, "at /usr/sbin/runc"), "{f:#?}");
        assert!(
            has(
                &f,
                Severity::Ok,
                "→ /usr/local/bin/containerd-shim-sturdy-v2"
            ),
            "{f:#?}"
        );
        assert!(
            !f.iter().any(|f| f.summary.contains("/home/evil")),
            "{f:#?}"
        );
    }
}

/// The process on containerd's socket is believed only if it is root running a binary only
/// root can change; otherwise nothing of it runs and its PATH is ignored.
#[test]
fn an_untrusted_listener_is_not_containerd() {
    let mut node = Node::new();
    for bin in ["runc", "criu", "containerd-shim-sturdy-v2", "containerd"] {
        node.exe(&format!("/home/evil/bin/{bin}"));
    }
    node.untrusted.push("/home/evil");
    let listening = |pid, uid| Some(Ok(Peer { pid, uid }));
    for (uid, peer_uid, why) in [
        (65534, 65534, "it listened as uid 65534"),
        (65534, 0, "pid 5 runs as uid 65534, not root"),
        (0, 0, "/home/evil: mode 0777"),
    ] {
        node.process(
            5,
            &["/home/evil/bin/containerd"],
            Some("/home/evil/bin"),
            uid,
            &[],
        );
        node.opts.listener = listening(5, peer_uid);
        let f = node.run();
        assert_eq!(ran_under(&node, "/home/evil"), Vec::<PathBuf>::new());
        assert!(
            has(
                &f,
                Severity::Error,
                &format!("pid 5 listening on /run/containerd/containerd.sock is not a trusted containerd ({why}")
            ),
            "{f:#?}"
        );
        // Still checks what it can, on sturdyctl's PATH.
        assert!(has(&f, Severity::Ok, "at /usr/sbin/runc"), "{f:#?}");
    }
    node.opts.listener = Some(Err("connect: Connection refused".into()));
    let f = node.check("containerd");
    assert!(
        has(&f, Severity::Warn, "containerd not found through its socket /run/containerd/containerd.sock (connect: Connection refused)"),
        "{f:#?}"
    );
}

/// containerd's own PATH through a directory others can change: doctor runs nothing found
/// there and says containerd itself would.
#[test]
fn a_directory_others_can_change_on_containerds_path() {
    let mut node = Node::new();
    node.exe("/opt/open/bin/runc");
    node.untrusted.push("/opt/open");
    node.process(
        CONTAINERD_PID,
        &["/usr/bin/containerd"],
        Some("/opt/open/bin:/usr/bin:/usr/sbin"),
        0,
        &[],
    );
    let f = node.run();
    assert_eq!(ran_under(&node, "/opt/open"), Vec::<PathBuf>::new());
    let runc = f.iter().find(|f| f.check == "runc").unwrap();
    assert_eq!(runc.severity, Severity::Error, "{f:#?}");
    assert!(
        runc.summary
            .contains("/opt/open/bin/runc: not run: /opt/open: mode 0777"),
        "{runc:#?}"
    );
    assert_eq!(runc.fix.as_deref(), Some(UNTRUSTED_FIX));
    assert!(
        has(
            &f,
            Severity::Error,
            "containerd's PATH has directories other users can change (/opt/open/bin (/opt/open: mode 0777"
        ),
        "{f:#?}"
    );
}

/// L18: a process that calls itself `sturdyctl watchdog` and holds the journal's lock (a lock
/// file others can open) is reported as what it is, not as a running watchdog.
#[test]
fn a_lock_holder_that_is_not_root_is_no_watchdog() {
    let mut node = Node::new();
    let _held = node.watchdog_holds_the_lock(50);
    node.process(
        50,
        &["/usr/local/bin/sturdyctl", "watchdog"],
        None,
        65534,
        &[],
    );
    let f = node.check("watchdog");
    assert!(
        has(
            &f,
            Severity::Error,
            "lock is held by pid 50, which is no watchdog (pid 50 runs as uid 65534"
        ),
        "{f:#?}"
    );
    assert!(!f.iter().any(|f| f.severity == Severity::Ok), "{f:#?}");
    // Root, but from a binary others can replace.
    node.process(50, &["/home/user/sturdyctl", "watchdog"], None, 0, &[]);
    node.untrusted.push("/home/user");
    let f = node.check("watchdog");
    assert!(
        has(
            &f,
            Severity::Error,
            "which is no watchdog (/home/user: mode 0777"
        ),
        "{f:#?}"
    );
}

#[test]
fn proc_locks_names_the_holder_of_an_inode() {
    let dev = libc::makedev(0xfd, 1);
    let text = "1: POSIX  ADVISORY  WRITE 10 fd:01:55 0 EOF\n\
                2: FLOCK  ADVISORY  READ  11 fd:01:42 0 EOF\n\
                3: FLOCK  ADVISORY  WRITE 12 fd:01:42 0 EOF\n\
                3: -> FLOCK  ADVISORY  WRITE 13 fd:01:42 0 EOF\n";
    assert_eq!(routing::holder_in(text, dev, 42), Some(12));
    assert_eq!(
        routing::holder_in(text, dev, 55),
        None,
        "POSIX locks are not flock's"
    );
    // Another device number (a btrfs subvolume): the inode alone when it is unique.
    assert_eq!(routing::holder_in(text, libc::makedev(0, 40), 42), Some(12));
    // A holder in another pid namespace shows as 0.
    let hidden = "3: FLOCK  ADVISORY  WRITE 0 fd:01:42 0 EOF\n";
    assert_eq!(routing::holder_in(hidden, dev, 42), None);
}
