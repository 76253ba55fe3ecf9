//! Benchmark of the pause of a live shim upgrade (issue 20, docs/upgrade.md).
//!
//! Usage: `sturdy-upgrade-bench [--pods 50] [--rounds 3] [--probe-secs 10]
//! [--rehearse-only]` (scripts/bench-upgrade.sh builds the release binaries and runs this
//! with `STURDYCTL_BIN` and `STURDY_SHIM_BIN`). Every pod is a sturdy sandbox with one
//! container printing ten lines a second.
//!
//! By default each round is a real upgrade: the other build is installed where
//! containerd finds the shim (the fixture's `replace_shim_bin`) and `sturdyctl
//! upgrade-shims` moves every shim onto it in place, alternating between the release
//! shim and a copy of it with another build-id (A → B → A …), so every round execs every
//! shim. Each shim must answer `upgraded`, keep its pid and start time, and run the
//! target build afterwards; anything else is counted and makes the run exit 1.
//! `--rehearse-only` measures what was measured before the exec existed:
//! `upgrade-shims --dry-run --rehearse` onto the other build, the pause without the exec.
//!
//! While each round runs, a prober sends ContainerStats (which containerd forwards to the
//! pod's shim as Task Stats) round-robin over the containers, one at a time, so the
//! requests containerd sends during a pause are measured from its side; the same prober
//! runs once before any round as the baseline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sturdy_integration::containerd::sturdyctl_bin;
use sturdy_integration::k8s_cri::v1::{ContainerState, ContainerStatsRequest};
use sturdy_integration::measure::{arg, percentile};
use sturdy_integration::shim_upgrade::{another_build, running_build, start_time, sturdyctl};
use sturdy_integration::{container_config, Containerd, Cri, Handler, CRI_NAMESPACE};

/// Prints a line number ten times a second: output flows through the shim all along.
const TICKER: &str = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done";

/// The goal per shim: median and max pause, µs.
const GOAL_MEDIAN_US: f64 = 50_000.0;
const GOAL_MAX_US: f64 = 200_000.0;

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// Latencies (µs) and failures of the prober's requests.
#[derive(Default)]
struct Probe {
    latencies: Vec<f64>,
    failures: Vec<String>,
}

/// ContainerStats round-robin over `containers`, one at a time, until `stop`.
async fn probe(mut cri: Cri, containers: Vec<String>, stop: Arc<AtomicBool>) -> Probe {
    let mut p = Probe::default();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = containers[i % containers.len()].clone();
        i += 1;
        let t0 = Instant::now();
        let res = cri
            .runtime
            .container_stats(ContainerStatsRequest { container_id: id })
            .await;
        p.latencies.push(t0.elapsed().as_micros() as f64);
        if let Err(e) = res {
            p.failures.push(e.to_string());
        }
    }
    p
}

fn probe_row(name: &str, p: &mut Probe) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} |",
        p.latencies.len(),
        ms(percentile(&mut p.latencies, 50.0)),
        ms(percentile(&mut p.latencies, 99.0)),
        ms(percentile(&mut p.latencies, 100.0)),
        p.failures.len()
    )
}

/// `sturdyctl <args>` with the prober running for exactly as long: whether it exited 0,
/// its JSON, how long it took, and what the prober saw.
async fn probed(
    fx: &Containerd,
    cri: &Cri,
    containers: &[String],
    args: &[&str],
) -> (bool, serde_json::Value, Duration, Probe) {
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(cri.clone(), containers.to_vec(), stop.clone()));
    let t0 = Instant::now();
    // Blocking for the whole round while the prober keeps sending on the other worker.
    let (ok, json) = tokio::task::block_in_place(|| sturdyctl(fx, args));
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    (ok, json, took, prober.await.expect("prober"))
}

/// What the rounds measured.
#[derive(Default)]
struct Rounds {
    /// Pause per shim per round, µs (`upgrade.paused_us` or `rehearsal.paused_us`).
    pauses: Vec<f64>,
    /// Lifecycles held per shim per round.
    held: Vec<f64>,
    /// Wall time of each round's `upgrade-shims`, s.
    node: Vec<f64>,
    /// The prober during the rounds.
    during: Probe,
    /// Shims that did not end a round as they must, each with why.
    bad: Vec<String>,
    /// The part of each pause before the exec, µs, as the old images logged it.
    before_exec: Vec<f64>,
}

