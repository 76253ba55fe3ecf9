//! `sturdyctl watchdog` against real containerd 1.6 (incident 003, containerd issue 3199):
//! a SIGKILLed or hung (SIGSTOPped) shim's pod is killed, cleaned up and reported to
//! containerd by the watchdog, while a shim that is merely slow is left alone.
//!
//! The watchdog binary is `target/debug/sturdyctl` (built by `cargo build --workspace`), run
//! as a child with this fixture's socket and state dir and killed by PID when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_client::events::TaskExit;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::containerd::workspace_dir;
use sturdy_integration::k8s_cri::v1::PodSandboxState;
use sturdy_integration::{cleanup, container_config, Containerd, Cri, Handler, CRI_NAMESPACE};

const INTERVAL: Duration = Duration::from_secs(1);
const MISSES: u32 = 3;

/// Where the watchdog binary is: `STURDYCTL_BIN`, else next to the shim in target/debug.
fn sturdyctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STURDYCTL_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("debug").join("sturdyctl")
}

/// A running `sturdyctl watchdog`, SIGTERMed (then SIGKILLed) by PID on drop.
struct Watchdog {
    child: Child,
    log: PathBuf,
    journal: PathBuf,
}

impl Watchdog {
    /// Started with `--interval INTERVAL --misses MISSES` and `extra`.
    fn start(fx: &Containerd, extra: &[&str]) -> Watchdog {
        let interval = format!("{}ms", INTERVAL.as_millis());
        let misses = MISSES.to_string();
        let mut args = vec!["--interval", interval.as_str(), "--misses", misses.as_str()];
        args.extend_from_slice(extra);
        Self::start_with(fx, &args)
    }

