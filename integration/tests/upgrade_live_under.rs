//! `sturdyctl upgrade-shims` moving a live sturdy pod's shim in place (upgrade_live.rs)
//! while something else acts on it (issue 20, docs/upgrade.md):
//!
//! - a running watchdog probing the shim often enough to declare it hung during the pause,
//!   were the upgrade window (the same `--upgrade-dir`) not honoured: back and forth
//!   between two builds, three times; every move upgraded, the same process throughout,
//!   no recovery in the watchdog's journal or log;
//! - containerd restarted while the upgrade runs: the shim moves, and the restarted
//!   containerd serves the pod, its log whole and its exited container reported.

#[path = "upgrade_support/live.rs"]
mod live;
mod upgrade_support;
mod watchdog_support;

use std::time::Instant;

use live::{assert_upgraded, assert_upgraded_with, exits_of, printed, the_shim, ResumeHook, Scene};
use sturdy_integration::shim_upgrade::{run_json, sturdyctl_command, upgrade_dir};
use upgrade_support::wait_for;
use watchdog_support::{follow_exits, Watchdog, WatchdogExt};

/// The watchdog's probe interval (each probe's deadline) and misses before a hang: the
/// watchdog tests' misses at half their interval, so silence of 1.5 s is a hang.
const INTERVAL: &str = "500ms";
const MISSES: &str = "3";
/// How long each new image waits before it resumes (the shim's debug test hook): more
/// than `MISSES` probes go unanswered during each pause, so only the window keeps the
/// watchdog from killing the shim.
const SLOW_MS: u64 = 3000;
const ROUND_TRIPS: usize = 3;

