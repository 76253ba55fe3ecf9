//! Exec storm (issue 9): 100 ExecSync calls at once into one container all complete with
//! their own output, and afterwards the shim's open fds and resident memory come back to
//! what they were before the storm.

use std::time::{Duration, Instant};

use sturdy_integration::{
    container_config, parity_tests, until, Containerd, Cri, Handler, CRI_NAMESPACE,
};

const EXECS: usize = 100;
/// Longest one ExecSync may take while 99 others compete for 2 cores.
const EXEC_LIMIT: Duration = Duration::from_secs(180);
/// How long the shim may take to settle after the storm.
const SETTLE: Duration = Duration::from_secs(60);
/// How long fds and RSS must stay unchanged to count as the baseline.
const QUIET: Duration = Duration::from_secs(1);
/// Resident memory sturdy may keep above its baseline after a storm. Measured on a debug
/// build: its heap goes from ~250 KiB to ~1 MiB resident after the first storm (trimmed,
/// so pages still holding some live allocation, and capacity that maps and queues grew
/// to), total RSS +0.65 to +1.3 MiB; 6 storms in a row: +0.7, then +0.06 to +0.12 MiB
/// each, levelling off. On a busy machine more execs are in flight at once and more stays:
/// +0.7 and +1.25 MiB after the first storm, +1.7 MiB after a second one that peaked at 416
/// fds (nearly all 100 execs at once, the most a storm can hold). Keeping the peak (no
/// trim) would be +5 to 7 MiB.
const RSS_SLACK_KIB: u64 = 2560;
/// Storms sturdy goes through.
const STORMS: usize = 8;
/// What the later half of the storms may keep above the earlier half (the lowest of each,
/// the shim held still after each storm). Settled RSS wanders from storm to storm and does
/// not grow: 14 storms in a row on a loaded machine settled at 15132, 15404, 15208, 15288,
/// 15280, 15540, 15328, 15584, 15760, 15460, 15580, 15316, 15308, 15332 KiB (1400 execs,
/// +200 KiB). One busy run's settled RSS rose by 1 MiB over four storms whose peaks rose from
/// 290 to 446 fds (more execs in flight, more kept), hence 1 MiB. A leak of 2.5 KiB per exec
/// (250 KiB a storm) opens that much between the halves; over eight storms RSS_SLACK_KIB
/// catches one of 2 KiB per exec.
const LEAK_SLACK_KIB: u64 = 1024;

