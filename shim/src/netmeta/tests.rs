//! Tests of the sandbox network record: which containers get one, and real snapshots of a
//! network namespace made for the test (`unshare -n`, addresses added with `ip`).

use std::process::{Child, Command, Stdio};

use super::*;

fn spec(annotations: &[(&str, &str)], netns: Option<Option<&str>>) -> Spec {
    let mut v = serde_json::json!({
        "ociVersion": "1.0.2",
        "annotations": annotations.iter().cloned().collect::<HashMap<_, _>>(),
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
    });
    if let Some(path) = netns {
        let mut ns = serde_json::json!({"type": "network"});
        if let Some(p) = path {
            ns["path"] = p.into();
        }
        v["linux"]["namespaces"].as_array_mut().unwrap().push(ns);
    }
    serde_json::from_value(v).unwrap()
}

const POD: &[(&str, &str)] = &[
    (CONTAINER_TYPE, "sandbox"),
    (SANDBOX_ID, "sb1"),
    (SANDBOX_NAME, "web-0"),
    (SANDBOX_NAMESPACE, "default"),
    (SANDBOX_UID, "uid-1"),
];

#[test]
fn only_cri_sandboxes_are_recorded() {
    let o = RuntimeOptions::default();
    let p = Plan::for_container(
        &spec(POD, Some(Some("/var/run/netns/cni-1"))),
        "sb1",
        "k8s.io",
        &o,
    )
    .unwrap();
    assert_eq!(p.source, Source::Path("/var/run/netns/cni-1".into()));
    assert_eq!(
        p.store.dir(),
        std::path::Path::new(sandbox_record::DEFAULT_DIR)
    );
    assert_eq!(
        (
            p.pod.name.as_str(),
            p.pod.namespace.as_str(),
            p.pod.uid.as_str()
        ),
        ("web-0", "default", "uid-1")
    );
    let host = Plan::for_container(&spec(POD, None), "sb1", "k8s.io", &o).unwrap();
    assert_eq!(host.source, Source::Host);
    let own = Plan::for_container(&spec(POD, Some(None)), "sb1", "k8s.io", &o).unwrap();
    assert_eq!(own.source, Source::OwnNamespace);
    let app = spec(
        &[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "sb1")],
        Some(Some("/x")),
    );
    assert!(Plan::for_container(&app, "c1", "k8s.io", &o).is_none());
    assert_eq!(sandbox_of(&app, "c1").as_deref(), Some("sb1"));
    assert!(sandbox_of(&spec(POD, None), "sb1").is_none());
    assert!(Plan::for_container(&spec(&[], None), "c", "default", &o).is_none());
    let off = RuntimeOptions {
        no_sandbox_record: true,
        ..Default::default()
    };
    assert!(Plan::for_container(&spec(POD, None), "sb1", "k8s.io", &off).is_none());
    let dir = RuntimeOptions {
        sandbox_record_dir: "/srv/records".into(),
        ..Default::default()
    };
    let p = Plan::for_container(&spec(POD, None), "sb1", "k8s.io", &dir).unwrap();
    assert_eq!(p.store.dir(), std::path::Path::new("/srv/records"));
}

/// A network namespace held by an `unshare -n sleep` the test started, killed by PID on drop.
struct TestNs(Child);

impl TestNs {
    fn new() -> Option<TestNs> {
        Self::started(Self::spawn()?)
    }

