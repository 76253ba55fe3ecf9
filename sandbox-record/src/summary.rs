//! What a reader that watches every record keeps of each (the watchdog, every interval):
//! who the pod is and its addresses as IPs, a few dozen bytes per address and nothing of
//! interfaces or routes, so that a node full of records stays within its memory limit.

use std::net::IpAddr;

use serde::Serialize;

use crate::limits::MAX_ADDRESSES;
use crate::model::{Pod, Record};

/// The part of a [`Record`] needed to judge it against containerd's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// containerd's TTRPC address the record was written for.
    pub containerd: String,
    /// The pod.
    pub pod: Pod,
    /// Whether the pod uses the host's network.
    pub host_network: bool,
    /// [`Record::pod_ips`], in CRI's order.
    pub pod_ips: Vec<IpAddr>,
    /// [`Record::all_ips`], sorted (looked up, not shown).
    #[serde(skip)]
    pub all_ips: Vec<IpAddr>,
    /// [`Record::truncated`].
    pub truncated: Option<String>,
    /// When the snapshot was taken, milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    /// Why.
    pub trigger: String,
}

impl Summary {
    /// Whether this record was written for the containerd whose socket is `address`.
    pub fn belongs_to(&self, address: &str) -> bool {
        self.containerd.is_empty()
            || self.containerd == address
            || self.containerd.strip_suffix(".ttrpc") == Some(address)
    }

    /// Whether `ip` is among the namespace's global addresses.
    pub fn has_ip(&self, ip: &IpAddr) -> bool {
        self.all_ips.binary_search(ip).is_ok()
    }
}

/// The strings that parse as IPs, at most [`MAX_ADDRESSES`] of them (a record the shim
/// wrote never has more; one that does was not written by it, and is judged by the first).
fn ips(v: Vec<String>) -> Vec<IpAddr> {
    v.iter()
        .filter_map(|s| s.parse().ok())
        .take(MAX_ADDRESSES)
        .collect()
}

impl From<Record> for Summary {
    fn from(r: Record) -> Self {
        let mut all_ips = ips(r.all_ips());
        all_ips.sort_unstable();
        all_ips.dedup();
        Summary {
            host_network: r.host_network(),
            pod_ips: ips(r.pod_ips()),
            all_ips,
            containerd: r.containerd,
            pod: r.pod,
            truncated: r.truncated,
            taken_at_ms: r.taken_at_ms,
            trigger: r.trigger,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample;

    #[test]
    fn keeps_the_ips_in_order_and_looks_them_up() {
        let s = Summary::from(sample("s"));
        let v4: IpAddr = "198.18.0.50".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(s.pod_ips, vec![v4, v6]);
        assert!(s.has_ip(&v4) && s.has_ip(&v6));
        assert!(!s.has_ip(&"198.18.0.51".parse().unwrap()));
        assert!(s.belongs_to("/run/containerd/containerd.sock"));
        assert!(!s.host_network);
    }
}