/// What each old image logged as its pause just before the exec, µs ("upgrade: executing
/// … paused N us so far", forwarded by containerd into its log): splits the pause into
/// what precedes the exec and what the exec and the new image add.
fn paused_before_exec(log: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("upgrade: executing"))
        .filter_map(|l| {
            let head = &l[..l.find(" us so far")?];
            head[head.rfind(' ')? + 1..].parse().ok()
        })
        .collect()
}

/// A pod's shim as it was when the pods started.
struct Shim {
    sandbox: String,
    pid: i32,
    start: u64,
}

/// The old mode: `upgrade-shims --dry-run --rehearse` onto `other`, `rounds` times.
async fn rehearsals(
    fx: &Containerd,
    cri: &Cri,
    containers: &[String],
    other: &Path,
    rounds: usize,
) -> Rounds {
    let mut r = Rounds::default();
    let other = other.to_str().expect("UTF-8 path");
    for round in 1..=rounds {
        let args = [
            "upgrade-shims",
            "--dry-run",
            "--rehearse",
            "--json",
            "--binary",
            other,
        ];
        let (ok, json, took, p) = probed(fx, cri, containers, &args).await;
        assert!(ok, "upgrade-shims failed: {json:#}");
        r.during.latencies.extend(p.latencies);
        r.during.failures.extend(p.failures);
        let shims = json["shims"].as_array().cloned().unwrap_or_default();
        assert_eq!(shims.len(), containers.len(), "round {round}: {json:#}");
        for s in &shims {
            assert_eq!(s["result"], "ready", "round {round}: {s:#}");
            let reh = &s["rehearsal"];
            r.pauses
                .push(reh["paused_us"].as_u64().expect("paused_us") as f64);
            r.held.push(reh["held"].as_u64().unwrap_or(0) as f64);
        }
        r.node.push(took.as_secs_f64());
        println!(
            "round {round}: {} shims rehearsed in {:.2} s",
            shims.len(),
            took.as_secs_f64()
        );
    }
    r
}

/// The real upgrade, `rounds` times: round 1 onto `builds[1]`, round 2 back onto
/// `builds[0]`, and so on, each installed first as containerd's shim binary.
async fn upgrades(
    fx: &mut Containerd,
    cri: &Cri,
    containers: &[String],
    shims: &[Shim],
    builds: [(&Path, &str); 2],
    rounds: usize,
) -> Rounds {
    let mut r = Rounds::default();
    for round in 1..=rounds {
        let (bin, build) = builds[round % 2];
        fx.replace_shim_bin(bin).expect("install the target build");
        let bad_before = r.bad.len();
        let (ok, json, took, p) = probed(fx, cri, containers, &["upgrade-shims", "--json"]).await;
        r.during.latencies.extend(p.latencies);
        r.during.failures.extend(p.failures);
        r.node.push(took.as_secs_f64());
        let listed = json["shims"].as_array().cloned().unwrap_or_default();
        if listed.len() != shims.len() {
            r.bad.push(format!(
                "round {round}: {} shims listed, not {}",
                listed.len(),
                shims.len()
            ));
        }
        let mut round_pauses = Vec::new();
        for s in &listed {
            let id = s["id"].as_str().unwrap_or("?");
            let short = &id[..id.len().min(12)];
            if s["result"] != "upgraded" {
                r.bad.push(format!(
                    "round {round}: {short}: {} ({})",
                    s["result"], s["detail"]
                ));
                continue;
            }
            let u = &s["upgrade"];
            let paused = u["paused_us"].as_u64().expect("paused_us") as f64;
            round_pauses.push(paused);
            r.pauses.push(paused);
            r.held.push(u["held"].as_u64().unwrap_or(0) as f64);
            // What the answer says is checked against what runs, not taken from it.
            let Some(shim) = shims.iter().find(|sh| sh.sandbox == id) else {
                r.bad
                    .push(format!("round {round}: {short}: not one of the pods"));
                continue;
            };
            if u["pid"] != shim.pid || s["pid"] != shim.pid {
                r.bad.push(format!(
                    "round {round}: {short}: pid {} answered {}, started as {}",
                    s["pid"], u["pid"], shim.pid
                ));
            }
            if running_build(shim.pid).as_deref() != Some(build) {
                r.bad.push(format!(
                    "round {round}: {short}: /proc/{}/exe is not build {build}",
                    shim.pid
                ));
            }
        }
        if !ok && r.bad.len() == bad_before {
            r.bad.push(format!(
                "round {round}: upgrade-shims exited non-zero: {json:#}"
            ));
        }
        println!(
            "round {round}: onto build {}: {} of {} shims upgraded in {:.2} s; pause median \
             {} ms, max {} ms",
            ["A", "B"][round % 2],
            round_pauses.len(),
            shims.len(),
            took.as_secs_f64(),
            ms(percentile(&mut round_pauses, 50.0)),
            ms(percentile(&mut round_pauses, 100.0)),
        );
    }
    r
}

