//! What a pod with CAP_NET_ADMIN puts into its own network namespace is not trusted
//! (issue 16, docs/netmeta.md): the watchdog's repair writes back only the IP CNI gave the
//! pod, never one the pod added (M2); and a namespace filled with 100k addresses leaves the
//! shim and the watchdog within their memory budgets, with a truncated, flagged record of
//! at most 1 MiB (M3). Real containerd and CNI, handler `sturdy`.

mod netmeta_support;
mod watchdog_support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use netmeta_support::*;
use sturdy_integration::{container_config, Containerd, CRI_NAMESPACE};
use watchdog_support::{until, Watchdog, WatchdogExt, INTERVAL};

fn watchdog(fx: &Containerd) -> Watchdog {
    let dir = fx.sandbox_record_dir();
    Watchdog::start(fx, &["--record-dir", dir.to_str().unwrap()])
}

/// M2: a pod adds an address to its eth0 after it started (as a pod with CAP_NET_ADMIN
/// can), the shim records it, then containerd loses the pod's IPs (incident 000). The
/// watchdog writes back the IP CNI gave the pod and not the added one, and says so; so
/// do `sturdyctl sandbox` and the IPs a restarted containerd reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_writes_only_cnis_ip_never_one_the_pod_added() {
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = watchdog(&fx);
    let pod = recorded_pod(&fx, &mut cri, "addedip").await;
    let added = "192.0.2.77";
    let rec = add_address(&fx, &mut cri, &pod, added).await;
    let RecordedPod { id, ip, .. } = pod;
    assert_eq!(rec.pod_ips(), vec![ip.clone(), added.to_string()]);
    // L10: what the real shim wrote is root's only.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let file = record_path(&fx, &id);
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    assert_eq!(mode(&fx.sandbox_record_dir()), 0o700);

    strip_ips(&fx, &id).await;
    println!("stripped the IPs from containerd's record of {id}; the pod has {ip} and {added}");
    wd.wait_log(&["REPAIRED", &id], INTERVAL * 5).await;
    assert_eq!(
        stored_ips(&fx, &id).await,
        vec![ip.clone()],
        "the repair wrote more than CNI's IP; log:\n{}",
        wd.log()
    );
    wd.wait_log(
        &[
            "REPAIRED",
            &id,
            &format!("not written: {added} (in the pod's namespace, not in CNI's result)"),
        ],
        Duration::from_secs(1),
    )
    .await;
    let v = sturdyctl_json(&fx, &["sandbox", &id]);
    assert_eq!(v["cni_ips"], serde_json::json!([ip]), "{v:#}");
    assert_eq!(v["unverified_ips"], serde_json::json!([added]), "{v:#}");
    assert_eq!(v["state"], "agree", "{v:#}");

    // What a restarted containerd reports is CNI's IP alone.
    fx.restart().await.expect("restart containerd");
    let mut cri = cri_ready(&fx).await;
    let status = cri.pod_status(&id).await.expect("PodSandboxStatus");
    let net = status.network.unwrap_or_default();
    assert_eq!(net.ip, ip);
    assert!(net.additional_ips.is_empty(), "{:?}", net.additional_ips);
    cri.stop_pod(&id).await.expect("StopPodSandbox");
    cri.remove_pod(&id).await.expect("RemovePodSandbox");
}

/// (peak RSS `VmHWM`, RSS `VmRSS`) of `pid`, in KiB.
fn memory(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The watchdog's last sandbox pass: (number, records decoded since its start).
fn last_pass(wd: &Watchdog) -> (u64, u64) {
    wd.log()
        .lines()
        .rev()
        .find_map(|l| {
            let rest = &l[l.find("sandbox pass ")? + "sandbox pass ".len()..];
            let n = rest.split(':').next()?.parse().ok()?;
            let decoded = rest.split(", ").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((n, decoded))
        })
        .unwrap_or((0, 0))
}

/// Adds `n` IPv4 /32 addresses inside `netns` with one `ip -batch`, spread over 250 veth
/// pairs of its own (the kernel adds an address in time linear in the addresses of its
/// interface: 100k on one interface take many minutes, spread they take seconds).
fn flood(netns: &std::path::Path, n: u32) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut cmds = String::new();
    for p in 0..250 {
        cmds.push_str(&format!("link add fa{p} type veth peer name fb{p}\n"));
    }
    for i in 0..n {
        let dev = i % 500;
        cmds.push_str(&format!(
            "addr add 10.{}.{}.{}/32 dev f{}{}\n",
            200 + (i >> 16),
            (i >> 8) & 255,
            i & 255,
            if dev % 2 == 0 { 'a' } else { 'b' },
            dev / 2
        ));
    }
    file.write_all(cmds.as_bytes()).unwrap();
    ip_in(netns, &format!("-batch {}", file.path().display()));
}

