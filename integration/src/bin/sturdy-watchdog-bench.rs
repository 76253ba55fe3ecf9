//! Benchmark of `sturdyctl watchdog` against one private containerd 1.6: its footprint
//! while it watches many pods at the default timing, and how long recoveries of dead
//! (SIGKILL) and hung (SIGSTOP) shims take, sturdy's and the Go shim's, beside containerd
//! alone (no watchdog running).
//!
//! Usage: `sturdy-watchdog-bench [--pods 100] [--recoveries 10] [--idle-secs 60]
//! [--alone-hung-secs 30]` (scripts/bench-watchdog.sh builds the release binaries and runs
//! this with `STURDYCTL_BIN` and `STURDY_SHIM_BIN` pointing at them). Half the pods run
//! under sturdy, half under the Go shim; every pod has a sandbox and one container.
//!
//! Times are from the signal to the shim. "Stopped": no process of the pod runs any more
//! (exited, a zombie, or in the kernel's exit path). "Exited": every one of them is a
//! zombie or gone (the kernel is done with it but for the reaping). "Gone": every one of
//! them has left /proc (reaped; the dead shim's orphans wait for PID 1). "NotReady": CRI's
//! PodSandboxStatus says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::containerd::workspace_dir;
use sturdy_integration::k8s_cri::v1::PodSandboxState;
use sturdy_integration::measure::{arg, mem_of};
use sturdy_integration::until;
use sturdy_integration::watchdog::Watchdog;
use sturdy_integration::{cleanup, container_config, Containerd, Cri, Handler, CRI_NAMESPACE};

const INTERVAL: &str = "2s";
const MISSES: u32 = 3;

fn sturdyctl_bin() -> PathBuf {
    std::env::var_os("STURDYCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/release/sturdyctl"))
}

struct Pod {
    id: String,
    shim: i32,
    address: String,
    pids: Vec<i32>,
}

async fn run_pod(fx: &Containerd, cri: &mut Cri, h: Handler, name: &str) -> Pod {
    // Host network: the bench measures shims and the watchdog, not CNI, and needs more pods
    // than the fixture's /28 has addresses.
    let cfg = fx.host_network_pod_config(name);
    let id = cri.run_pod(h, &cfg).await.expect("RunPodSandbox");
    let c = cri
        .create_container(&id, container_config("main", &["/bin/sleep", "3600"]), &cfg)
        .await
        .expect("CreateContainer");
    cri.start_container(&c).await.expect("StartContainer");
    let shim = fx.shim_pid(CRI_NAMESPACE, &id).expect("shim pid");
    let address = fx
        .bundle(CRI_NAMESPACE, &id)
        .and_then(|b| b.address)
        .expect("shim address");
    let mut pids = Vec::new();
    for task in [&id, &c] {
        let path = fx
            .bundle(CRI_NAMESPACE, task)
            .and_then(|b| b.cgroups_path)
            .expect("cgroupsPath");
        for dir in cleanup::cgroup_dirs(&path) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    assert!(pids.len() >= 2, "pod {id}: processes {pids:?}");
    Pod {
        id,
        shim,
        address,
        pids,
    }
}

/// StopPodSandbox and RemovePodSandbox until both succeed (a hung shim is killed first).
async fn remove_pod(cri: &mut Cri, pod: &Pod) {
    if cleanup::pid_alive(pod.shim) {
        let _ = kill(Pid::from_raw(pod.shim), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pod.shim), Signal::SIGCONT);
    }
    for _ in 0..150 {
        if cri.stop_pod(&pod.id).await.is_ok() && cri.remove_pod(&pod.id).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("pod {} could not be removed", pod.id);
}

/// Not running: gone, a zombie, or in the kernel's exit path (PF_EXITING).
fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let flags: u64 = f.get(6).and_then(|x| x.parse().ok()).unwrap_or(0);
    !matches!(f.first().copied(), Some("Z") | Some("X") | None) && flags & 0x4 == 0
}

fn in_proc(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A zombie or gone: exited, possibly not yet reaped.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X"),
    }
}

/// Milliseconds from the signal until each condition, `None` if not within `limit`.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    stopped: Option<u128>,
    exited: Option<u128>,
    gone: Option<u128>,
    not_ready: Option<u128>,
}