/// Every pod's shim is the process it started as, and every container still runs.
async fn still_the_same(
    fx: &Containerd,
    cri: &mut Cri,
    shims: &[Shim],
    cs: &[String],
) -> Vec<String> {
    let mut bad = Vec::new();
    for s in shims {
        let now = fx.shim_pid(CRI_NAMESPACE, &s.sandbox);
        if now != Some(s.pid) || start_time(s.pid) != Some(s.start) {
            bad.push(format!(
                "after the rounds: shim of {} is {now:?} (start {:?}), started as {} (start {})",
                &s.sandbox[..12],
                now.and_then(start_time),
                s.pid,
                s.start
            ));
        }
    }
    for c in cs {
        match cri.container_status(c).await {
            Ok(st) if st.state == ContainerState::ContainerRunning as i32 => {}
            Ok(st) => bad.push(format!("after the rounds: {c} in state {}", st.state)),
            Err(e) => bad.push(format!("after the rounds: ContainerStatus {c}: {e}")),
        }
    }
    bad
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pods = arg(&args, "--pods", 50) as usize;
    let rounds = arg(&args, "--rounds", 3) as usize;
    let probe_secs = Duration::from_secs(arg(&args, "--probe-secs", 10));
    let rehearse_only = args.iter().any(|a| a == "--rehearse-only");

    let mut fx = Containerd::start().await.expect("start private containerd");
    let mut cri = fx.cri().await.expect("cri");
    if rehearse_only {
        println!("# Live upgrade pause benchmark (rehearsal: `--dry-run --rehearse`, no exec)");
    } else {
        println!("# Live upgrade benchmark (`upgrade-shims`: pause, exec and resume)");
    }
    println!();
    println!(
        "sturdyctl {}, shim {}, containerd {}; {pods} sturdy pods, each a sandbox and a \
         container printing 10 lines/s",
        sturdyctl_bin().display(),
        fx.shim_bin().display(),
        fx.version().await.unwrap_or_default()
    );
    let t0 = Instant::now();
    let mut sandboxes = Vec::new();
    let mut containers = Vec::new();
    for i in 0..pods {
        // Host network: the fixture's /28 has fewer addresses than pods.
        let cfg = fx.host_network_pod_config(&format!("up-{i}"));
        let pod = cri
            .run_pod(Handler::Sturdy, &cfg)
            .await
            .expect("RunPodSandbox");
        let c = cri
            .create_container(
                &pod,
                container_config("ticker", &["/bin/sh", "-c", TICKER]),
                &cfg,
            )
            .await
            .expect("CreateContainer");
        cri.start_container(&c).await.expect("StartContainer");
        sandboxes.push(pod);
        containers.push(c);
    }
    println!(
        "{pods} pods running after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let shims: Vec<Shim> = sandboxes
        .iter()
        .map(|sb| {
            let pid = fx.shim_pid(CRI_NAMESPACE, sb).expect("the pod's shim");
            let start = start_time(pid).expect("the shim's start time");
            Shim {
                sandbox: sb.clone(),
                pid,
                start,
            }
        })
        .collect();

    // Build B, content-addressed beside build A (the release shim), which stays where it is.
    let next = fx.dir().join("sturdy-next");
    std::fs::create_dir_all(&next).expect("mkdir");
    let new_bin = next.join("containerd-shim-sturdy-v2");
    let old_bin: PathBuf = std::fs::canonicalize(fx.shim_bin()).expect("shim binary");
    let (old_id, new_id) = another_build(&old_bin, &new_bin);
    println!("build A {old_id} (release), build B {new_id}");

    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(cri.clone(), containers.clone(), stop.clone()));
    tokio::time::sleep(probe_secs).await;
    stop.store(true, Ordering::SeqCst);
    let mut baseline = prober.await.expect("prober");

    let mut r = if rehearse_only {
        rehearsals(&fx, &cri, &containers, &new_bin, rounds).await
    } else {
        let builds = [(old_bin.as_path(), &*old_id), (new_bin.as_path(), &*new_id)];
        upgrades(&mut fx, &cri, &containers, &shims, builds, rounds).await
    };
    if !rehearse_only {
        r.before_exec = paused_before_exec(&fx.log_path());
    }
    r.bad
        .extend(still_the_same(&fx, &mut cri, &shims, &containers).await);

    report(&mut r, &mut baseline, rehearse_only);

    for c in &containers {
        let _ = cri.stop_container(c, 0).await;
        let _ = cri.remove_container(c).await;
    }
    for p in &sandboxes {
        let _ = cri.stop_pod(p).await;
        let _ = cri.remove_pod(p).await;
    }
    let left = fx.stop();
    if !left.is_empty() {
        println!("- leaked: {left:?}");
    }
    drop(fx);
    let failed = baseline.failures.len() + r.during.failures.len();
    if !r.bad.is_empty() || failed > 0 {
        std::process::exit(1);
    }
}

