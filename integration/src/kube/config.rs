//! What each component is told: kubeconfigs, the kubelet's configuration file and the
//! command lines of etcd and the control plane.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::namespace::NODE_IP;
use super::pki::{Pki, NODE_NAME};
use crate::error::{IoContext, Result};

/// The API server's address as every component and the kubectl wrapper see it.
pub const APISERVER_URL: &str = "https://127.0.0.1:6443";
/// The service network (the API server's `kubernetes` Service takes its first address).
pub const SERVICE_CIDR: &str = "198.18.128.0/24";
/// In-place resize of pod resources: alpha (off by default) in Kubernetes 1.32.
pub const FEATURE_GATES: &str = "InPlacePodVerticalScaling=true";

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Writes `<dir>/kubeconfig/<name>.kubeconfig` for the client pair `pair` of `pki`; JSON,
/// which is valid YAML and needs no YAML writer.
pub fn write_kubeconfig(dir: &Path, pki: &Pki, name: &str, pair: &str) -> Result<PathBuf> {
    let pair = pki.pair(pair);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sturdy", "cluster": {
            "server": APISERVER_URL,
            "certificate-authority": p(&pki.ca().cert),
        }}],
        "users": [{"name": name, "user": {
            "client-certificate": p(&pair.cert),
            "client-key": p(&pair.key),
        }}],
        "contexts": [{"name": "sturdy", "context": {"cluster": "sturdy", "user": name}}],
        "current-context": "sturdy",
    });
    let kdir = dir.join("kubeconfig");
    std::fs::create_dir_all(&kdir).ctx(|| format!("creating {}", kdir.display()))?;
    let path = kdir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .ctx(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Where the kubelet keeps its state, and what it is told on top of the defaults.
#[derive(Debug, Clone)]
pub struct KubeletPaths {
    /// `--root-dir`.
    pub root: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Static pod manifests (none; the kubelet insists on watching some dir).
    pub manifests: PathBuf,
    /// `podLogsDir`.
    pub pod_logs: PathBuf,
}

impl KubeletPaths {
    /// The layout below a node dir.
    pub fn under(dir: &Path) -> KubeletPaths {
        KubeletPaths {
            root: dir.join("kubelet"),
            config: dir.join("kubelet-config.json"),
            manifests: dir.join("manifests"),
            pod_logs: dir.join("pod-logs"),
        }
    }
}

/// The kubelet's configuration: cgroupfs under a private `cgroup_root`, the host's kernel
/// tunables only checked (against the namespace's stand-ins), no image GC of the offline
/// images, and `extra` (a JSON object) merged over it.
pub fn write_kubelet_config(
    paths: &KubeletPaths,
    pki: &Pki,
    cri_socket: &Path,
    cgroup_root: &str,
    extra: &serde_json::Value,
) -> Result<()> {
    for d in [&paths.root, &paths.manifests, &paths.pod_logs] {
        std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
    }
    let serving = pki.pair("kubelet-serving");
    let endpoint = format!("unix://{}", p(cri_socket));
    let mut config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": p(&serving.cert),
        "tlsPrivateKeyFile": p(&serving.key),
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": p(&pki.ca().cert)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": true,
        "enforceNodeAllocatable": ["pods"],
        "failCgroupV1": false,
        "failSwapOn": false,
        "protectKernelDefaults": true,
        "staticPodPath": p(&paths.manifests),
        "podLogsDir": p(&paths.pod_logs),
        "resolvConf": "",
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        // Root here lacks CAP_SYS_RESOURCE: the kubelet's own -999 would fail.
        "oomScoreAdj": 0,
        "registerNode": true,
        "rotateCertificates": false,
        "serializeImagePulls": false,
        "featureGates": {"InPlacePodVerticalScaling": true},
    });
    if let (Some(base), Some(more)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            base.insert(k.clone(), v.clone());
        }
    }
    std::fs::write(&paths.config, serde_json::to_vec_pretty(&config)?)
        .ctx(|| format!("writing {}", paths.config.display()))
}

/// The kubelet's command line.
pub fn kubelet_args(paths: &KubeletPaths, kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--config={}", p(&paths.config)),
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--hostname-override={NODE_NAME}"),
        format!("--node-ip={NODE_IP}"),
        format!("--root-dir={}", p(&paths.root)),
        format!("--cert-dir={}", p(&paths.root.join("pki"))),
        "--v=2".into(),
    ]
}

/// etcd's command line: one member on loopback, no fsync (a test cluster dies with its run).
pub fn etcd_args(data: &Path) -> Vec<String> {
    vec![
        "--name=sturdy".into(),
        format!("--data-dir={}", p(data)),
        "--listen-client-urls=http://127.0.0.1:2379".into(),
        "--advertise-client-urls=http://127.0.0.1:2379".into(),
        "--listen-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=sturdy=http://127.0.0.1:2380".into(),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]
}

/// kube-apiserver's command line.
pub fn apiserver_args(pki: &Pki) -> Vec<String> {
    let serving = pki.pair("apiserver");
    let kubelet_client = pki.pair("apiserver-kubelet-client");
    let ca = p(&pki.ca().cert);
    vec![
        "--etcd-servers=http://127.0.0.1:2379".into(),
        // 0.0.0.0 of the node's own network namespace.
        "--bind-address=0.0.0.0".into(),
        format!("--advertise-address={NODE_IP}"),
        "--secure-port=6443".into(),
        format!("--tls-cert-file={}", p(&serving.cert)),
        format!("--tls-private-key-file={}", p(&serving.key)),
        format!("--client-ca-file={ca}"),
        format!("--kubelet-client-certificate={}", p(&kubelet_client.cert)),
        format!("--kubelet-client-key={}", p(&kubelet_client.key)),
        format!("--kubelet-certificate-authority={ca}"),
        "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p(&pki.sa_pub())),
        format!("--service-account-signing-key-file={}", p(&pki.sa_key())),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        format!("--feature-gates={FEATURE_GATES}"),
    ]
}

/// kube-controller-manager's command line (it creates the `default` ServiceAccounts pods
/// need, and runs the DaemonSet controller).
pub fn kcm_args(pki: &Pki, kubeconfig: &Path) -> Vec<String> {
    let ca = pki.ca();
    let kc = p(kubeconfig);
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        "--leader-elect=false".into(),
        "--use-service-account-credentials".into(),
        format!("--service-account-private-key-file={}", p(&pki.sa_key())),
        format!("--root-ca-file={}", p(&ca.cert)),
        format!("--cluster-signing-cert-file={}", p(&ca.cert)),
        format!("--cluster-signing-key-file={}", p(&ca.key)),
        "--allocate-node-cidrs=false".into(),
        format!("--feature-gates={FEATURE_GATES}"),
    ]
}

/// kube-scheduler's command line.
pub fn scheduler_args(kubeconfig: &Path) -> Vec<String> {
    let kc = p(kubeconfig);
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        "--leader-elect=false".into(),
        format!("--feature-gates={FEATURE_GATES}"),
    ]
}
