//! Median latency of `runc state` through the client versus invoking runc directly.
//!
//! Needs root, runc and busybox. Run with
//! `cargo run --release -p runc-client --example bench_state [-- ITERATIONS]`.
//!
//! The direct baseline runs first and creates the container itself, because once the
//! client's reaper owns waitpid(-1), std's own `Command::output` can no longer wait.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Deletes the container with plain std process handling, valid only before the reaper starts.
struct DirectDelete {
    root: std::path::PathBuf,
    id: String,
}

impl Drop for DirectDelete {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &self.id])
            .status();
    }
}

type Failure = Box<dyn std::error::Error>;

fn main() {
    if !common::runc_available() {
        eprintln!("bench_state needs root, runc and /usr/bin/busybox");
        std::process::exit(2);
    }
    // The release profile aborts on panic, so guards would not run: errors are returned instead.
    if let Err(e) = run() {
        eprintln!("bench_state failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Failure> {
    let iterations: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 300,
    };
    let root = common::Root::new();
    let id = common::unique_id("bench");
    let bundle = common::Bundle::new(&id, &["sleep", "1000"], |_| {});
    let created = Command::new("runc")
        .arg("--root")
        .arg(root.path())
        .args(["create", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !created.success() {
        return Err("runc create failed".into());
    }
    let direct_guard = DirectDelete {
        root: root.path().to_path_buf(),
        id: id.clone(),
    };

    let warmup = iterations / 10 + 1;
    // The floor: what spawning and collecting a trivial process costs each way.
    let mut floor_direct = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let t = Instant::now();
        let out = Command::new("/bin/true").arg("state").output()?;
        if i >= warmup && out.status.success() {
            floor_direct.push(t.elapsed());
        }
    }
    let mut direct = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let t = Instant::now();
        let out = Command::new("runc")
            .arg("--root")
            .arg(root.path())
            .args(["state", &id])
            .output()?;
        let elapsed = t.elapsed();
        if !out.status.success() {
            return Err(format!("runc state: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let _: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if i >= warmup {
            direct.push(elapsed);
        }
    }

    // Only now may the reaper start; the client's guard takes over cleanup.
    std::mem::forget(direct_guard);
    let runc = root.client();
    let _guard = common::ContainerGuard::new(&runc, &id);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let truth = runc_client::Runc::new(
        runc_client::RuncConfig::with_binary("/bin/true"),
        runc_client::Reaper::global(),
    );
    let mut floor_client = Vec::with_capacity(iterations);
    rt.block_on(async {
        for i in 0..warmup + iterations {
            let t = Instant::now();
            truth
                .raw("state", "", &["state"], Duration::from_secs(10))
                .await?;
            if i >= warmup {
                floor_client.push(t.elapsed());
            }
        }
        Ok::<(), Failure>(())
    })?;
    let mut client = Vec::with_capacity(iterations);
    rt.block_on(async {
        for i in 0..warmup + iterations {
            let t = Instant::now();
            let state = runc.state(&id).await?;
            let elapsed = t.elapsed();
            if state.status != "created" {
                return Err(format!("unexpected state {state:?}").into());
            }
            if i >= warmup {
                client.push(elapsed);
            }
        }
        Ok::<(), Failure>(())
    })?;

    // Load on a shared machine drifts between phases, so also alternate the two, one call
    // each. A reaper hold lets std wait for its own child; the reaper still wakes for that
    // exit, as it does for the client's.
    let reaper = runc_client::Reaper::global();
    let mut alt_direct = Vec::with_capacity(iterations);
    let mut alt_client = Vec::with_capacity(iterations);
    rt.block_on(async {
        for i in 0..warmup + iterations {
            // Swap the order every round so neither side always runs right after the other.
            let client_first = i % 2 == 1;
            let mut c = Duration::ZERO;
            if client_first {
                let t = Instant::now();
                runc.state(&id).await?;
                c = t.elapsed();
            }
            let hold = reaper.hold();
            let t = Instant::now();
            let out = Command::new("runc")
                .arg("--root")
                .arg(root.path())
                .args(["state", &id])
                .output()?;
            let d = t.elapsed();
            drop(hold);
            let _: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            if !client_first {
                let t = Instant::now();
                runc.state(&id).await?;
                c = t.elapsed();
            }
            if i >= warmup {
                alt_direct.push(d);
                alt_client.push(c);
            }
        }
        Ok::<(), Failure>(())
    })?;

    let (fd, fc) = (median(floor_direct), median(floor_client));
    println!("/bin/true, {iterations} iterations each");
    println!("  direct std::process::Command median: {:>8.3} ms", ms(fd));
    println!("  runc-client                  median: {:>8.3} ms", ms(fc));
    let verdict = |d: Duration, c: Duration| {
        println!("  direct std::process::Command median: {:>8.3} ms", ms(d));
        println!("  runc-client                  median: {:>8.3} ms", ms(c));
        println!(
            "  client overhead: {:+.3} ms (ratio {:.3}); budget +1.000 ms: {}",
            ms(c) - ms(d),
            ms(c) / ms(d),
            if c <= d + Duration::from_millis(1) {
                "OK"
            } else {
                "EXCEEDED"
            }
        );
    };
    println!(
        "runc state, {iterations} iterations each (after {warmup} warm-up), phase after phase"
    );
    verdict(median(direct), median(client));
    println!("runc state, {iterations} iterations each, alternating");
    verdict(median(alt_direct), median(alt_client));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
