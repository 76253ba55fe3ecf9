//! Task Metrics (containerd's `Tasks.Metrics`, what `ctr task metrics` and cAdvisor-less
//! stats read) for the same pod shape through both shims in one containerd: the cgroup
//! v1 or v2 message the host's hierarchy calls for, with memory, CPU, pids (and on v2 IO)
//! values that are there and plausible, and sturdy reporting every section the Go shim does.
//! On this host kind it reads cgroup v1; the VM tier (scripts/vm-tier.sh) runs it on v2.

use std::collections::BTreeSet;
use std::time::Duration;

use containerd_client::services::v1::MetricsRequest;
use containerd_client::with_namespace;
use containerd_shim_protos::cgroups::metrics::Metrics as V1Metrics;
use containerd_shim_protos::cgroups_v2::metrics::Metrics as V2Metrics;
use containerd_shim_protos::protobuf::Message;
use sturdy_integration::{container_config, until_some, Containerd, Handler, CRI_NAMESPACE};
use tonic::Request;

const T: Duration = Duration::from_secs(120);

/// What a container's metrics said, reduced to what both message types carry.
#[derive(Debug, Clone, Default)]
struct Usage {
    type_url: String,
    /// Sections present in the message (`cpu`, `memory`, `pids`, `io`/`blkio`, ...).
    sections: BTreeSet<&'static str>,
    cpu_usec: u64,
    memory_bytes: u64,
    pids: u64,
    io_write_bytes: u64,
}

impl Usage {
    fn v2(&self) -> bool {
        self.type_url.ends_with("cgroups.v2.Metrics")
    }

    /// Done with its work as the metrics can tell. IO only on v2: v1's blkio counts direct IO
    /// of an overlay rootfs neither here nor for the Go shim (seen on this host kind), while
    /// v2's io.stat does.
    fn busy(&self) -> bool {
        self.cpu_usec > 50_000
            && self.memory_bytes > 0
            && self.pids >= 3
            && (!self.v2() || self.io_write_bytes >= 8 << 20)
    }
}

fn decode(type_url: &str, value: &[u8]) -> Usage {
    let mut u = Usage {
        type_url: type_url.to_string(),
        ..Default::default()
    };
    if type_url.ends_with("cgroups.v2.Metrics") {
        let m = V2Metrics::parse_from_bytes(value).expect("v2 Metrics");
        for (name, present) in [
            ("cpu", m.cpu.is_some()),
            ("memory", m.memory.is_some()),
            ("pids", m.pids.is_some()),
            ("io", m.io.is_some()),
            ("memory_events", m.memory_events.is_some()),
        ] {
            if present {
                u.sections.insert(name);
            }
        }
        u.cpu_usec = m.cpu.usage_usec;
        u.memory_bytes = m.memory.usage;
        u.pids = m.pids.current;
        u.io_write_bytes = m.io.usage.iter().map(|e| e.wbytes).sum();
    } else if type_url.ends_with("cgroups.v1.Metrics") {
        let m = V1Metrics::parse_from_bytes(value).expect("v1 Metrics");
        for (name, present) in [
            ("cpu", m.cpu.is_some()),
            ("memory", m.memory.is_some()),
            ("pids", m.pids.is_some()),
            ("blkio", m.blkio.is_some()),
        ] {
            if present {
                u.sections.insert(name);
            }
        }
        u.cpu_usec = m.cpu.usage.total / 1000;
        u.memory_bytes = m.memory.usage.usage;
        u.pids = m.pids.current;
        u.io_write_bytes = m
            .blkio
            .io_service_bytes_recursive
            .iter()
            .filter(|e| e.op.eq_ignore_ascii_case("write"))
            .map(|e| e.value)
            .sum();
    } else {
        panic!("unknown metrics type {type_url}");
    }
    u
}

async fn metrics(fx: &Containerd, id: &str) -> Option<Usage> {
    let mut tasks = fx.client().await.ok()?.tasks();
    let req = MetricsRequest {
        filters: vec![format!("id=={id}")],
    };
    let resp = tasks
        .metrics(with_namespace!(req, CRI_NAMESPACE))
        .await
        .ok()?
        .into_inner();
    let m = resp.metrics.into_iter().find(|m| m.id == id)?;
    let data = m.data?;
    Some(decode(&data.type_url, &data.value))
}

/// The same container through both shims: a few processes, some CPU, 4 MiB held, and 8 MiB
/// written to the rootfs with O_DIRECT (so both hierarchies charge it to the container), so every section has something to count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_metrics_match_the_go_shim() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let work =
        "sleep 3600 & sleep 3600 & x=a; i=0; while [ $i -lt 22 ]; do x=$x$x; i=$((i+1)); done; \
                i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
                dd if=/dev/zero of=/tmp/blob bs=1M count=8 oflag=direct 2>/dev/null; sleep 3600";
    let mut seen = Vec::new();
    for h in [Handler::Runc, Handler::Sturdy] {
        let pod_config = fx.pod_config(&format!("metrics-{}", h.name()));
        let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");
        let ctr = cri
            .create_container(
                &pod,
                container_config("work", &["/bin/sh", "-c", work]),
                &pod_config,
            )
            .await
            .expect("CreateContainer");
        cri.start_container(&ctr).await.expect("StartContainer");
        let usage = until_some(T, || {
            let m = metrics(&fx, &ctr);
            async move { m.await.filter(Usage::busy) }
        })
        .await;
        let Some(usage) = usage else {
            panic!("{h}: metrics stayed low: {:?}", metrics(&fx, &ctr).await);
        };
        eprintln!("{h}: {usage:?}");
        // Plausible, not just non-zero: less memory than the machine has, no more processes
        // than the container started plus dd, no more IO than a few times what dd wrote.
        assert!(usage.memory_bytes < 1 << 30, "{h}: {usage:?}");
        assert!(usage.pids <= 5, "{h}: {usage:?}");
        assert!(usage.io_write_bytes < 64 << 20, "{h}: {usage:?}");
        seen.push((h, usage));
        cri.stop_pod(&pod).await.expect("StopPodSandbox");
        cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    }
    let (go, sturdy) = (&seen[0].1, &seen[1].1);
    assert_eq!(sturdy.type_url, go.type_url, "the message type");
    let missing: Vec<_> = go.sections.difference(&sturdy.sections).collect();
    assert!(
        missing.is_empty(),
        "sturdy lacks sections the Go shim reports: {missing:?}"
    );
}