    fn spawn() -> Option<Child> {
        Command::new("unshare")
            .args(["-n", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .ok()
    }

    /// A namespace held by a process whose pid is `pid` (free by now): pid reuse made to
    /// happen, through `/proc/sys/kernel/ns_last_pid` (root only). `None` if the kernel
    /// kept giving the pid's neighbours to other processes of this busy machine.
    fn with_pid(pid: u32) -> Option<TestNs> {
        for _ in 0..500 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
            let child = Self::spawn()?;
            if child.id() == pid {
                return Self::started(child);
            }
            drop(TestNs(child));
        }
        None
    }

    fn started(child: Child) -> Option<TestNs> {
        let ns = TestNs(child);
        // Until unshare has exec'd sleep, /proc/PID/ns/net is still ours.
        let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
        for _ in 0..200 {
            if std::fs::read_link(ns.path())
                .ok()
                .is_some_and(|l| l != ours)
            {
                return Some(ns);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }

    fn ip(&self, args: &str) {
        let st = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("ip")
            .args(args.split(' '))
            .status();
        match st {
            Ok(st) => assert!(st.success(), "ip {args}"),
            // Other tests of this binary run runc-client's reaper, which may reap it first:
            // the records checked afterwards show whether it worked.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
            Err(e) => panic!("ip {args}: {e}"),
        }
    }
}

impl TestNs {
    /// Runs every line of `commands` with `ip -batch` inside the namespace.
    fn batch(&self, commands: &str) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), commands).unwrap();
        self.ip(&format!("-batch {}", file.path().display()));
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn plan(dir: &std::path::Path, source: Source) -> Plan {
    Plan {
        store: Store::new(dir),
        namespace: "k8s.io".into(),
        containerd: String::new(),
        sandbox_id: "sb1".into(),
        pod: Pod::default(),
        source,
    }
}

/// Waits (5 s at most) until `f` holds; panics naming `what` otherwise.
async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn wait_record(store: &Store, ok: impl Fn(&Record) -> bool) -> Record {
    let mut found = None;
    let matching = || {
        found = store.read("k8s.io", "sb1").ok().flatten().filter(|r| ok(r));
        found.is_some()
    };
    let what = format!("a matching record: {:?}", store.read("k8s.io", "sb1"));
    wait_for(&what, matching).await;
    found.unwrap()
}

/// Waits until `rec` has finished `n` more snapshot attempts than `since`.
async fn wait_attempts(rec: &Recorder, since: u64, n: u64) {
    wait_for(&format!("{n} snapshot attempts after {since}"), || {
        rec.attempts() >= since + n
    })
    .await;
}

/// The attempts `rec` has finished once the one running (which may have written the
/// record just read) has finished too.
async fn settled(rec: &Recorder) -> u64 {
    wait_for("the running snapshot to finish", || rec.idle()).await;
    rec.attempts()
}

#[tokio::test]
async fn records_a_namespace_retries_until_it_has_an_address_and_removes_at_the_end() {
    let Some(ns) = TestNs::new() else {
        test_skip::skip!("cannot create a network namespace here (unshare -n failed)");
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let rec = Recorder::start(plan(dir.path(), Source::Path(ns.path())), 0, "create");
    let first = wait_record(&store, |_| true).await;
    assert!(first.pod_ips().is_empty(), "{first:?}");
    assert_eq!(first.trigger, "create");
    // CNI runs after the first snapshot: the retry picks the address up.
    ns.ip("link add eth0 type veth peer name p0");
    ns.ip("link set eth0 mtu 1400 up");
    ns.ip("link set p0 up");
    ns.ip("addr add 192.0.2.5/24 dev eth0");
    let r = wait_record(&store, |r| !r.pod_ips().is_empty()).await;
    assert_eq!(r.trigger, "retry");
    assert_eq!(r.pod_ips(), vec!["192.0.2.5"]);
    // A second address is recorded at the next container start.
    ns.ip("addr add 192.0.2.6/24 dev eth0");
    rec.trigger("container start");
    let r = wait_record(&store, |r| r.pod_ips().len() == 2).await;
    assert_eq!(r.pod_ips(), vec!["192.0.2.5", "192.0.2.6"]);
    let Network::Namespace {
        interfaces,
        routes,
        path,
    } = &r.network
    else {
        panic!("{r:?}")
    };
    assert_eq!(path, &ns.path().to_string_lossy());
    let eth0 = interfaces.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(eth0.mac.len(), 17);
    assert!(
        routes
            .iter()
            .any(|r| r.destination == "192.0.2.0/24" && r.interface.as_deref() == Some("eth0")),
        "{routes:?}"
    );
    // A flipped byte is replaced by the next snapshot.
    let file = dir.path().join("k8s.io/sb1.json");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    assert!(store.read("k8s.io", "sb1").unwrap_err().is_corrupt());
    rec.trigger("refresh");
    let fresh = wait_record(&store, |_| true).await;
    assert_eq!(fresh.trigger, "refresh");
    assert!(fresh.same_network(&r));
    // CNI DEL before the task's delete: the record keeps the pod's IPs.
    ns.ip("addr flush dev eth0");
    let before = settled(&rec).await;
    rec.trigger("refresh");
    wait_attempts(&rec, before, 1).await;
    let kept = store.read("k8s.io", "sb1").unwrap().unwrap();
    assert_eq!(kept.trigger, "refresh");
    assert_eq!(kept.pod_ips(), vec!["192.0.2.5", "192.0.2.6"]);
    assert_eq!(
        kept.taken_at_ms, fresh.taken_at_ms,
        "the record was rewritten"
    );
    rec.remove().await;
    assert!(!file.exists());
    // Nothing brings it back: the recording has ended, so no snapshot can run.
    assert!(rec.stopped());
    rec.trigger("start");
    assert!(!file.exists());
}

/// L4: a sandbox whose namespace is its init's own is read through the namespace opened
/// when recording started, not through `/proc/PID/ns/net` again: once init has died and
/// its pid belongs to a process in another namespace, the snapshot still reads init's.
#[tokio::test]
async fn own_namespace_is_held_open_not_reopened_by_a_reused_pid() {
    let Some(init) = TestNs::new() else {
        println!("SKIPPED own_namespace_is_held_open: cannot create a network namespace here");
        return;
    };
    init.ip("link add eth0 type veth peer name p0");
    init.ip("addr add 192.0.2.5/24 dev eth0");
    let pid = init.0.id();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let rec = Recorder::start(plan(dir.path(), Source::OwnNamespace), pid as i32, "create");
    let first = wait_record(&store, |r| !r.pod_ips().is_empty()).await;
    assert_eq!(first.pod_ips(), vec!["192.0.2.5"]);
    drop(init);
    let Some(successor) = TestNs::with_pid(pid) else {
        println!("SKIPPED own_namespace_is_held_open: could not get pid {pid} reused (not root, or a busy machine)");
        rec.remove().await;
        return;
    };
    successor.ip("link add eth0 type veth peer name p0");
    successor.ip("addr add 198.51.100.7/24 dev eth0");
    let before = settled(&rec).await;
    rec.trigger("refresh");
    wait_attempts(&rec, before, 1).await;
    let now = store.read("k8s.io", "sb1").unwrap().unwrap();
    assert_eq!(
        now.pod_ips(),
        vec!["192.0.2.5"],
        "recorded the namespace of pid {pid}'s next owner"
    );
    rec.remove().await;
}

/// M3: a namespace holding more than a record keeps is recorded truncated, flagged, in a
/// file of at most 1 MiB, with the pod's first address still the pod IP.
#[tokio::test]
async fn a_namespace_beyond_the_limits_is_recorded_truncated() {
    let Some(ns) = TestNs::new() else {
        println!("SKIPPED a_namespace_beyond_the_limits: cannot create a network namespace here");
        return;
    };
    let mut cmds =
        String::from("link add eth0 type veth peer name p0\naddr add 192.0.2.5/24 dev eth0\n");
    for v in 0..5 {
        cmds.push_str(&format!("link add a{v} type veth peer name b{v}\n"));
    }
    // 5000 more addresses (and as many local routes), spread so the kernel adds them fast.
    for n in 0..5000u32 {
        cmds.push_str(&format!(
            "addr add 10.{}.{}.{}/32 dev {}{}\n",
            n >> 16,
            (n >> 8) & 255,
            n & 255,
            if n % 2 == 0 { "a" } else { "b" },
            n % 5
        ));
    }
    ns.batch(&cmds);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let rec = Recorder::start(plan(dir.path(), Source::Path(ns.path())), 0, "create");
    let r = wait_record(&store, |_| true).await;
    let note = r
        .truncated
        .clone()
        .expect("the record says it was truncated");
    assert!(note.contains("address"), "{note}");
    assert_eq!(r.pod_ips(), vec!["192.0.2.5"]);
    let Network::Namespace { interfaces, .. } = &r.network else {
        panic!("{r:?}")
    };
    let kept: usize = interfaces.iter().map(|i| i.addresses.len()).sum();
    assert!(
        kept <= sandbox_record::MAX_ADDRESSES,
        "{kept} addresses kept"
    );
    let size = std::fs::metadata(dir.path().join("k8s.io/sb1.json"))
        .unwrap()
        .len();
    assert!(
        size <= sandbox_record::MAX_RECORD_BYTES as u64,
        "{size} bytes"
    );
    rec.remove().await;
}

#[tokio::test]
async fn host_network_is_recorded_without_entering_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let rec = Recorder::start(plan(dir.path(), Source::Host), 0, "create");
    let r = wait_record(&store, |_| true).await;
    assert!(r.host_network());
    rec.remove().await;
}

#[tokio::test]
async fn an_unwritable_store_never_fails_and_a_later_snapshot_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the namespace directory should be: every write fails.
    std::fs::write(dir.path().join("k8s.io"), b"").unwrap();
    let store = Store::new(dir.path());
    let rec = Recorder::start(plan(dir.path(), Source::Host), 0, "create");
    wait_attempts(&rec, 0, 1).await;
    assert!(store.read("k8s.io", "sb1").is_err());
    std::fs::remove_file(dir.path().join("k8s.io")).unwrap();
    rec.trigger("start");
    assert!(wait_record(&store, |_| true).await.host_network());
    rec.remove().await;
}

#[tokio::test]
async fn create_and_start_share_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let rec = Recorder::start(plan(dir.path(), Source::Host), 0, "create");
    rec.trigger("start");
    // Taken separately, the second would find the same network and leave "create" on disk.
    let r = wait_record(&store, |_| true).await;
    assert_eq!(r.trigger, "start");
    rec.remove().await;
}
