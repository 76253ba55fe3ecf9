//! Benchmark of the sandbox network record (docs/netmeta.md): RunPodSandbox latency through
//! sturdy with the record on and off (median and p90 of 30, interleaved in one run against
//! one private containerd), and the memory of one pod's shim either way.
//!
//! Usage: `sturdy-netmeta-bench [--iterations 30]` (scripts/bench-netmeta.sh builds the
//! release shim and runs this with `STURDY_SHIM_BIN` pointing at it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sturdy_integration::measure::{mem_of, percentile};
use sturdy_integration::{Containerd, ExtraRuntime, Handler, CRI_NAMESPACE};

/// The handler of the same shim with `NoSandboxRecord = true`.
const OFF: &str = "sturdy-norecord";

async fn run(iterations: usize, options_dir: &std::path::Path) -> Result<(), String> {
    let options = options_dir.join("norecord.toml");
    let fx = Containerd::builder()
        .runtime(ExtraRuntime {
            name: OFF.into(),
            runtime_type: "io.containerd.sturdy.v2".into(),
            runtime_path: None,
            options: format!("  ConfigPath = {:?}", options.display().to_string()),
        })
        .start()
        .await
        .map_err(|e| e.to_string())?;
    std::fs::write(
        &options,
        format!(
            "Root = {:?}\nNoSandboxRecord = true\n",
            fx.runc_root().display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    // A/A control: the fixture's own handler loses its record too, so any difference left
    // comes from the two handlers' set-up, not from the record.
    let aa = std::env::var_os("STURDY_BENCH_AA").is_some();
    if aa {
        std::fs::write(
            fx.sturdy_options_path(),
            format!(
                "Root = {:?}\nNoSandboxRecord = true\n",
                fx.runc_root().display().to_string()
            ),
        )
        .map_err(|e| e.to_string())?;
        println!("A/A control: both handlers have NoSandboxRecord = true\n");
    }
    let mut cri = fx.cri().await.map_err(|e| e.to_string())?;
    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut mem_on = Vec::new();
    let mut mem_off = Vec::new();
    for i in 0..iterations {
        let mut pair = [
            (Handler::Sturdy.name(), &mut on, &mut mem_on),
            (OFF, &mut off, &mut mem_off),
        ];
        // Alternate which goes first: the first of a pair runs right after the previous
        // pair's teardown.
        if i % 2 == 1 {
            pair.reverse();
        }
        for (handler, samples, mems) in pair {
            let cfg = fx.pod_config(&format!("b{i}-{handler}"));
            let t = Instant::now();
            let id = cri
                .run_pod_with(handler, &cfg)
                .await
                .map_err(|e| e.to_string())?;
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            // Once the first snapshot is written (it runs after RunPodSandbox answered).
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(m) = fx.shim_pid(CRI_NAMESPACE, &id).and_then(mem_of) {
                mems.push((m.rss, m.uss));
            }
            let recorded = fx
                .sandbox_record_dir()
                .join(CRI_NAMESPACE)
                .join(format!("{id}.json"))
                .exists();
            if recorded != (handler != OFF && !aa) {
                return Err(format!("{handler}: record present = {recorded}"));
            }
            cri.stop_pod(&id).await.map_err(|e| e.to_string())?;
            cri.remove_pod(&id).await.map_err(|e| e.to_string())?;
        }
    }
    if std::env::var_os("STURDY_BENCH_RAW").is_some() {
        for (i, (a, b)) in on.iter().zip(&off).enumerate() {
            eprintln!("{i:3} on {a:7.1} off {b:7.1}");
        }
    }
    // Paired by iteration before the sorts below: robust to the machine's load drifting.
    let mut paired: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a - b).collect();
    let paired_med = percentile(&mut paired, 50.0);
    let (on_med, off_med) = (percentile(&mut on, 50.0), percentile(&mut off, 50.0));
    println!("RunPodSandbox through sturdy, CNI bridge pod, {iterations} interleaved runs each:\n");
    println!("| record | median ms | p90 ms |");
    println!("|---|---|---|");
    println!(
        "| off (NoSandboxRecord) | {off_med:.1} | {:.1} |",
        percentile(&mut off, 90.0)
    );
    println!("| on | {on_med:.1} | {:.1} |", percentile(&mut on, 90.0));
    println!(
        "\ndifference of the medians: {:+.1} ms; median of the paired differences (on - off, same iteration): {paired_med:+.1} ms",
        on_med - off_med
    );
    let rss = |v: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| {
        let mut x: Vec<f64> = v.iter().map(|m| f(m) as f64).collect();
        percentile(&mut x, 50.0)
    };
    let (r_on, r_off) = (rss(&mem_on, |m| m.0), rss(&mem_off, |m| m.0));
    let (u_on, u_off) = (rss(&mem_on, |m| m.1), rss(&mem_off, |m| m.1));
    println!("\nOne pod's shim, median over the runs (KiB):\n");
    println!("| record | RSS | USS |");
    println!("|---|---|---|");
    println!("| off | {r_off:.0} | {u_off:.0} |");
    println!("| on | {r_on:.0} | {u_on:.0} |");
    println!(
        "\nRSS {:+.1} %, USS {:+.1} %",
        (r_on / r_off - 1.0) * 100.0,
        (u_on / u_off - 1.0) * 100.0
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let shim: PathBuf = sturdy_integration::containerd::default_shim_bin();
    println!("shim {}\n", shim.display());
    let dir = tempfile::tempdir().expect("temp dir");
    if let Err(e) = run(iterations, dir.path()).await {
        eprintln!("sturdy-netmeta-bench: {e}");
        std::process::exit(1);
    }
}
