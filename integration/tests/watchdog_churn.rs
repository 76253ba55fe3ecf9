//! Churn with the watchdog running: 200 pod lifecycles (RunPodSandbox, CreateContainer,
//! StartContainer, ExecSync, StopContainer, RemoveContainer, StopPodSandbox,
//! RemovePodSandbox), 4 in flight, and in a third of them the shim is SIGKILLed at a
//! random moment: after create, after start, during the exec or during the stop. The
//! kubelet's part is then played as it would: the remaining calls are made (their errors
//! tolerated) and the pod is stopped and removed until that succeeds. Afterwards nothing
//! may be left: processes, mounts, cgroups, bundles, runc state, shim sockets, network
//! namespaces, pod IPs; every incident is finished and concerns a killed shim.
//!
//! The plan comes from a seeded RNG: `STURDY_CHURN_SEED=<seed>` replays one (the seed is
//! printed), `STURDY_CHURN_LIFECYCLES=<n>` changes the count.

mod watchdog_support;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sturdy_integration::{cleanup, container_config, Containerd, Cri, Handler, CRI_NAMESPACE};
use watchdog_support::*;

/// splitmix64: small, seedable, good enough to spread kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KillAt {
    AfterCreate,
    AfterStart,
    DuringExec,
    DuringStop,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    n: usize,
    kill: Option<KillAt>,
    /// Into the exec or the stop, for the kills during them.
    delay: Duration,
}

fn plan(seed: u64, lifecycles: usize) -> Vec<Plan> {
    let mut rng = Rng(seed);
    let mut plans: Vec<Plan> = (0..lifecycles)
        .map(|n| Plan {
            n,
            kill: None,
            delay: Duration::ZERO,
        })
        .collect();
    // A third of them, chosen at random, the four moments in turn.
    let mut order: Vec<usize> = (0..lifecycles).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let moments = [
        KillAt::AfterCreate,
        KillAt::AfterStart,
        KillAt::DuringExec,
        KillAt::DuringStop,
    ];
    for (k, &i) in order.iter().take(lifecycles / 3).enumerate() {
        let at = moments[k % moments.len()];
        plans[i].kill = Some(at);
        // The exec runs 1.5 s and the stop waits 2 s for a process ignoring SIGTERM.
        let span = if at == KillAt::DuringStop { 1800 } else { 1300 };
        plans[i].delay = Duration::from_millis(20 + rng.below(span));
    }
    plans
}

/// What the lifecycles recorded, for the checks at the end.
#[derive(Default)]
struct Record {
    sockets: BTreeSet<PathBuf>,
    netns: BTreeSet<PathBuf>,
    killed: Vec<(String, KillAt)>,
    failures: Vec<String>,
    /// From the SIGKILL until the pod's processes stopped running (ms).
    stopped_ms: Vec<u128>,
}