    /// Started with the default timing and `args`.
    fn start_with(fx: &Containerd, args: &[&str]) -> Watchdog {
        let bin = sturdyctl_bin();
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build --workspace` first",
            bin.display()
        );
        let dir = fx.dir().join("watchdog");
        std::fs::create_dir_all(&dir).expect("watchdog dir");
        let log = dir.join("watchdog.log");
        let journal = dir.join("watchdog.journal");
        let child = Command::new(&bin)
            .arg("watchdog")
            .arg("--address")
            .arg(fx.socket())
            .arg("--state-dir")
            .arg(fx.state_dir())
            .arg("--journal")
            .arg(&journal)
            .args(args)
            .env("STURDYCTL_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("watchdog log"))
            .spawn()
            .expect("start sturdyctl watchdog");
        Watchdog {
            child,
            log,
            journal,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Journal entries (JSON lines).
    fn journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the watchdog's log has a line containing all of `needles`.
    async fn wait_log(&self, needles: &[&str], limit: Duration) {
        let ok = until(limit, || {
            self.log()
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n)))
        })
        .await;
        assert!(
            ok,
            "the watchdog never logged {needles:?} within {limit:?}; its log:\n{}",
            self.log()
        );
    }

    /// Waits until the watchdog watches the shim at `address` with pid `pid`.
    async fn wait_watching(&self, address: &str, pid: i32) {
        self.wait_log(
            &["watching shim", address, &format!("pid {pid} ")],
            Duration::from_secs(15),
        )
        .await;
    }

    /// Entries of incidents whose `started` entry concerns the shim at `address`.
    fn incident_entries(&self, address: &str) -> Vec<serde_json::Value> {
        let entries = self.journal();
        let ids: Vec<String> = entries
            .iter()
            .filter(|e| e["phase"] == "started" && e["shim"]["address"] == address)
            .filter_map(|e| e["incident"].as_str().map(String::from))
            .collect();
        entries
            .into_iter()
            .filter(|e| ids.iter().any(|id| e["incident"] == id.as_str()))
            .collect()
    }

    async fn wait_finished(&self, address: &str, limit: Duration) -> Vec<serde_json::Value> {
        let ok = until(limit, || {
            self.incident_entries(address)
                .iter()
                .any(|e| e["phase"] == "finished")
        })
        .await;
        assert!(
            ok,
            "no finished incident for {address} in the journal within {limit:?}; journal:\n{:#?}\nlog:\n{}",
            self.journal(),
            self.log()
        );
        let entries = self.incident_entries(address);
        for e in &entries {
            println!(
                "  journal: {} {} {} ({} ms) {}",
                e["at_ms"],
                e["phase"].as_str().unwrap_or(""),
                e["step"].as_str().or(e["reason"].as_str()).unwrap_or(""),
                e["ms"].as_u64().or(e["total_ms"].as_u64()).unwrap_or(0),
                e["detail"].as_str().or(e["summary"].as_str()).unwrap_or("")
            );
        }
        entries
    }

    /// SIGTERM, then SIGKILL after 25 s; returns how it exited.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(pid, Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(25);
            while Instant::now() < end {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        self.child.wait().ok()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- watchdog log ---\n{}", self.log());
        }
    }
}

/// Busy-loop processes keeping both cores busy; killed by PID on drop.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Hogs {
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new("/bin/sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("start a CPU hog")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// Every pid in the cgroups of the given containers (their cgroupsPath in every hierarchy).
fn cgroup_pids(fx: &Containerd, ids: &[String]) -> Vec<i32> {
    fn collect(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(t.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect(&e.path(), out);
            }
        }
    }
    let mut pids = Vec::new();
    for id in ids {
        let Some(path) = fx
            .bundle(CRI_NAMESPACE, id)
            .and_then(|b| b.cgroups_path.clone())
        else {
            continue;
        };
        for dir in cleanup::cgroup_dirs(&path) {
            collect(&dir, &mut pids);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// A running pod through `handler`: its sandbox and `n` containers running sleep.
struct Pod {
    id: String,
    containers: Vec<String>,
    /// Sandbox first.
    all: Vec<String>,
    shim: i32,
    address: String,
    pids: Vec<i32>,
}

async fn run_pod(fx: &Containerd, cri: &mut Cri, handler: Handler, name: &str, n: usize) -> Pod {
    let cfg = fx.pod_config(name);
    let id = cri.run_pod(handler, &cfg).await.expect("RunPodSandbox");
    let mut containers = Vec::new();
    for i in 0..n {
        let c = cri
            .create_container(
                &id,
                container_config(&format!("main{i}"), &["/bin/sleep", "3600"]),
                &cfg,
            )
            .await
            .expect("CreateContainer");
        cri.start_container(&c).await.expect("StartContainer");
        containers.push(c);
    }
    let shim = fx.shim_pid(CRI_NAMESPACE, &id).expect("the pod's shim pid");
    let address = fx
        .bundle(CRI_NAMESPACE, &id)
        .and_then(|b| b.address)
        .expect("the pod's shim address");
    let mut all = vec![id.clone()];
    all.extend(containers.iter().cloned());
    let pids = cgroup_pids(fx, &all);
    // sandbox: sh + sleep; each container: sleep.
    assert!(
        pids.len() > n,
        "too few processes in the pod's cgroups: {pids:?}"
    );
    assert!(pids.iter().all(|p| running(*p)));
    Pod {
        id,
        containers,
        all,
        shim,
        address,
        pids,
    }
}

/// Whether `pid` still runs: exists, is no zombie and is not exiting.
///
/// A killed pid-namespace init (a sandbox's pause process) stays in the kernel's exit path
/// until every process of its namespace is reaped; the ones whose shim died are orphans of
/// PID 1, which on this host reaps only now and then (about once a second). Such a process
/// has taken its SIGKILL (PF_EXITING is set) and runs no code of its own any more.
fn running(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); flags are field 9.
    let state = fields.first().copied().unwrap_or("X");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    !matches!(state, "Z" | "X") && flags & PF_EXITING == 0
}

/// How long until none of `pids` runs, if within `limit`.
async fn time_until_gone(pids: &[i32], t0: Instant, limit: Duration) -> Option<Duration> {
    until(limit, || pids.iter().all(|p| !running(*p)))
        .await
        .then(|| t0.elapsed())
}

/// Waits until `pids` stop running and prints how long that took and how long until they
/// fully exited (which includes PID 1's reaping of the dead shim's orphans on this host).
async fn measure(label: &str, pids: &[i32], t0: Instant) -> Duration {
    let Some(gone) = time_until_gone(pids, t0, Duration::from_secs(30)).await else {
        let running: Vec<i32> = pids.iter().copied().filter(|p| running(*p)).collect();
        panic!("{label}: pod processes {running:?} still run after 30 s");
    };
    let reaped = if until(Duration::from_secs(30), || {
        pids.iter().all(|p| !cleanup::pid_alive(*p))
    })
    .await
    {
        format!("{} ms", t0.elapsed().as_millis())
    } else {
        "more than 30 s".into()
    };
    println!(
        "{label}: pod processes stopped running after {} ms, fully exited after {reaped}",
        gone.as_millis()
    );
    gone
}

/// Sends SIGCONT to a stopped shim on drop (if it still runs), so a failed test's teardown
/// can talk to it.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let is_shim = procfs_cmdline(self.0).iter().any(|a| a == "-id");
        if cleanup::pid_alive(self.0) && is_shim {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
        }
    }
}

fn procfs_cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Collects (topic, payload) of containerd's task exit events from now on.
async fn follow_exits(fx: &Containerd) -> Arc<Mutex<Vec<(String, Vec<u8>)>>> {
    const READY: &str = "/sturdy-test/ready";
    let client = fx.client().await.expect("containerd client");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    // containerd answers Subscribe (sends its headers) only with the first event, so the
    // call itself waits in the background.
    let events = client.events();
    tokio::spawn(async move {
        let mut events = events;
        let req = SubscribeRequest {
            filters: vec![
                r#"topic=="/tasks/exit""#.into(),
                format!(r#"topic=="{READY}""#),
            ],
        };
        let Ok(resp) = events.subscribe(req).await else {
            return;
        };
        let mut stream = resp.into_inner();
        while let Ok(Some(env)) = stream.message().await {
            let payload = env.event.map(|a| a.value).unwrap_or_default();
            sink.lock().unwrap().push((env.topic, payload));
        }
    });
    // Subscribed once an event of our own topic comes through (no one else listens to it).
    let ready = || seen.lock().unwrap().iter().any(|(t, _)| t == READY);
    let mut publisher = client.events();
    let end = Instant::now() + Duration::from_secs(10);
    while !ready() && Instant::now() < end {
        let event = TaskExit {
            container_id: "sturdy-test-ready".into(),
            ..Default::default()
        };
        let mut req = tonic::Request::new(PublishRequest {
            topic: READY.into(),
            event: Some(containerd_client::to_any(&event)),
        });
        req.metadata_mut()
            .insert("containerd-namespace", CRI_NAMESPACE.parse().unwrap());
        publisher.publish(req).await.expect("Publish");
        until(Duration::from_millis(500), ready).await;
    }
    assert!(ready(), "never subscribed to containerd's events");
    seen
}

/// Whether a TaskExit for `id` was seen (its container_id is field 1 of the payload).
fn saw_exit(seen: &Mutex<Vec<(String, Vec<u8>)>>, id: &str) -> bool {
    seen.lock()
        .unwrap()
        .iter()
        .any(|(_, p)| p.windows(id.len()).any(|w| w == id.as_bytes()))
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("{sig} to {pid}: {e}"));
}

async fn assert_pod_cleaned(
    fx: &Containerd,
    cri: &mut Cri,
    pod: &Pod,
    exits: &Mutex<Vec<(String, Vec<u8>)>>,
) {
    for id in &pod.all {
        let rootfs = fx
            .state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE)
            .join(id)
            .join("rootfs");
        assert!(
            until(Duration::from_secs(10), || cleanup::mounts_under(&rootfs)
                .is_empty())
            .await,
            "{} still mounted",
            rootfs.display()
        );
    }
    let mut ready = true;
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let st = cri.pod_status(&pod.id).await.expect("PodSandboxStatus");
        ready = st.state == PodSandboxState::SandboxReady as i32;
        if !ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!ready, "the pod is still Ready in CRI");
    assert!(
        until(Duration::from_secs(10), || saw_exit(exits, &pod.id)).await,
        "containerd never announced the sandbox's exit"
    );
}

/// Incident 003: `kill -9` of a pod's shim. The watchdog kills the pod's processes within
/// a fraction of a second (target 0.5 s), runs the shim's delete, and containerd and CRI
/// see the pod exit. Printed beside: what containerd alone does (no watchdog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shim_pod_is_recovered() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let mut wd = Watchdog::start(&fx, &[]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "killed", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;
    let exits = follow_exits(&fx).await;

    signal(pod.shim, Signal::SIGKILL);
    let t0 = Instant::now();
    let gone = measure("watchdog, sturdy shim SIGKILLed", &pod.pids, t0).await;
    // Target 0.5 s.
    assert!(
        gone < Duration::from_millis(1000),
        "pod processes ran {} ms after the shim's death",
        gone.as_millis()
    );
    assert_pod_cleaned(&fx, &mut cri, &pod, &exits).await;
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    assert!(
        entries
            .iter()
            .any(|e| e["phase"] == "started" && e["reason"] == "dead"),
        "{entries:#?}"
    );
    for id in &pod.all {
        assert!(
            entries
                .iter()
                .any(|e| e["step"] == format!("delete {id}") && e["ok"] == true),
            "no successful delete of {id}: {entries:#?}"
        );
    }
    let status = wd.stop().expect("watchdog exit status");
    assert!(
        status.success(),
        "the watchdog ended with {status} on SIGTERM"
    );
    assert!(wd.log().contains("SIGTERM"), "{}", wd.log());
    drop(wd);

    // Containerd alone, for comparison (informational).
    for handler in [Handler::Runc, Handler::Sturdy] {
        let pod = run_pod(
            &fx,
            &mut cri,
            handler,
            &format!("alone-{}", handler.name()),
            1,
        )
        .await;
        signal(pod.shim, Signal::SIGKILL);
        let t0 = Instant::now();
        let label = format!("containerd alone, {} shim SIGKILLed", handler.name());
        measure(&label, &pod.pids, t0).await;
    }
}

/// A hung shim (SIGSTOP: alive, socket open, silent) is killed and its pod recovered
/// within interval × misses + 2 s; containerd alone never recovers it.
async fn hung_shim_recovered(handler: Handler, extra: &[&str]) {
    let fx = Containerd::start().await.expect("start containerd");
    let wd = Watchdog::start(&fx, extra);
    hung_shim_recovered_by(
        &fx,
        &wd,
        handler,
        INTERVAL * MISSES + Duration::from_secs(2),
    )
    .await;
}

async fn hung_shim_recovered_by(
    fx: &Containerd,
    wd: &Watchdog,
    handler: Handler,
    window: Duration,
) {
    let mut cri = fx.cri().await.expect("cri client");
    let pod = run_pod(fx, &mut cri, handler, "hung", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;
    let exits = follow_exits(fx).await;

    let _resume = Resume(pod.shim);
    signal(pod.shim, Signal::SIGSTOP);
    let t0 = Instant::now();
    println!(
        "SIGSTOP at {} ms",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let label = format!(
        "watchdog, {} shim SIGSTOPped (allowed {window:?})",
        handler.name()
    );
    let gone = measure(&label, &pod.pids, t0).await;
    assert!(
        gone <= window,
        "recovery took {} ms, more than {} ms",
        gone.as_millis(),
        window.as_millis()
    );
    assert!(
        !cleanup::pid_alive(pod.shim),
        "the hung shim is still alive"
    );
    assert_pod_cleaned(fx, &mut cri, &pod, &exits).await;
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    assert!(
        entries.iter().any(|e| e["phase"] == "started"
            && e["reason"].as_str().is_some_and(|r| r.starts_with("hung"))),
        "{entries:#?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["step"] == "kill shim" && e["ok"] == true),
        "{entries:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_sturdy_shim_is_recovered() {
    hung_shim_recovered(Handler::Sturdy, &[]).await;
}

/// With the default timing (probe every 2 s, 3 misses) a hung shim's pod is recovered
/// within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_shim_recovered_within_10s_by_default() {
    let fx = Containerd::start().await.expect("start containerd");
    let wd = Watchdog::start_with(&fx, &[]);
    hung_shim_recovered_by(&fx, &wd, Handler::Sturdy, Duration::from_secs(10)).await;
}

/// The same for containerd's Go shim, watched through `--runtime io.containerd.runc.v2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_go_shim_is_recovered() {
    hung_shim_recovered(Handler::Runc, &["--runtime", "io.containerd.runc.v2"]).await;
}

/// A shim stopped for less than the detection window and resumed is left alone, even
/// while two busy loops keep both cores busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn briefly_stopped_shim_is_left_alone_under_load() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = Watchdog::start(&fx, &[]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "slow", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;
    let _hogs = Hogs::start(2);
    let _resume = Resume(pod.shim);

    // Two intervals: at least one probe goes unanswered, never `MISSES` in a row.
    let stop = INTERVAL * (MISSES - 1);
    signal(pod.shim, Signal::SIGSTOP);
    let t0 = Instant::now();
    tokio::time::sleep(stop).await;
    signal(pod.shim, Signal::SIGCONT);
    println!("shim stopped for {} ms", t0.elapsed().as_millis());
    // The watchdog noticed the silence and saw the shim answer again.
    wd.wait_log(
        &[&pod.address, "answered again after"],
        Duration::from_secs(10),
    )
    .await;
    assert!(cleanup::pid_alive(pod.shim), "the resumed shim was killed");
    assert!(
        pod.pids.iter().all(|p| running(*p)),
        "pod processes were killed"
    );
    let st = cri.pod_status(&pod.id).await.expect("PodSandboxStatus");
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert!(
        wd.incident_entries(&pod.address).is_empty(),
        "an incident was journalled: {:#?}",
        wd.journal()
    );
    // Still answering containerd.
    let out = cri
        .exec_sync(
            &pod.containers[0],
            &["/bin/echo", "ok"],
            Duration::from_secs(10),
        )
        .await
        .expect("ExecSync after SIGCONT");
    assert_eq!(out.stdout, "ok\n");
}

/// A pod with two containers: every process of all three goes, and the watchdog ran the
/// shim's delete for each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shim_with_two_containers() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = Watchdog::start(&fx, &[]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "two", 2).await;
    assert_eq!(pod.all.len(), 3);
    wd.wait_watching(&pod.address, pod.shim).await;

    signal(pod.shim, Signal::SIGKILL);
    let t0 = Instant::now();
    let gone = measure(
        "watchdog, sturdy shim of a 3-container pod SIGKILLed",
        &pod.pids,
        t0,
    )
    .await;
    assert!(
        gone < Duration::from_millis(1000),
        "{} ms",
        gone.as_millis()
    );
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    for id in &pod.all {
        assert!(
            entries
                .iter()
                .any(|e| e["step"] == format!("delete {id}") && e["ok"] == true),
            "delete did not run for {id}: {entries:#?}"
        );
    }
    // containerd sees the connection close at the same moment and runs the same deletes
    // (removing each bundle after); the journal says who came first.
    let by_watchdog = entries
        .iter()
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with("ran:")))
        .count();
    println!("deletes: {by_watchdog} of 3 run by the watchdog, the others by containerd first");
}