/// Peak RSS the watchdog may reach: its goal (docs/watchdog.md: under 20 MB with 100
/// pods), far below the DaemonSet's 64 Mi limit.
const WATCHDOG_PEAK_KIB: u64 = 20 * 1000 * 1000 / 1024;
/// What recording a namespace may add to a shim's peak RSS: the limits bound a snapshot
/// to 4096 interfaces, addresses and routes and a 1 MiB record.
const SHIM_GROWTH_KIB: u64 = 4 * 1024;

/// M3: a pod fills its namespace with 100k addresses (and so 100k local routes). The
/// shim's snapshot stops at the limits, writes a record of at most 1 MiB that says it is
/// truncated (and `sturdyctl sandboxes` shows it), and neither the shim nor the watchdog
/// grows beyond its budget; the watchdog decodes the record once, not every pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_100k_addresses_leaves_shim_and_watchdog_within_budget() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = watchdog(&fx);
    let RecordedPod {
        id,
        config: cfg,
        ip,
        netns,
    } = recorded_pod(&fx, &mut cri, "flood").await;
    let shim = fx.shim_pid(CRI_NAMESPACE, &id).expect("the pod's shim");
    let (shim_peak0, shim_rss0) = memory(shim);
    let (wd_peak0, wd_rss0) = memory(wd.pid());
    println!("before: shim peak {shim_peak0} KiB rss {shim_rss0} KiB; watchdog peak {wd_peak0} KiB rss {wd_rss0} KiB");

    let t0 = Instant::now();
    flood(&netns, 100_000);
    println!("added 100000 addresses in {:?}", t0.elapsed());
    // A container start makes the shim snapshot the namespace.
    let c1 = cri
        .create_container(&id, container_config("c1", &["/bin/sleep", "3600"]), &cfg)
        .await
        .expect("CreateContainer");
    cri.start_container(&c1).await.expect("StartContainer");
    let rec = wait_record(&fx, &id, Duration::from_secs(120), |r| {
        r.trigger == "container start"
    })
    .await;
    let size = std::fs::metadata(record_path(&fx, &id)).unwrap().len();
    println!("record: {size} bytes, truncated: {:?}", rec.truncated);
    assert!(
        size <= sandbox_record::MAX_RECORD_BYTES as u64,
        "{size} bytes"
    );
    let note = rec
        .truncated
        .clone()
        .expect("the record is flagged truncated");
    assert!(note.contains("address"), "{note}");
    assert_eq!(rec.pod_ips()[0], ip, "CNI's address is kept first");

    // Two passes that began after the record was written have read it; three more with the
    // record unchanged decode nothing.
    let (p, _) = last_pass(&wd);
    let passed = until(INTERVAL * 15, || last_pass(&wd).0 >= p + 2).await;
    assert!(passed, "no watchdog passes; log:\n{}", wd.log());
    let (p, decoded) = last_pass(&wd);
    let passed = until(INTERVAL * 15, || last_pass(&wd).0 >= p + 3).await;
    assert!(passed, "no watchdog passes; log:\n{}", wd.log());
    assert_eq!(
        last_pass(&wd).1,
        decoded,
        "unchanged records were decoded again"
    );

    let rows = sturdyctl_json(&fx, &["sandboxes"]);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["sandbox_id"] == id.as_str())
        .expect("the pod's row");
    assert_eq!(row["truncated"], note.as_str(), "{row:#}");

    let (shim_peak, shim_rss) = memory(shim);
    let (wd_peak, wd_rss) = memory(wd.pid());
    println!(
        "after: shim peak {shim_peak} KiB (+{}) rss {shim_rss} KiB; watchdog peak {wd_peak} KiB rss {wd_rss} KiB",
        shim_peak - shim_peak0
    );
    assert!(
        shim_peak - shim_peak0 <= SHIM_GROWTH_KIB,
        "the shim's peak RSS grew by {} KiB (budget {SHIM_GROWTH_KIB} KiB)",
        shim_peak - shim_peak0
    );
    assert!(
        wd_peak <= WATCHDOG_PEAK_KIB,
        "the watchdog's peak RSS is {wd_peak} KiB (budget {WATCHDOG_PEAK_KIB} KiB)"
    );

    cri.stop_pod(&id).await.expect("StopPodSandbox");
    cri.remove_pod(&id).await.expect("RemovePodSandbox");
}