/// Open fds of `pid`.
fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The memory lines of `pid`'s status, for the log.
fn memory(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Rss") || l.starts_with("VmData"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the mappings of `pid` holding more than 32 KiB resident, for a failure report.
fn dump_smaps(pid: i32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut header = "";
    for line in text.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-'))
        {
            header = line;
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if kib > 32 {
                eprintln!("  {kib:>6} KiB  {header}");
            }
        }
    }
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn exec_marker(mut cri: Cri, ctr: String, i: usize) -> (usize, String, String, i32) {
    let marker = format!("marker-{i}");
    let script = format!("echo {marker}; echo {marker}-err >&2");
    // CRI's own timeout starts only once the exec started: bound the whole call too.
    let out = tokio::time::timeout(
        EXEC_LIMIT + Duration::from_secs(30),
        cri.exec_sync(&ctr, &["/bin/sh", "-c", &script], EXEC_LIMIT),
    )
    .await
    .unwrap_or_else(|_| panic!("ExecSync {i} never returned"))
    .unwrap_or_else(|e| panic!("ExecSync {i}: {e}"));
    (i, out.stdout, out.stderr, out.exit_code)
}

/// Runs `EXECS` ExecSyncs at once, checks every output, and logs the shim's peak.
async fn storm(h: Handler, cri: &Cri, ctr: &str, shim: i32) {
    let t = Instant::now();
    let storm: Vec<_> = (0..EXECS)
        .map(|i| tokio::spawn(exec_marker(cri.clone(), ctr.to_string(), i)))
        .collect();
    let (mut peak_fds, mut peak_rss) = (0, 0);
    let mut results = Vec::new();
    for task in storm {
        while !task.is_finished() {
            peak_fds = peak_fds.max(fds(shim));
            peak_rss = peak_rss.max(rss_kib(shim));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        results.push(task.await.expect("exec task"));
    }
    eprintln!(
        "{h}: {EXECS} execs in {:?}; peak {peak_fds} fds, {peak_rss} KiB RSS, {} threads",
        t.elapsed(),
        threads(shim)
    );
    for (i, stdout, stderr, code) in results {
        assert_eq!(code, 0, "exec {i}: {stderr}");
        assert_eq!(stdout, format!("marker-{i}\n"), "exec {i}");
        assert_eq!(stderr, format!("marker-{i}-err\n"), "exec {i}");
    }
}

/// Waits until the shim holds at most `fds` fds and `rss` KiB; returns what it holds then
/// (or at the deadline) and whether it got there.
async fn settle(h: Handler, shim: i32, fds_max: usize, rss_max: u64) -> (usize, u64, bool) {
    let t = Instant::now();
    let ok = loop {
        if fds(shim) <= fds_max && rss_kib(shim) <= rss_max {
            break true;
        }
        if t.elapsed() > SETTLE {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let now = (fds(shim), rss_kib(shim));
    eprintln!(
        "{h}: after {:?}: {} fds, {} KiB RSS, {} threads; {}",
        t.elapsed(),
        now.0,
        now.1,
        threads(shim),
        memory(shim)
    );
    if !ok {
        dump_smaps(shim);
    }
    (now.0, now.1, ok)
}

/// The shim's fds and RSS once unchanged for QUIET (within SETTLE).
async fn held_still(h: Handler, shim: i32) -> (usize, u64) {
    let mut last = (fds(shim), rss_kib(shim));
    let mut since = Instant::now();
    let still = until(SETTLE, || {
        let now = (fds(shim), rss_kib(shim));
        if now != last {
            (last, since) = (now, Instant::now());
        }
        since.elapsed() >= QUIET
    })
    .await;
    assert!(
        still,
        "{h}: shim {shim} never held still for {QUIET:?} within {SETTLE:?}: {last:?}"
    );
    last
}

parity_tests! {
    /// Every exec answers with its own marker. For sturdy the storm runs eight times; each
    /// time the shim's fds come back to the baseline and its RSS to within allocator slack
    /// of it, and the later storms add (nearly) nothing to the earlier ones (no leak). For the Go
    /// shim (one storm: it takes 2 to 2.7 minutes here, as it holds one lock across every
    /// exec Start's `runc exec`) fds and RSS are only logged: measured 60 s after the
    /// storm, its fds were back at the baseline in one run of four and 2 to 6 above it in
    /// the others, its RSS 0.9 to 1.8 MiB above it (the Go runtime keeps freed heap).
    async fn exec_storm(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let pod_config = fx.pod_config("storm");
        let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");
        let ctr = cri
            .create_container(&pod, container_config("main", &["/bin/sleep", "3600"]), &pod_config)
            .await
            .expect("CreateContainer");
        cri.start_container(&ctr).await.expect("StartContainer");
        let shim = fx.shim_pid(CRI_NAMESPACE, &pod).expect("the pod's shim");

        // Warm up: the first exec sets up what every later one reuses.
        for i in 0..3 {
            let (_, out, _, code) = exec_marker(cri.clone(), ctr.clone(), i).await;
            assert_eq!((out.as_str(), code), (format!("marker-{i}\n").as_str(), 0));
        }
        // The baseline: fds and RSS once unchanged for QUIET (sturdy trims its heap 200 ms
        // after the warm-up's last delete).
        let (base_fds, base_rss) = held_still(h, shim).await;
        eprintln!("{h}: shim {shim} before: {base_fds} fds, {base_rss} KiB RSS, {} threads; {}", threads(shim), memory(shim));

        let rounds = if h == Handler::Sturdy { STORMS } else { 1 };
        let mut after = Vec::new();
        for _ in 0..rounds {
            storm(h, &cri, &ctr, shim).await;
            let (fds_now, rss_now, ok) = settle(h, shim, base_fds, base_rss + RSS_SLACK_KIB).await;
            let report = format!(
                "{h}: shim did not return to its baseline within {SETTLE:?}: fds {base_fds} -> {fds_now}, RSS {base_rss} -> {rss_now} KiB"
            );
            match h {
                Handler::Sturdy => assert!(ok, "{report}"),
                // Measured, not required: see the doc comment.
                Handler::Runc if !ok => eprintln!("{report}"),
                Handler::Runc => {}
            }
            // Compared once the shim holds still: right after the storm its heap trim
            // (200 ms after the last delete) may not have run yet.
            after.push(if ok && h == Handler::Sturdy { held_still(h, shim).await.1 } else { rss_now });
        }
        eprintln!("{h}: RSS after each storm: {after:?} KiB");
        let (earlier, later) = after.split_at(after.len() / 2);
        if let (Some(earlier), Some(later)) = (earlier.iter().min(), later.iter().min()) {
            assert!(
                *later <= earlier + LEAK_SLACK_KIB,
                "{h}: RSS kept growing over the storms: the later ones settled {} KiB above the earlier ones ({after:?} KiB)",
                later.saturating_sub(*earlier)
            );
        }
        cri.stop_pod(&pod).await.expect("StopPodSandbox");
        cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    }
}
