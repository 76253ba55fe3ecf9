//! Issue 11, test 3: the shim SIGKILLed while it writes its sandbox record, at seeded
//! random points: the record on disk always parses and is the old or the new one.
//!
//! The debug shim's test-only fault hook (`STURDY_RECORD_FAULT`, sandbox-record's
//! `fault` module) pauses every write after each of its steps (temp file written, synced,
//! renamed over the record), so the kill lands inside a write rather than between writes.

mod netmeta_support;

use std::time::{Duration, Instant};

use netmeta_support::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::{container_config, Containerd, Handler, CRI_NAMESPACE};

/// Pause after each step of a write: the whole write takes three times this.
const PAUSE_MS: u64 = 1500;
const ROUNDS: u64 = 3;

fn temp_files(fx: &Containerd, id: &str) -> Vec<String> {
    std::fs::read_dir(fx.sandbox_record_dir().join(CRI_NAMESPACE))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!(".{id}.json.tmp.")))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_writing_leaves_the_old_or_the_new_record() {
    let fault = format!("written:{PAUSE_MS},synced:{PAUSE_MS},renamed:{PAUSE_MS}");
    let fx = Containerd::builder()
        .env("STURDY_RECORD_FAULT", fault)
        .start()
        .await
        .expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let mut seed: u64 = std::env::var("STURDY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x11_5eed);
    println!("seed {seed} (STURDY_SEED)");
    for round in 0..ROUNDS {
        let cfg = fx.pod_config(&format!("kill{round}"));
        let id = cri
            .run_pod(Handler::Sturdy, &cfg)
            .await
            .expect("RunPodSandbox");
        let ip = cri.pod_ip(&id).await.expect("pod IP").to_string();
        // The first write, paused at each step, completes.
        let old = wait_record(&fx, &id, Duration::from_secs(20), |_| true).await;
        assert_eq!(old.pod_ips(), vec![ip.clone()]);
        let netns = cri.pod_netns(&id).await.unwrap().expect("netns");
        ip_in(&netns, "addr add 192.0.2.90/32 dev eth0");
        let c = cri
            .create_container(&id, container_config("c", &["/bin/sleep", "3600"]), &cfg)
            .await
            .expect("CreateContainer");
        cri.start_container(&c).await.expect("StartContainer");
        // The second write has begun once its temp file exists.
        let end = Instant::now() + Duration::from_secs(10);
        while temp_files(&fx, &id).is_empty() {
            assert!(
                Instant::now() < end,
                "round {round}: the second write never began"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = Duration::from_millis(seed % (3 * PAUSE_MS));
        tokio::time::sleep(at).await;
        let shim = fx.shim_pid(CRI_NAMESPACE, &id).expect("the pod's shim");
        kill(Pid::from_raw(shim), Signal::SIGKILL).expect("SIGKILL the shim");
        let step = match at.as_millis() as u64 / PAUSE_MS {
            0 => "temp file written",
            1 => "temp file synced",
            _ => "renamed, directory not yet synced",
        };
        let got = store(&fx)
            .read(CRI_NAMESPACE, &id)
            .unwrap_or_else(|e| panic!("round {round} (killed {at:?} in, {step}): {e}"))
            .expect("the record is gone");
        let which = if got == old {
            "old"
        } else {
            assert_eq!(
                got.pod_ips(),
                vec![ip.clone(), "192.0.2.90".to_string()],
                "round {round}: neither the old nor the new record: {got:?}"
            );
            "new"
        };
        println!(
            "round {round}: shim killed {at:?} into the write ({step}): the {which} record, temp files left {:?}",
            temp_files(&fx, &id)
        );
        let _ = cri.stop_pod(&id).await;
        let _ = cri.remove_pod(&id).await;
    }
}