async fn lifecycle(fx: &Containerd, cri: &mut Cri, p: Plan, record: &RefCell<Record>) {
    let fail = |what: String| record.borrow_mut().failures.push(what);
    let cfg = fx.pod_config(&format!("churn-{}", p.n));
    let pod = match cri.run_pod(Handler::Sturdy, &cfg).await {
        Ok(id) => id,
        Err(e) => return fail(format!("#{}: RunPodSandbox: {e}", p.n)),
    };
    let shim = fx.shim_pid(CRI_NAMESPACE, &pod);
    let address = fx.bundle(CRI_NAMESPACE, &pod).and_then(|b| b.address);
    if let Some(a) = &address {
        record.borrow_mut().sockets.insert(socket_file(a));
    }
    if let Ok(Some(ns)) = cri.pod_netns(&pod).await {
        record.borrow_mut().netns.insert(ns);
    }
    let (Some(shim), Some(address)) = (shim, address) else {
        fail(format!("#{}: pod {pod} has no shim", p.n));
        return remove_pod(cri, &pod, p, record).await;
    };
    let killed = std::cell::Cell::new(false);
    let kill = |at: KillAt| {
        if p.kill == Some(at) && !killed.replace(true) {
            let mut ids = vec![pod.clone()];
            ids.extend(
                cleanup::bundles(&fx.state_dir())
                    .into_iter()
                    .filter(|b| b.address.as_deref() == Some(address.as_str()))
                    .map(|b| b.id),
            );
            let pids = cgroup_pids(fx, &ids);
            signal(shim, Signal::SIGKILL);
            record.borrow_mut().killed.push((address.clone(), at));
            Some((Instant::now(), pids))
        } else {
            None
        }
    };
    let mut victim = None;
    let tolerate = |res: Result<(), String>, killed: bool| {
        if let Err(e) = res {
            if !killed {
                record.borrow_mut().failures.push(e);
            }
        }
    };

    let command: &[&str] = if p.kill == Some(KillAt::DuringStop) {
        // PID 1 of its namespace: SIGTERM is ignored, so the stop waits its timeout.
        &["/bin/sleep", "3600"]
    } else {
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
        ]
    };
    let created = cri
        .create_container(&pod, container_config("main", command), &cfg)
        .await;
    let ctr = match created {
        Ok(c) => c,
        Err(e) => {
            fail(format!("#{}: CreateContainer: {e}", p.n));
            return remove_pod(cri, &pod, p, record).await;
        }
    };
    victim = victim.or(kill(KillAt::AfterCreate));
    let res = cri.start_container(&ctr).await;
    tolerate(
        res.map_err(|e| format!("#{}: StartContainer: {e}", p.n)),
        killed.get(),
    );
    victim = victim.or(kill(KillAt::AfterStart));

    if p.kill == Some(KillAt::DuringExec) {
        let exec = cri.exec_sync(&ctr, &["/bin/sleep", "1.5"], Duration::from_secs(10));
        let (res, v) = tokio::join!(exec, async {
            tokio::time::sleep(p.delay).await;
            kill(KillAt::DuringExec)
        });
        victim = victim.or(v);
        if let Ok(out) = res {
            // The exec may have ended just before the kill.
            if out.exit_code != 0 {
                println!(
                    "#{}: exec ended with {} around the kill",
                    p.n, out.exit_code
                );
            }
        }
    } else {
        match cri
            .exec_sync(&ctr, &["/bin/echo", "ok"], Duration::from_secs(10))
            .await
        {
            Ok(out) if out.stdout == "ok\n" => {}
            Ok(out) if !killed.get() => fail(format!("#{}: ExecSync gave {out:?}", p.n)),
            Err(e) if !killed.get() => fail(format!("#{}: ExecSync: {e}", p.n)),
            _ => {}
        }
    }

    if p.kill == Some(KillAt::DuringStop) {
        let stop = cri.stop_container(&ctr, 2);
        let (res, v) = tokio::join!(stop, async {
            tokio::time::sleep(p.delay).await;
            kill(KillAt::DuringStop)
        });
        victim = victim.or(v);
        // It may fail with the shim gone, or succeed if the stop ended first.
        let _ = res;
    } else {
        let res = cri.stop_container(&ctr, 0).await;
        tolerate(
            res.map_err(|e| format!("#{}: StopContainer: {e}", p.n)),
            killed.get(),
        );
    }
    if let Some((t0, pids)) = victim {
        if let Some(d) = time_until_gone(&pids, t0, Duration::from_secs(10)).await {
            record.borrow_mut().stopped_ms.push(d.as_millis());
        } else {
            fail(format!(
                "#{}: pod processes {pids:?} ran 10 s after the kill",
                p.n
            ));
        }
    }
    let res = cri.remove_container(&ctr).await;
    tolerate(
        res.map_err(|e| format!("#{}: RemoveContainer: {e}", p.n)),
        killed.get(),
    );
    remove_pod(cri, &pod, p, record).await;
}