async fn observe(cri: &mut Cri, pod: &Pod, t0: Instant, limit: Duration) -> Timing {
    let mut t = Timing::default();
    let mut next_cri = Instant::now();
    while t0.elapsed() < limit {
        let ms = t0.elapsed().as_millis();
        if t.stopped.is_none() && !pod.pids.iter().any(|p| running(*p)) {
            t.stopped = Some(ms);
        }
        if t.exited.is_none() && pod.pids.iter().all(|p| exited(*p)) {
            t.exited = Some(ms);
        }
        if t.gone.is_none() && !pod.pids.iter().any(|p| in_proc(*p)) {
            t.gone = Some(ms);
        }
        if t.not_ready.is_none() && Instant::now() >= next_cri {
            next_cri = Instant::now() + Duration::from_millis(20);
            if let Ok(st) = cri.pod_status(&pod.id).await {
                if st.state == PodSandboxState::SandboxNotready as i32 {
                    t.not_ready = Some(t0.elapsed().as_millis());
                }
            }
        }
        if t.stopped.is_some() && t.gone.is_some() && t.not_ready.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    Kill,
    Stop,
}

async fn recover_once(
    fx: &Containerd,
    cri: &mut Cri,
    wd: Option<&Watchdog>,
    h: Handler,
    how: Break,
    n: usize,
    limit: Duration,
) -> Timing {
    let pod = run_pod(fx, cri, h, &format!("rec-{}-{how:?}-{n}", h.name())).await;
    if let Some(wd) = wd {
        let watched = until(Duration::from_secs(20), || {
            wd.watching(&pod.address, pod.shim)
        })
        .await;
        assert!(watched, "never watched");
    }
    let sig = match how {
        Break::Kill => Signal::SIGKILL,
        Break::Stop => Signal::SIGSTOP,
    };
    kill(Pid::from_raw(pod.shim), sig).expect("signal the shim");
    let t0 = Instant::now();
    let timing = observe(cri, &pod, t0, limit).await;
    if let Some(wd) = wd {
        until(Duration::from_secs(30), || wd.finished(&pod.address)).await;
    }
    remove_pod(cri, &pod).await;
    // The Go shim leaves its socket behind when containerd alone cleans up.
    if let Some(sock) = cleanup::socket_from_address(&pod.address) {
        if let Err(e) = std::os::unix::net::UnixStream::connect(&sock) {
            if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                let _ = std::fs::remove_file(&sock);
            }
        }
    }
    timing
}

fn summary(v: &[Option<u128>]) -> String {
    let mut ok: Vec<u128> = v.iter().flatten().copied().collect();
    let missing = v.len() - ok.len();
    if ok.is_empty() {
        return "never".into();
    }
    ok.sort_unstable();
    let s = format!("{} ({}–{})", ok[ok.len() / 2], ok[0], ok[ok.len() - 1]);
    if missing > 0 {
        format!("{s}; {missing} of {} never", v.len())
    } else {
        s
    }
}

