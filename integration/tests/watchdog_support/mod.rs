//! Helpers of the watchdog integration tests: the watchdog as a child process, pods to
//! break, CPU hogs, and measuring how long a pod's processes outlive their shim.
// Several test binaries include this module and each uses only part of it.
#![allow(dead_code, unused_imports)]

mod leaks;
mod pods;
mod procs;

pub use leaks::*;
pub use pods::*;
pub use procs::*;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_client::events::TaskExit;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
pub use sturdy_integration::containerd::sturdyctl_bin;
use sturdy_integration::k8s_cri::v1::PodSandboxState;
pub use sturdy_integration::until;
use sturdy_integration::{cleanup, Containerd, Cri, CRI_NAMESPACE};

/// Probe interval the tests run the watchdog with.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Misses the tests run the watchdog with.
pub const MISSES: u32 = 3;

pub use sturdy_integration::watchdog::Watchdog;

/// Starting the watchdog the way these tests run it, and waiting on what it does.
pub trait WatchdogExt: Sized {
    /// Started with `--interval INTERVAL --misses MISSES` and `extra`.
    fn start(fx: &Containerd, extra: &[&str]) -> Self;
    /// Started with the default timing and `args`.
    fn start_with(fx: &Containerd, args: &[&str]) -> Self;
    /// Waits until its log has a line containing all of `needles`.
    async fn wait_log(&self, needles: &[&str], limit: Duration);
    /// Waits until it watches the shim at `address` with pid `pid`.
    async fn wait_watching(&self, address: &str, pid: i32);
    /// Waits until an incident of the shim at `address` finished; its journal entries.
    async fn wait_finished(&self, address: &str, limit: Duration) -> Vec<serde_json::Value>;
    /// `sturdyctl status --json` about the same containerd and journal.
    fn status_json(&self, fx: &Containerd, extra: &[&str]) -> serde_json::Value;
}

impl WatchdogExt for Watchdog {
    fn start(fx: &Containerd, extra: &[&str]) -> Watchdog {
        let interval = format!("{}ms", INTERVAL.as_millis());
        let misses = MISSES.to_string();
        let mut args = vec!["--interval", interval.as_str(), "--misses", misses.as_str()];
        args.extend_from_slice(extra);
        Watchdog::start_with(fx, &args)
    }

    fn start_with(fx: &Containerd, args: &[&str]) -> Watchdog {
        Watchdog::spawn(&sturdyctl_bin(), fx, args, "debug").expect("start sturdyctl watchdog")
    }

    async fn wait_log(&self, needles: &[&str], limit: Duration) {
        let ok = until(limit, || self.logged(needles)).await;
        assert!(
            ok,
            "the watchdog never logged {needles:?} within {limit:?}; its log:\n{}",
            self.log()
        );
    }

    async fn wait_watching(&self, address: &str, pid: i32) {
        self.wait_log(
            &["watching shim", address, &format!("pid {pid} ")],
            Duration::from_secs(15),
        )
        .await;
    }

    async fn wait_finished(&self, address: &str, limit: Duration) -> Vec<serde_json::Value> {
        let ok = until(limit, || self.finished(address)).await;
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

    fn status_json(&self, fx: &Containerd, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.status(fx, &args).expect("run sturdyctl status");
        assert!(
            out.status.success(),
            "sturdyctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }
}

/// Busy-loop processes keeping both cores busy; killed by PID on drop.
pub struct Hogs(pub Vec<Child>);

impl Hogs {
    pub fn start(n: usize) -> Hogs {
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

/// Milliseconds since the Unix epoch (the journal's clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls PodSandboxStatus until the pod is in state `want`; returns the last state seen.
pub async fn wait_pod_state(
    cri: &mut Cri,
    id: &str,
    want: PodSandboxState,
    limit: Duration,
) -> Option<i32> {
    let end = Instant::now() + limit;
    let mut state = None;
    loop {
        if let Ok(st) = cri.pod_status(id).await {
            state = Some(st.state);
        }
        if state == Some(want as i32) || Instant::now() >= end {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long until none of `pids` runs, if within `limit`.
pub async fn time_until_gone(pids: &[i32], t0: Instant, limit: Duration) -> Option<Duration> {
    until(limit, || pids.iter().all(|p| !running(*p)))
        .await
        .then(|| t0.elapsed())
}

/// Waits until `pids` stop running and prints how long that took and how long until they
/// fully exited (which includes PID 1's reaping of the dead shim's orphans on this host).
pub async fn measure(label: &str, pids: &[i32], t0: Instant) -> Duration {
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

/// The socket file of a shim address.
pub fn socket_file(address: &str) -> PathBuf {
    PathBuf::from(address.trim_start_matches("unix://"))
}

/// Removes the socket of a shim this test killed, once nothing listens on it (a killed
/// shim cannot remove it, and containerd alone leaves the Go shim's behind).
pub fn remove_stale_socket(address: &str) {
    let path = socket_file(address);
    if let Err(e) = std::os::unix::net::UnixStream::connect(&path) {
        if e.raw_os_error() == Some(libc::ECONNREFUSED) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Sends SIGCONT to a stopped shim on drop (if it still runs), so a failed test's teardown
/// can talk to it.
pub struct Resume(pub i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let is_shim = procfs_cmdline(self.0).iter().any(|a| a == "-id");
        if cleanup::pid_alive(self.0) && is_shim {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
        }
    }
}

/// Collects (topic, payload) of containerd's task exit events from now on.
pub async fn follow_exits(fx: &Containerd) -> Arc<Mutex<Vec<(String, Vec<u8>)>>> {
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
pub fn saw_exit(seen: &Mutex<Vec<(String, Vec<u8>)>>, id: &str) -> bool {
    seen.lock()
        .unwrap()
        .iter()
        .any(|(_, p)| p.windows(id.len()).any(|w| w == id.as_bytes()))
}

/// Whether the journal `entries` have a successful `delete {id}` step.
pub fn delete_ok(entries: &[serde_json::Value], id: &str) -> bool {
    entries
        .iter()
        .any(|e| e["step"] == format!("delete {id}") && e["ok"] == true)
}

/// The `finished` entry of an incident's journal `entries`, of which there must be one.
#[track_caller]
pub fn only_finished(entries: &[serde_json::Value]) -> &serde_json::Value {
    let finished: Vec<_> = entries
        .iter()
        .filter(|e| e["phase"] == "finished")
        .collect();
    assert_eq!(finished.len(), 1, "{entries:#?}");
    finished[0]
}

pub fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("{sig} to {pid}: {e}"));
}

pub async fn assert_pod_cleaned(
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
    let socket = socket_file(&pod.address);
    assert!(
        until(Duration::from_secs(10), || !socket.exists()).await,
        "the dead shim's socket {} is left behind",
        socket.display()
    );
}

/// Waits until CRI reports every container of `pod` but its sandbox exited: containerd 1.7
/// and 2.1 handle a dead shim's TaskExit in CRI only on a retry (the first try fails to
/// delete the task over the closed connection), seconds later, and refuse to remove a
/// container they still think runs until then.
pub async fn wait_cri_containers_exited(cri: &mut Cri, pod: &Pod, limit: Duration) {
    use sturdy_integration::k8s_cri::v1::ContainerState;
    for id in pod.all.iter().filter(|id| **id != pod.id) {
        let end = Instant::now() + limit;
        loop {
            let state = cri.container_status(id).await.ok().map(|s| s.state);
            if state == Some(ContainerState::ContainerExited as i32) {
                break;
            }
            assert!(
                Instant::now() < end,
                "CRI never saw container {id} exit (state {state:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
