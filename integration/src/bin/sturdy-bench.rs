//! Benchmark: sturdy against containerd's Go shim, measured in the same run against the
//! same private containerd. Prints per-shim memory (RSS, PSS, USS) with 1, 20 and 50
//! pods and CRI create+start / stop+remove latency, each as a ratio sturdy/Go.
//!
//! Usage: `sturdy-bench [--pods 1,20,50] [--iterations 30]` (scripts/bench.sh builds the
//! release shim and runs this with `STURDY_SHIM_BIN` pointing at it).

use std::path::Path;
use std::time::{Duration, Instant};

use sturdy_integration::measure::{mem_of, percentile, Mem};
use sturdy_integration::{container_config, Containerd, Handler};

fn exe_name(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

/// Mean memory of the shims serving `pods` pods of `h`.
async fn memory(fx: &Containerd, h: Handler, pods: usize) -> Result<(Mem, usize), String> {
    let mut cri = fx.cri().await.map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for i in 0..pods {
        // Host network: the bench measures shims, not CNI, and needs more pods than the
        // fixture's /28 has addresses.
        let cfg = fx.host_network_pod_config(&format!("mem-{}-{i}", h.name()));
        ids.push(cri.run_pod(h, &cfg).await.map_err(|e| e.to_string())?);
    }
    // Let the shims settle (Go's runtime grows its heap lazily after start).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let want = match h {
        Handler::Runc => "containerd-shim-runc-v2",
        Handler::Sturdy => "containerd-shim-sturdy-v2",
    };
    let pids: Vec<i32> = fx
        .footprint()
        .shim_pids
        .into_iter()
        .filter(|p| exe_name(*p) == want)
        .collect();
    let mems: Vec<Mem> = pids.iter().filter_map(|p| mem_of(*p)).collect();
    let n = mems.len().max(1) as u64;
    let total = mems.iter().fold(Mem::default(), |a, m| Mem {
        rss: a.rss + m.rss,
        pss: a.pss + m.pss,
        uss: a.uss + m.uss,
    });
    for id in &ids {
        cri.stop_pod(id).await.map_err(|e| e.to_string())?;
        cri.remove_pod(id).await.map_err(|e| e.to_string())?;
    }
    Ok((
        Mem {
            rss: total.rss / n,
            pss: total.pss / n,
            uss: total.uss / n,
        },
        mems.len(),
    ))
}

/// Milliseconds of CreateContainer+StartContainer and StopContainer+RemoveContainer.
async fn latency(
    fx: &Containerd,
    h: Handler,
    iterations: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut cri = fx.cri().await.map_err(|e| e.to_string())?;
    let cfg = fx.host_network_pod_config(&format!("lat-{}", h.name()));
    let pod = cri.run_pod(h, &cfg).await.map_err(|e| e.to_string())?;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..iterations {
        let c = container_config(&format!("c{i}"), &["/bin/sleep", "3600"]);
        let t = Instant::now();
        let id = cri
            .create_container(&pod, c, &cfg)
            .await
            .map_err(|e| e.to_string())?;
        cri.start_container(&id).await.map_err(|e| e.to_string())?;
        up.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        cri.stop_container(&id, 0)
            .await
            .map_err(|e| e.to_string())?;
        cri.remove_container(&id).await.map_err(|e| e.to_string())?;
        down.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    cri.stop_pod(&pod).await.map_err(|e| e.to_string())?;
    cri.remove_pod(&pod).await.map_err(|e| e.to_string())?;
    Ok((up, down))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut pod_counts = vec![1usize, 20, 50];
    let mut iterations = 30usize;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--pods" => {
                pod_counts = args[i + 1]
                    .split(',')
                    .map(|s| s.parse().expect("pod count"))
                    .collect();
                i += 1;
            }
            "--iterations" => {
                iterations = args[i + 1].parse().expect("iterations");
                i += 1;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    let fx = Containerd::start().await.expect("start private containerd");
    let shim = fx.shim_bin().to_path_buf();
    if !Path::new(&shim).exists() {
        panic!("sturdy shim {} missing: build it first", shim.display());
    }
    println!("# sturdy vs containerd-shim-runc-v2");
    println!();
    println!(
        "shim binary: {}; containerd {}",
        shim.display(),
        fx.version().await.unwrap_or_default()
    );
    println!();
    println!("## Memory per shim (KiB, mean over the shims serving the pods)");
    println!();
    println!("| pods | Go RSS | sturdy RSS | RSS ratio | Go PSS | sturdy PSS | PSS ratio | Go USS | sturdy USS | USS ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &pod_counts {
        let (go, gn) = memory(&fx, Handler::Runc, n).await.expect("Go shim pods");
        let (st, sn) = memory(&fx, Handler::Sturdy, n).await.expect("sturdy pods");
        assert_eq!(gn, n, "expected one Go shim per pod");
        assert_eq!(sn, n, "expected one sturdy shim per pod");
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            go.rss,
            st.rss,
            ratio(st.rss as f64, go.rss as f64),
            go.pss,
            st.pss,
            ratio(st.pss as f64, go.pss as f64),
            go.uss,
            st.uss,
            ratio(st.uss as f64, go.uss as f64)
        );
    }
    println!();
    println!("## CRI latency (ms, {iterations} containers in one pod)");
    println!();
    println!("| operation | Go median | Go p90 | sturdy median | sturdy p90 | median ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut gu, mut gd) = latency(&fx, Handler::Runc, iterations)
        .await
        .expect("Go latency");
    let (mut su, mut sd) = latency(&fx, Handler::Sturdy, iterations)
        .await
        .expect("sturdy latency");
    for (name, g, s) in [
        ("create+start", &mut gu, &mut su),
        ("stop+remove", &mut gd, &mut sd),
    ] {
        let (gm, gp, sm, sp) = (
            median(g),
            percentile(g, 90.0),
            median(s),
            percentile(s, 90.0),
        );
        println!(
            "| {name} | {gm:.1} | {gp:.1} | {sm:.1} | {sp:.1} | {} |",
            ratio(sm, gm)
        );
    }
    drop(fx);
}
