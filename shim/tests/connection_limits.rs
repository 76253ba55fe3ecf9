//! The daemon's Task API socket under clients that announce large frames and never finish
//! them: memory stays bounded while they hang on, a real request is still answered, and
//! the memory comes back once they are gone. Runs the real binary; no containerd needed.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{kill_and_wait, run, wait_for};
use containerd_shim_protos::api::ConnectRequest;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::{context, r#async::Client};
use sturdy_shim::listener::{FRAME_BUDGET, MAX_CONNECTIONS, STALL_LIMIT};

const MIB: u64 = 1 << 20;
/// Connections the attack opens: more than the cap, so some wait in the backlog.
const ATTACKERS: usize = 100;
/// What each attacker announces (ttrpc's largest frame) and what it actually sends.
const ANNOUNCED: usize = 4 << 20;
const SENT: usize = ANNOUNCED - (100 << 10);

/// Kills the daemon by the pid it wrote and removes its socket, even after a failed
/// assertion.
struct Daemon {
    pid: i32,
    sock: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_and_wait(self.pid);
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// Resident set of `pid` in bytes (0 once it is gone).
fn rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Starts a daemon for a bundle in `dir`, as containerd would, and returns it once it serves.
fn start_daemon(dir: &Path) -> (Daemon, String) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({ "ociVersion": "1.0.2" }).to_string(),
    )
    .unwrap();
    let address = format!("/tmp/sturdy-conn-{}.sock", std::process::id());
    let args = [
        "-namespace",
        "sturdy-conn-test",
        "-id",
        "conn-limits",
        "-address",
        &address,
        "-publish-binary",
        "/bin/true",
        "start",
    ];
    let env = [("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")];
    let out = run(dir, &args, b"", &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = String::from_utf8(out.stdout).unwrap();
    let pid: i32 = std::fs::read_to_string(dir.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sock = PathBuf::from(addr.strip_prefix("unix://").unwrap());
    (Daemon { pid, sock }, addr)
}

/// One Connect call on a fresh connection; how long it took to be answered.
fn connect_call(rt: &tokio::runtime::Runtime, addr: &str, pid: i32, limit: Duration) -> Duration {
    let began = Instant::now();
    rt.block_on(async {
        let client = TaskClient::new(Client::connect(addr).await.expect("connect"));
        let req = ConnectRequest {
            id: "conn-limits".into(),
            ..Default::default()
        };
        let call = client.connect(context::with_duration(limit), &req);
        let reply = tokio::time::timeout(limit, call)
            .await
            .expect("no answer in time")
            .expect("Connect failed");
        assert_eq!(reply.shim_pid, pid as u32);
    });
    began.elapsed()
}

/// A ttrpc request header announcing `len` payload bytes on stream 1.
fn header(len: usize) -> [u8; 10] {
    let mut h = [0u8; 10];
    h[..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes());
    h[8] = 1;
    h
}

#[test]
fn stalled_large_frames_neither_pin_memory_nor_starve_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = start_daemon(dir.path());
    let pid = daemon.pid;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Warm the daemon up with a real request, so the baseline includes serving one.
    connect_call(&rt, &addr, pid, Duration::from_secs(10));
    let baseline = rss(pid);
    assert!(baseline > 0, "daemon {pid} gone");
    // A whole large frame is still served. It also leaves glibc's mmap threshold raised
    // past 4 MiB, as in any shim that has seen one: from then on such payloads come from
    // the heap, whose freed pages stay resident unless trimmed.
    {
        let mut c = UnixStream::connect(&daemon.sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&header(ANNOUNCED)).unwrap();
        c.write_all(&vec![0u8; ANNOUNCED]).unwrap();
        let mut reply = [0u8; 10];
        c.read_exact(&mut reply)
            .expect("no reply to a whole 4 MiB frame");
        assert_eq!(reply[8], 2, "not a ttrpc response: {reply:?}");
    }

    // Samples the daemon's RSS from now until told to stop; keeps the peak.
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // Every attacker sends a full-size header and most of the payload, then waits.
    let payload = Arc::new(vec![0u8; SENT]);
    let (done_tx, done_rx) = mpsc::channel();
    let mut held = Vec::new();
    for _ in 0..ATTACKERS {
        let conn = UnixStream::connect(&daemon.sock).expect("attacker connect");
        held.push(conn.try_clone().unwrap());
        let (payload, done_tx) = (payload.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut conn = conn;
            // A write cut short by the daemon closing the connection is the point.
            let _ = conn
                .write_all(&header(ANNOUNCED))
                .and_then(|()| conn.write_all(&payload));
            let _ = done_tx.send(());
        });
    }
    drop(done_tx);

    // A real client arriving after the attack, behind it in the accept backlog.
    let waited = connect_call(&rt, &addr, pid, Duration::from_secs(30));
    let served_within = STALL_LIMIT + Duration::from_secs(4);
    assert!(
        waited < served_within,
        "Connect took {waited:?} under the attack (limit {served_within:?})"
    );

    // Every attacker's write ends: absorbed by the daemon, or cut when it closed them.
    let deadline = Instant::now() + STALL_LIMIT * 3 + Duration::from_secs(10);
    for _ in 0..ATTACKERS {
        let left = deadline.saturating_duration_since(Instant::now());
        done_rx
            .recv_timeout(left)
            .expect("an attacker's write neither finished nor was cut");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let bound = baseline + FRAME_BUDGET as u64 + 16 * MIB;
    eprintln!(
        "baseline {} MiB, peak {} MiB under {ATTACKERS} stalled {} MiB frames \
         (cap {MAX_CONNECTIONS}), Connect answered after {waited:?}",
        baseline / MIB,
        peak / MIB,
        ANNOUNCED as u64 / MIB
    );
    assert!(
        peak < bound,
        "daemon RSS peaked at {} MiB (baseline {} MiB, bound {} MiB)",
        peak / MIB,
        baseline / MIB,
        bound / MIB
    );

    // Once the attackers are gone the daemon gives the memory back.
    drop(held);
    // Without a trim the heap would keep what the budget let in (8 MiB here).
    let settled = baseline + 4 * MIB;
    let back = wait_for(Duration::from_secs(10), || rss(pid) < settled);
    eprintln!(
        "after the attack: {} KiB (baseline {} KiB)",
        rss(pid) / 1024,
        baseline / 1024
    );
    assert!(
        back,
        "daemon RSS stayed at {} MiB after the connections closed (baseline {} MiB)",
        rss(pid) / MIB,
        baseline / MIB
    );
    // And it still serves.
    connect_call(&rt, &addr, pid, Duration::from_secs(10));
}