/// CPU time of every thread of `pid`, in nanoseconds (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: i32) -> u64 {
    let dir = format!("/proc/{pid}/task");
    cleanup::read_dir_names(Path::new(&dir))
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("{dir}/{t}/schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// (RSS, PSS) in KiB; zero when smaps_rollup cannot be read.
fn mem_kib(pid: i32) -> (u64, u64) {
    let m = mem_of(pid).unwrap_or_default();
    (m.rss, m.pss)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pods = arg(&args, "--pods", 100) as usize;
    let recoveries = arg(&args, "--recoveries", 10) as usize;
    let idle = Duration::from_secs(arg(&args, "--idle-secs", 60));
    let alone_hung = Duration::from_secs(arg(&args, "--alone-hung-secs", 30));
    assert!(
        sturdyctl_bin().is_file(),
        "{} missing",
        sturdyctl_bin().display()
    );

    let fx = Containerd::start().await.expect("start private containerd");
    let mut cri = fx.cri().await.expect("cri");
    println!("# sturdyctl watchdog benchmark");
    println!();
    println!(
        "sturdyctl {}, shim {}, containerd {}; watchdog at --interval {INTERVAL} --misses {MISSES}, \
         watching io.containerd.sturdy.v2 and io.containerd.runc.v2",
        sturdyctl_bin().display(),
        fx.shim_bin().display(),
        fx.version().await.unwrap_or_default()
    );
    // Both runtimes at the default timing, at the default log level.
    let misses = MISSES.to_string();
    let args = [
        "--runtime",
        "io.containerd.runc.v2",
        "--interval",
        INTERVAL,
        "--misses",
        &misses,
    ];
    let mut wd = Watchdog::spawn(&sturdyctl_bin(), &fx, &args, "info").expect("start the watchdog");
    let mut background = Vec::new();
    for i in 0..pods {
        let h = if i % 2 == 0 {
            Handler::Sturdy
        } else {
            Handler::Runc
        };
        background.push(run_pod(&fx, &mut cri, h, &format!("idle-{i}")).await);
    }
    // Polled slowly: each check reads the whole log once per pod.
    let end = Instant::now() + Duration::from_secs(60);
    while !background.iter().all(|p| wd.watching(&p.address, p.shim)) {
        assert!(Instant::now() < end, "the watchdog never watched every pod");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settled: the scan after the last start is over.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (rss0, _) = mem_kib(wd.pid());
    let cpu0 = cpu_ns(wd.pid());
    let t0 = Instant::now();
    let mut rss_max = rss0;
    while t0.elapsed() < idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(mem_kib(wd.pid()).0);
    }
    let cpu = cpu_ns(wd.pid()) - cpu0;
    let wall = t0.elapsed();
    let (rss1, pss1) = mem_kib(wd.pid());
    println!();
    println!(
        "## Footprint, {pods} pods watched ({} sturdy, {} Go shim), over {} s",
        pods.div_ceil(2),
        pods / 2,
        wall.as_secs()
    );
    println!();
    println!(
        "| RSS at start | RSS max | RSS at end | PSS at end | CPU time | CPU share of one core |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {rss0} KiB | {rss_max} KiB | {rss1} KiB | {pss1} KiB | {} ms | {:.2} % |",
        cpu / 1_000_000,
        cpu as f64 / wall.as_nanos() as f64 * 100.0
    );

    if recoveries > 0 {
        recoveries_report(&fx, &mut cri, &mut wd, pods, recoveries, alone_hung).await;
    }
    wd.stop();
    for p in &background {
        remove_pod(&mut cri, p).await;
    }
    drop(fx);
}

/// Breaks shims `recoveries` times each way, with the watchdog and without it, and prints
/// the recovery times.
async fn recoveries_report(
    fx: &Containerd,
    cri: &mut Cri,
    wd: &mut Watchdog,
    pods: usize,
    recoveries: usize,
    alone_hung: Duration,
) {
    let mut rows = Vec::new();
    for (how, label) in [(Break::Kill, "SIGKILL"), (Break::Stop, "SIGSTOP")] {
        for h in [Handler::Sturdy, Handler::Runc] {
            let mut t = Vec::new();
            for n in 0..recoveries {
                let limit = Duration::from_secs(30);
                t.push(recover_once(fx, cri, Some(&*wd), h, how, n, limit).await);
            }
            rows.push((label, h, "watchdog", t));
        }
    }
    wd.stop();
    for (how, label) in [(Break::Kill, "SIGKILL"), (Break::Stop, "SIGSTOP")] {
        for h in [Handler::Sturdy, Handler::Runc] {
            let (count, limit) = match how {
                Break::Kill => (recoveries, Duration::from_secs(30)),
                Break::Stop => (1, alone_hung),
            };
            let mut t = Vec::new();
            for n in 0..count {
                t.push(recover_once(fx, cri, None, h, how, n, limit).await);
            }
            rows.push((label, h, "containerd alone", t));
        }
    }
    println!();
    println!(
        "## Recoveries, {pods} pods watched: ms from the signal, median (min–max) of {recoveries}"
    );
    println!();
    println!(
        "| shim | signal | who | pod processes stopped | exited (zombies) | gone from /proc | CRI NotReady |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    for (label, h, who, t) in &rows {
        let name = match h {
            Handler::Sturdy => "sturdy",
            Handler::Runc => "Go (runc v2)",
        };
        let runs = if t.len() == 1 {
            format!(" (1 run, {} s limit)", alone_hung.as_secs())
        } else {
            String::new()
        };
        println!(
            "| {name} | {label} | {who}{runs} | {} | {} | {} | {} |",
            summary(&t.iter().map(|x| x.stopped).collect::<Vec<_>>()),
            summary(&t.iter().map(|x| x.exited).collect::<Vec<_>>()),
            summary(&t.iter().map(|x| x.gone).collect::<Vec<_>>()),
            summary(&t.iter().map(|x| x.not_ready).collect::<Vec<_>>()),
        );
    }
}