/// StopPodSandbox and RemovePodSandbox, retried as the kubelet does until they succeed.
async fn remove_pod(cri: &mut Cri, pod: &str, p: Plan, record: &RefCell<Record>) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < end {
        match cri.stop_pod(pod).await {
            Ok(()) => match cri.remove_pod(pod).await {
                Ok(()) => return,
                Err(e) => last = format!("RemovePodSandbox: {e}"),
            },
            Err(e) => last = format!("StopPodSandbox: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    record.borrow_mut().failures.push(format!(
        "#{}: pod {pod} not removed within 60 s: {last}",
        p.n
    ));
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_killed_shims_leaks_nothing() {
    let seed = std::env::var("STURDY_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() ^ u64::from(std::process::id()));
    let lifecycles = std::env::var("STURDY_CHURN_LIFECYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    println!("churn: {lifecycles} lifecycles, seed {seed} (replay: STURDY_CHURN_SEED={seed})");
    let plans = plan(seed, lifecycles);

    let fx = Containerd::start().await.expect("start containerd");
    let wd = Watchdog::start(&fx, &[]);
    wd.wait_log(&["watching shims of"], Duration::from_secs(10))
        .await;
    let baseline_mounts = cleanup::mounts_under(fx.dir());
    let record = RefCell::new(Record::default());
    let queue = RefCell::new(plans.iter().copied());
    let t0 = Instant::now();
    let worker = || async {
        let mut cri = fx.cri().await.expect("cri client");
        loop {
            let next = queue.borrow_mut().next();
            let Some(p) = next else { break };
            lifecycle(&fx, &mut cri, p, &record).await;
        }
    };
    // Four pods in flight.
    tokio::join!(worker(), worker(), worker(), worker());
    let churn = t0.elapsed();

    let record = record.into_inner();
    let mut by_moment = std::collections::BTreeMap::new();
    for (_, at) in &record.killed {
        *by_moment.entry(format!("{at:?}")).or_insert(0) += 1;
    }
    let mut stopped = record.stopped_ms.clone();
    println!(
        "churn: {lifecycles} lifecycles in {:.1} s, {} shims killed ({by_moment:?}); \
         pod processes stopped after the kill: median {} ms, max {} ms",
        churn.as_secs_f64(),
        record.killed.len(),
        median(&mut stopped),
        stopped.iter().max().copied().unwrap_or(0)
    );
    assert!(
        record.failures.is_empty(),
        "{} lifecycles failed (seed {seed}): {:#?}",
        record.failures.len(),
        record.failures
    );

    let mut cri = fx.cri().await.expect("cri client");
    let pods = cri.list_pods().await.expect("ListPodSandbox");
    assert!(pods.is_empty(), "pods left in CRI: {pods:#?}");
    let sockets: Vec<PathBuf> = record.sockets.iter().cloned().collect();
    let netns: Vec<PathBuf> = record.netns.iter().cloned().collect();
    let check = FixtureCheck {
        known: &[wd.pid()],
        baseline_mounts: &baseline_mounts,
        sockets: &sockets,
        netns: &netns,
    };
    let clean = until(Duration::from_secs(30), || check.leftovers(&fx).is_empty()).await;
    if !clean {
        let left = check.leftovers(&fx);
        // What containerd and the watchdog said about the leftovers' containers.
        let log = std::fs::read_to_string(fx.log_path()).unwrap_or_default();
        // "runc state <id>", "cgroup /sys/fs/cgroup/<ctl>/<parent>/<id>", "bundle …/.<id>",
        // "bundle <id> holding [...]": every 64-hex-digit word is a container id.
        let ids: std::collections::BTreeSet<&str> = left
            .iter()
            .flat_map(|l| l.split(|c: char| !c.is_ascii_hexdigit()))
            .filter(|w| w.len() == 64)
            .collect();
        for id in ids {
            println!("--- containerd about {id} ---");
            for line in log.lines().filter(|l| l.contains(id)) {
                println!("{line}");
            }
            println!("--- watchdog about {id} ---");
            for e in wd.journal().iter().filter(|e| e.to_string().contains(id)) {
                println!("{e}");
            }
        }
        panic!("after the churn (seed {seed}): left behind: {left:#?}");
    }

    // Every incident finished and concerns a shim the test killed (no normal exit, no
    // slow shim taken for dead).
    let killed: BTreeSet<&str> = record.killed.iter().map(|(a, _)| a.as_str()).collect();
    let entries = wd.journal();
    let started: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["phase"] == "started").collect();
    let finished = entries.iter().filter(|e| e["phase"] == "finished").count();
    for s in &started {
        let address = s["shim"]["address"].as_str().unwrap_or_default();
        assert!(
            killed.contains(address),
            "an incident about a shim the test did not kill: {s:#}"
        );
    }
    let until_done = Instant::now() + Duration::from_secs(30);
    while wd
        .journal()
        .iter()
        .filter(|e| e["phase"] == "finished")
        .count()
        < started.len()
        && Instant::now() < until_done
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = finished.max(
        wd.journal()
            .iter()
            .filter(|e| e["phase"] == "finished")
            .count(),
    );
    assert_eq!(
        finished,
        started.len(),
        "unfinished incidents: {entries:#?}"
    );
    let ran = entries
        .iter()
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with("ran:")))
        .count();
    println!(
        "churn: {} incidents for {} killed shims (the rest were cleaned up by containerd \
         before the watchdog saw leftovers); {ran} deletes run by the watchdog",
        started.len(),
        record.killed.len()
    );
}
