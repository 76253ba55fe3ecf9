//! Helpers of the sandbox network record tests: the records the shim wrote, containerd's
//! own record of a sandbox (the `io.cri-containerd.sandbox.metadata` extension), and
//! `sturdyctl sandboxes` / `sandbox` runs.
// Several test binaries include this module and each uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::{GetContainerRequest, UpdateContainerRequest};
use sandbox_record::{Record, Store};
use sturdy_integration::containerd::sturdyctl_bin;
use sturdy_integration::k8s_cri::v1::PodSandboxConfig;
use sturdy_integration::{container_config, Containerd, Cri, Handler, CRI_NAMESPACE};

/// CRI's sandbox metadata extension.
pub const EXTENSION: &str = "io.cri-containerd.sandbox.metadata";
/// How long a record may take to appear after RunPodSandbox returned.
pub const RECORDED: Duration = Duration::from_secs(10);

/// A running pod of handler `sturdy` whose record names the IP CNI gave it.
pub struct RecordedPod {
    pub id: String,
    pub config: PodSandboxConfig,
    /// The IP CNI gave it.
    pub ip: String,
    /// Its network namespace (CRI's path).
    pub netns: PathBuf,
}

/// Runs pod `name` through handler `sturdy` and waits for its record to name its IP.
pub async fn recorded_pod(fx: &Containerd, cri: &mut Cri, name: &str) -> RecordedPod {
    let config = fx.pod_config(name);
    let id = cri
        .run_pod(Handler::Sturdy, &config)
        .await
        .expect("RunPodSandbox");
    let ip = cri.pod_ip(&id).await.expect("pod IP").to_string();
    wait_record(fx, &id, RECORDED, |r| !r.pod_ips().is_empty()).await;
    let netns = cri.pod_netns(&id).await.unwrap().expect("the pod's netns");
    RecordedPod {
        id,
        config,
        ip,
        netns,
    }
}

/// Adds `address` to the pod's eth0 (as a pod with CAP_NET_ADMIN can) and starts a
/// container `c1`, whose start makes the shim record the namespace again; that record,
/// once it holds both IPs.
pub async fn add_address(
    fx: &Containerd,
    cri: &mut Cri,
    pod: &RecordedPod,
    address: &str,
) -> Record {
    ip_in(&pod.netns, &format!("addr add {address}/32 dev eth0"));
    let c1 = cri
        .create_container(
            &pod.id,
            container_config("c1", &["/bin/sleep", "3600"]),
            &pod.config,
        )
        .await
        .expect("CreateContainer");
    cri.start_container(&c1).await.expect("StartContainer");
    wait_record(fx, &pod.id, RECORDED, |r| r.pod_ips().len() == 2).await
}

/// The record store of the fixture's sturdy shims.
pub fn store(fx: &Containerd) -> Store {
    Store::new(fx.sandbox_record_dir())
}

/// The record file of sandbox `id`.
pub fn record_path(fx: &Containerd, id: &str) -> std::path::PathBuf {
    store(fx).path(CRI_NAMESPACE, id).unwrap()
}

/// Waits until the record of `id` reads and satisfies `ok`; panics with what it saw.
pub async fn wait_record(
    fx: &Containerd,
    id: &str,
    limit: Duration,
    ok: impl Fn(&Record) -> bool,
) -> Record {
    let end = Instant::now() + limit;
    loop {
        let got = store(fx).read(CRI_NAMESPACE, id);
        if let Ok(Some(r)) = &got {
            if ok(r) {
                return r.clone();
            }
        }
        if Instant::now() > end {
            panic!("no matching record of {id} within {limit:?}: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn with_ns<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", CRI_NAMESPACE.parse().unwrap());
    req
}

/// containerd's stored container `id` (every field).
pub async fn container(fx: &Containerd, id: &str) -> containerd_client::services::v1::Container {
    let mut c = ContainersClient::new(fx.channel().await.unwrap());
    c.get(with_ns(GetContainerRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap()
}

/// containerd's stored sandbox metadata JSON of `id`.
pub async fn metadata(fx: &Containerd, id: &str) -> serde_json::Value {
    let c = container(fx, id).await;
    let any = c
        .extensions
        .get(EXTENSION)
        .expect("the sandbox metadata extension");
    serde_json::from_slice(&any.value).unwrap()
}

/// containerd's stored pod IPs of `id` (IP first, then AdditionalIPs).
pub async fn stored_ips(fx: &Containerd, id: &str) -> Vec<String> {
    let m = metadata(fx, id).await;
    let mut ips = vec![m["Metadata"]["IP"].as_str().unwrap_or_default().to_string()];
    ips.extend(
        m["Metadata"]["AdditionalIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from)),
    );
    ips.retain(|s| !s.is_empty());
    ips
}

/// Incident 000 emulated: containerd's stored record of `id` loses its IPs, exactly what
/// containerd 1.6.9–1.6.14 stored (the record written before CNI ran, never updated).
pub async fn strip_ips(fx: &Containerd, id: &str) {
    let c = container(fx, id).await;
    let mut any = c.extensions.get(EXTENSION).unwrap().clone();
    let mut m: serde_json::Value = serde_json::from_slice(&any.value).unwrap();
    m["Metadata"]["IP"] = "".into();
    m["Metadata"]["AdditionalIPs"] = serde_json::Value::Null;
    any.value = serde_json::to_vec(&m).unwrap();
    let mut client = ContainersClient::new(fx.channel().await.unwrap());
    client
        .update(with_ns(UpdateContainerRequest {
            container: Some(containerd_client::services::v1::Container {
                id: id.into(),
                extensions: [(EXTENSION.to_string(), any)].into_iter().collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("extensions.{EXTENSION}")],
            }),
        }))
        .await
        .unwrap();
    assert!(stored_ips(fx, id).await.is_empty());
}

/// `sturdyctl ARGS --address … --dir …`, its JSON output.
pub fn sturdyctl_json(fx: &Containerd, args: &[&str]) -> serde_json::Value {
    let bin = sturdyctl_bin();
    let out = Command::new(&bin)
        .args(args)
        .arg("--json")
        .arg("--address")
        .arg(fx.socket())
        .arg("--dir")
        .arg(fx.sandbox_record_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "sturdyctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sturdyctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The state `sturdyctl sandbox ID` reports.
pub fn state_of(fx: &Containerd, id: &str) -> String {
    sturdyctl_json(fx, &["sandbox", id])["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Runs `ip ARGS` inside the network namespace at `netns` (the test may; the shim never).
pub fn ip_in(netns: &Path, args: &str) {
    let st = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("ip")
        .args(args.split(' '))
        .status()
        .expect("run nsenter ip");
    assert!(st.success(), "ip {args} in {}", netns.display());
}

/// Flips one byte in the middle of a file.
pub fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x02;
    std::fs::write(path, bytes).unwrap();
}

/// A CRI client once CRI answers again after a containerd (re)start: containerd's API is
/// up before the CRI plugin has recovered its pods ("server is not initialized yet").
pub async fn cri_ready(fx: &Containerd) -> sturdy_integration::Cri {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cri = fx.cri().await.expect("cri client");
        match cri.list_pods().await {
            Ok(_) => return cri,
            Err(e) if Instant::now() > end => panic!("CRI did not come back: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
