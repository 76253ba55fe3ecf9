//! The Kubernetes binaries: `../shared/tools/kubernetes-node-1.32.13.tar.xz`, unpacked once.

use std::path::PathBuf;

use crate::error::Result;
use crate::tools;

/// The archive holding kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
/// kubectl (v1.32.13, static) and etcd 3.5.16.
pub const KUBERNETES_NODE: &str = "kubernetes-node-1.32.13";

/// Paths of every program a node runs.
#[derive(Debug, Clone)]
pub struct KubeBinaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub apiserver: PathBuf,
    /// kube-controller-manager.
    pub kcm: PathBuf,
    /// kube-scheduler.
    pub scheduler: PathBuf,
    /// kubelet.
    pub kubelet: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
}

impl KubeBinaries {
    /// Whether the archive is on this host (tests skip visibly when it is not).
    pub fn available() -> bool {
        tools::available(KUBERNETES_NODE)
    }

    /// The unpacked programs (unpacking the archive the first time).
    pub fn locate() -> Result<KubeBinaries> {
        let t = |p| tools::tool(KUBERNETES_NODE, p);
        Ok(KubeBinaries {
            etcd: t("etcd")?,
            apiserver: t("kube-apiserver")?,
            kcm: t("kube-controller-manager")?,
            scheduler: t("kube-scheduler")?,
            kubelet: t("kubelet")?,
            kubectl: t("kubectl")?,
        })
    }
}
