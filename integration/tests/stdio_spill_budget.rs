//! Output nobody reads is spilled to files in the bundle (tmpfs: RAM outside the pod's
//! limit). Per stream that is capped, and per shim all spill files together stay within the
//! shim's spill budget: several execs flooding FIFOs that nobody opens make the shim hold
//! at most the budget in spill files, the rest waits in the writers (back-pressure), and
//! once readers come every byte arrives in order and the execs end normally.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetRequest, StartRequest, WaitRequest,
};
use containerd_client::with_namespace;
use sturdy_integration::{until, Containerd, Handler};
use tonic::Request;

/// The shim's spill budget (`sturdy_shim::io::OUTPUT_SPILL_BUDGET`).
const BUDGET: u64 = 128 << 20;
/// Execs flooding at once.
const EXECS: usize = 5;
/// Each prints `seq 1 LINES`: 30.9 MB, under the per-stream cap (32 MiB), 155 MB in all,
/// well over the budget.
const LINES: u64 = 4_000_000;
/// Longest a step may take on a loaded 2-core machine.
const T: Duration = Duration::from_secs(120);

/// Name prefix of the shim's stdio spill files (unlinked right after creation).
const SPILL_PREFIX: &str = ".sturdy-stdio-spill-";

/// Bytes in the spill files the process `pid` has open.
fn spill_bytes(pid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| {
        let fd = e.ok()?.path();
        let target = std::fs::read_link(&fd).ok()?;
        target
            .to_string_lossy()
            .contains(SPILL_PREFIX)
            .then(|| std::fs::metadata(&fd).map_or(0, |m| m.len()))
    })
    .sum()
}

/// Samples the shim's spill bytes on a thread of its own until dropped; keeps the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl Sampler {
    fn start(pid: i32) -> Sampler {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(spill_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler { stop, peak }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether process `pid` (of the host) waits in a pipe write (`pipe_write`, or
/// `anon_pipe_write` on newer kernels).
fn waits_in_pipe_write(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("pipe_write"))
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Reads `seq 1 LINES` from the FIFO at `path` on a thread; returns the bytes that matched
/// before the first difference (or the end).
fn read_seq(path: PathBuf) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        // The shim holds the FIFO read-write, so this open does not wait.
        let mut f = File::open(&path).expect("open stdout fifo");
        let (mut next, mut want, mut at) = (1u64, Vec::new(), 0usize);
        let mut matched = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while next <= LINES || at < want.len() {
            let n = f.read(&mut buf).expect("read fifo");
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if at == want.len() {
                    want.clear();
                    at = 0;
                    if next > LINES {
                        return matched;
                    }
                    want.extend_from_slice(format!("{next}\n").as_bytes());
                    next += 1;
                }
                if b != want[at] {
                    return matched;
                }
                at += 1;
                matched += 1;
            }
        }
        matched
    })
}

/// Bytes `seq 1 n` prints.
fn seq_len(n: u64) -> u64 {
    (1..=n).map(|i| i.to_string().len() as u64 + 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_nobody_reads_stay_within_the_spill_budget() {
    let fx = Containerd::start().await.expect("start containerd");
    let ns = fx.namespace().to_string();
    fx.ctr_run_detached(Handler::Sturdy, "box", &["/bin/sleep", "600"])
        .await
        .expect("ctr run -d");
    let shim = fx.shim_pid(&ns, "box").expect("shim pid");
    let client = fx.client().await.expect("client");
    let spec = fx.container_spec(&ns, "box").await.expect("the spec");
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(["seq", "1", LINES.to_string()]);
    process["terminal"] = serde_json::json!(false);

    let dir = tempfile::Builder::new()
        .prefix("spill-fifos")
        .tempdir_in(fx.dir())
        .expect("fifo dir");
    let fifo = |i: usize| dir.path().join(format!("flood{i}-stdout"));
    let sampler = Sampler::start(shim);
    let mut tasks = client.tasks();
    for i in 0..EXECS {
        nix::unistd::mkfifo(&fifo(i), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let req = ExecProcessRequest {
            container_id: "box".into(),
            stdout: fifo(i).to_string_lossy().into_owned(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process).expect("process json"),
            }),
            exec_id: format!("flood{i}"),
            ..Default::default()
        };
        tasks
            .exec(with_namespace!(req, ns))
            .await
            .expect("Tasks.Exec");
        let req = StartRequest {
            container_id: "box".into(),
            exec_id: format!("flood{i}"),
        };
        tasks
            .start(with_namespace!(req, ns))
            .await
            .expect("Tasks.Start");
    }

    // Nobody reads: the spill files fill up to the budget, never past it, and then every
    // writer that has not finished waits on its full pipe.
    let mut pids = Vec::new();
    for i in 0..EXECS {
        let req = GetRequest {
            container_id: "box".into(),
            exec_id: format!("flood{i}"),
        };
        let p = tasks
            .get(with_namespace!(req, ns))
            .await
            .expect("Tasks.Get")
            .into_inner()
            .process
            .expect("process");
        pids.push(p.pid);
    }
    let mut settled_polls = 0;
    let settled = until(T, || {
        let now = spill_bytes(shim);
        sampler.peak.fetch_max(now, Ordering::Relaxed);
        let settled_now = pids.iter().all(|&p| waits_in_pipe_write(p) || !alive(p));
        let all_done = pids.iter().all(|&p| !alive(p));
        // For a while: a writer is in pipe_write for a moment while the shim copies, too.
        if settled_now && (now >= BUDGET || all_done) {
            settled_polls += 1;
        } else {
            settled_polls = 0;
        }
        settled_polls >= 20
    })
    .await;
    let peak = sampler.peak();
    let held = pids.iter().filter(|&&p| waits_in_pipe_write(p)).count();
    eprintln!(
        "{EXECS} floods of {} bytes without readers: spill files peaked at {peak} bytes \
         (budget {BUDGET}), {held} writers held back",
        seq_len(LINES)
    );
    assert!(settled, "the floods never settled");
    assert!(
        peak <= BUDGET,
        "spill files held {peak} bytes, over the budget"
    );
    assert!(held > 0, "every writer finished: none was held back");

    // The readers come: everything arrives, in order, and the execs end normally.
    let reads: Vec<_> = (0..EXECS).map(|i| read_seq(fifo(i))).collect();
    for i in 0..EXECS {
        let req = WaitRequest {
            container_id: "box".into(),
            exec_id: format!("flood{i}"),
        };
        let status = tokio::time::timeout(T, tasks.wait(with_namespace!(req, ns)))
            .await
            .expect("the exec never ended")
            .expect("Tasks.Wait")
            .into_inner()
            .exit_status;
        assert_eq!(status, 0, "flood{i}");
    }
    let want = seq_len(LINES);
    for (i, read) in reads.into_iter().enumerate() {
        let got = tokio::task::spawn_blocking(move || read.join().expect("reader"))
            .await
            .unwrap();
        assert_eq!(
            got, want,
            "flood{i}: bytes in order before the first difference"
        );
    }
    for i in 0..EXECS {
        let req = DeleteProcessRequest {
            container_id: "box".into(),
            exec_id: format!("flood{i}"),
        };
        tasks
            .delete_process(with_namespace!(req, ns))
            .await
            .expect("Tasks.DeleteProcess");
    }
    assert!(
        until(T, || spill_bytes(shim) == 0).await,
        "spill files left open after every exec was deleted"
    );
    assert!(sampler.peak() <= BUDGET, "peak {}", sampler.peak());
    drop(dir);
}