/// Lines of the watchdog's log about probes of the shim at `address` it did not count
/// because they went unanswered inside an upgrade window.
fn not_counted(wd: &Watchdog, address: &str) -> usize {
    wd.log()
        .lines()
        .filter(|l| l.contains(address) && l.contains("upgrade window: not counted"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_back_and_forth_under_a_watchdog_are_never_taken_for_a_hang() {
    let t0 = Instant::now();
    let mut sc = Scene::start("watched").await;
    let (ok, status) = sc.sturdyctl(&["status", "--json"]);
    assert!(ok, "status: {status:#}");
    let address = the_shim(&status, &sc.pod)["address"]
        .as_str()
        .expect("the shim's address")
        .to_string();
    let window_dir = upgrade_dir(&sc.fx);
    let mut wd = Watchdog::start_with(
        &sc.fx,
        &[
            "--interval",
            INTERVAL,
            "--misses",
            MISSES,
            "--upgrade-dir",
            window_dir.to_str().unwrap(),
        ],
    );
    wd.wait_watching(&address, sc.pod.shim.pid).await;

    let old_id = sc.old_id.clone();
    let old_bin = sc.old_bin.clone();
    let (new_bin, new_id) = sc.install_new_build("sturdy-next");
    let _slow = ResumeHook::arm(
        &sc.fx,
        &sc.pod,
        ".sturdy-test-slow-resume",
        &SLOW_MS.to_string(),
    );
    let before = printed(&sc.printer_log).len() as u64;
    let mut exec = Some(sc.exec_in_flight().await);
    let mut pauses = Vec::new();
    for round in 1..=ROUND_TRIPS {
        for (bin, from, to) in [(&new_bin, &old_id, &new_id), (&old_bin, &new_id, &old_id)] {
            let step = format!("round trip {round}, onto {}", &to[..12]);
            sc.fx.replace_shim_bin(bin).expect("install the build");
            let shielded = not_counted(&wd, &address);
            let (ok, s) = sc.upgrade_shims(&[]);
            assert_upgraded(ok, &s, &sc.pod, from, to);
            sc.assert_shim_runs(to, true, &step);
            pauses.push(s["pause_ms"].as_f64().unwrap_or(f64::NAN));
            // Proof the pause outlasted the probes: unanswered ones, inside the window.
            wait_for(
                || format!("{step}: no probe left uncounted; log:\n{}", wd.log()),
                || not_counted(&wd, &address) > shielded,
            )
            .await;
            if let Some(exec) = exec.take() {
                sc.assert_exec_in_flight_whole(exec, &step).await;
            }
        }
    }
    sc.assert_log_whole(before, "the round trips").await;
    sc.assert_exited_once("the round trips").await;
    sc.assert_exec("after the round trips").await;
    sc.pod
        .check(&sc.fx, &mut sc.cri, "after the round trips")
        .await;
    sc.assert_no_disconnect("after the round trips");

    let journal = wd.incident_entries(&address);
    assert!(
        journal.is_empty(),
        "the watchdog recovered the shim: {journal:#?}"
    );
    let log = wd.log();
    let counted: Vec<&str> = log
        .lines()
        .filter(|l| {
            (l.contains("unanswered") && !l.contains("not counted"))
                || l.contains("answered again")
                || l.contains(": hung")
        })
        .collect();
    assert!(
        counted.is_empty(),
        "the watchdog counted the pause: {counted:#?}"
    );
    println!(
        "{} upgrades under the watchdog (probe every {INTERVAL}, hung after {MISSES}): \
         pauses {pauses:?} ms, {} probes not counted ({} of them judged after a window \
         closed), no incident; {:.1} s",
        pauses.len(),
        not_counted(&wd, &address),
        log.lines()
            .filter(|l| l.contains("unanswered after it"))
            .count(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        wd.stop().is_some_and(|s| s.success()),
        "the watchdog's exit"
    );
    sc.finish().await;
}

/// Runs `upgrade-shims --json` on a thread of its own while containerd restarts (at once,
/// or once the upgrade window is open when `in_window`), and prints when each began and
/// ended (since `t0`); this pod's shim's entry.
async fn upgrade_while_containerd_restarts(
    sc: &mut Scene,
    t0: Instant,
    in_window: bool,
    step: &str,
) -> (bool, serde_json::Value) {
    let args = ["upgrade-shims", "--json"];
    let command = sturdyctl_command(&sc.fx, &args);
    let upgrade = std::thread::spawn(move || {
        let began = t0.elapsed();
        let (ok, out) = run_json(command, &args);
        (ok, out, began, t0.elapsed())
    });
    if in_window {
        let dir = upgrade_dir(&sc.fx);
        let open = || std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
        wait_for(
            || format!("{step}: no upgrade window in {}", dir.display()),
            open,
        )
        .await;
    }
    let restart_began = t0.elapsed();
    sc.fx.restart().await.expect("restart containerd");
    let restarted = t0.elapsed();
    let (ok, out, began, ended) =
        tokio::task::block_in_place(|| upgrade.join()).expect("the upgrade-shims thread");
    let s = the_shim(&out, &sc.pod).clone();
    eprintln!("{step}: upgrade-shims: ok {ok}: {out:#}");
    println!(
        "{step}: upgrade-shims {:.3}–{:.3} s, containerd restart {:.3}–{:.3} s; {}, pause {} ms, {} connection(s) and {} Wait(s) handed over",
        began.as_secs_f64(),
        ended.as_secs_f64(),
        restart_began.as_secs_f64(),
        restarted.as_secs_f64(),
        s["result"],
        s["pause_ms"],
        s["upgrade"]["connections"],
        s["upgrade"]["waits"]
    );
    (ok, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_while_containerd_restarts_moves_the_shim_and_keeps_the_pod() {
    let t0 = Instant::now();
    let mut sc = Scene::start("restarted").await;
    let old_id = sc.old_id.clone();
    let old_bin = sc.old_bin.clone();
    let (_, new_id) = sc.install_new_build("sturdy-next");
    let before = printed(&sc.printer_log).len() as u64;

    // As it comes: the restart's stop and start around the upgrade's checks and pause.
    let step = "an upgrade during a containerd restart";
    let (ok, s) = upgrade_while_containerd_restarts(&mut sc, t0, false, step).await;
    sc.cri = sc.fx.cri().await.expect("cri client after the restart");
    let exits_after = follow_exits(&sc.fx).await;
    // containerd's connection is handed over only if it was up at the pause.
    assert_upgraded_with(ok, &s, &sc.pod, &old_id, &new_id, 1);
    sc.assert_shim_runs(&new_id, true, step);
    let lines = sc.assert_log_whole(before, step).await;
    sc.assert_exited(step).await;
    sc.assert_exec(step).await;
    sc.pod.check(&sc.fx, &mut sc.cri, step).await;
    // Neither containerd published the exit twice (the new one may have seen none: the
    // exit can land before it subscribed).
    let published =
        exits_of(&sc.exits, &sc.exiter).len() + exits_of(&exits_after, &sc.exiter).len();
    assert!(
        published <= 1,
        "{step}: the exiter's exit published {published} times"
    );

    // And back, containerd restarted inside the pause, made to span the restart: its
    // parked connection closes, and it comes back before the new image resumes.
    let step = "the way back during a containerd restart";
    sc.fx
        .replace_shim_bin(&old_bin)
        .expect("reinstall the old build");
    let slow = ResumeHook::arm(
        &sc.fx,
        &sc.pod,
        ".sturdy-test-slow-resume",
        &SLOW_MS.to_string(),
    );
    let (ok, s) = upgrade_while_containerd_restarts(&mut sc, t0, true, step).await;
    drop(slow);
    sc.cri = sc.fx.cri().await.expect("cri client after the restart");
    assert_upgraded_with(ok, &s, &sc.pod, &new_id, &old_id, 1);
    sc.assert_shim_runs(&old_id, true, step);
    sc.assert_log_whole(lines, step).await;
    sc.assert_exited(step).await;
    sc.assert_exec(step).await;
    sc.pod.check(&sc.fx, &mut sc.cri, step).await;
    let version = sc.fx.version().await.expect("containerd's version");
    println!(
        "upgrades during containerd {version} restarts: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    sc.finish().await;
}