fn report(r: &mut Rounds, baseline: &mut Probe, rehearse_only: bool) {
    let what = if rehearse_only {
        "rehearsals"
    } else {
        "upgrades"
    };
    let pauses = &mut r.pauses;
    let (median, max) = (percentile(pauses, 50.0), percentile(pauses, 100.0));
    println!();
    println!("## Pause per shim ({} {what})", pauses.len());
    println!();
    println!(
        "| median ms | p90 ms | max ms | lifecycles held per shim | node total, median s | \
         node total, max s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {:.2} | {:.2} |",
        ms(median),
        ms(percentile(pauses, 90.0)),
        ms(max),
        percentile(&mut r.held, 50.0),
        percentile(&mut r.node, 50.0),
        percentile(&mut r.node, 100.0)
    );
    if !rehearse_only {
        let b = &mut r.before_exec;
        println!();
        println!(
            "Of which before the exec (gate closed → document written), as {} old images \
             logged it: median {} ms, p90 {} ms, max {} ms.",
            b.len(),
            ms(percentile(b, 50.0)),
            ms(percentile(b, 90.0)),
            ms(percentile(b, 100.0)),
        );
    }
    println!();
    println!("## containerd's requests to the shims (ContainerStats → Task Stats)");
    println!();
    println!("| | requests | p50 ms | p99 ms | max ms | failed |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("{}", probe_row("before any round", baseline));
    println!("{}", probe_row("during the rounds", &mut r.during));
    println!();
    let none_failed = r.during.failures.is_empty() && baseline.failures.is_empty();
    if rehearse_only {
        println!(
            "Goal (issue 20) for the pause alone: median < 50 ms {}, max < 200 ms {}, no \
             request failed {}. No exec: its cost is not in these numbers.",
            met(median < GOAL_MEDIAN_US),
            met(max < GOAL_MAX_US),
            met(none_failed),
        );
    } else {
        println!(
            "Goal (issue 20): median < 50 ms {}, max < 200 ms {}, no request failed {}. \
             Shims not upgraded, not on their first pid or not on the target build, or \
             containers not running: {}.",
            met(median < GOAL_MEDIAN_US),
            met(max < GOAL_MAX_US),
            met(none_failed),
            r.bad.len(),
        );
    }
    for b in &r.bad {
        println!("- {b}");
    }
    for f in r.during.failures.iter().chain(&baseline.failures).take(5) {
        println!("- failed request: {f}");
    }
}
