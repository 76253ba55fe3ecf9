//! What a record says about one pod sandbox.

use serde::{Deserialize, Serialize};

/// The interface CRI names the pod's CNI interface (its pod IPs are that interface's).
pub const POD_INTERFACE: &str = "eth0";

/// One pod sandbox's network, as the shim saw it inside the pod's network namespace.
///
/// The fields of every type here are declared in the order of their names: serialised
/// with serde_json they come out in the canonical form the checksum covers (sorted keys),
/// without a `serde_json::Value` tree in between (`format::tests` checks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// containerd's TTRPC address as the shim was given it (by default containerd's gRPC
    /// socket plus `.ttrpc`): tells the records of several containerds apart.
    #[serde(default)]
    pub containerd: String,
    /// containerd namespace (`k8s.io` under CRI).
    pub namespace: String,
    /// The network the pod had.
    pub network: Network,
    /// The pod, from CRI's annotations.
    pub pod: Pod,
    /// The sandbox container's id (CRI's pod sandbox id).
    pub sandbox_id: String,
    /// When the snapshot was taken, milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    /// What made the shim take it: `create`, `start`, `retry`, `container start`, `refresh`.
    pub trigger: String,
    /// Set when the namespace held more than a record keeps (docs/netmeta.md, "Limits"):
    /// what was left out. Absent from records that hold everything, so their bytes (and
    /// checksums) are what they were before the limits existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

/// The pod's identity as CRI annotates the sandbox container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
}

/// The pod's network: the host's, or its own namespace's content.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Network {
    /// The pod shares the host's network namespace: nothing was entered or recorded.
    Host,
    /// The pod has its own network namespace.
    Namespace {
        /// The namespace's path (from the OCI spec).
        path: String,
        /// Its interfaces, by index.
        interfaces: Vec<Interface>,
        /// Its routes (main table and any other, both families).
        routes: Vec<Route>,
    },
}

/// By hand, so that the `mode` tag takes its sorted place among the fields (serde's
/// internally tagged derive writes it first).
impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            Network::Host => {
                let mut m = s.serialize_struct("Network", 1)?;
                m.serialize_field("mode", "host")?;
                m.end()
            }
            Network::Namespace {
                path,
                interfaces,
                routes,
            } => {
                let mut m = s.serialize_struct("Network", 4)?;
                m.serialize_field("interfaces", interfaces)?;
                m.serialize_field("mode", "namespace")?;
                m.serialize_field("path", path)?;
                m.serialize_field("routes", routes)?;
                m.end()
            }
        }
    }
}

/// A network interface in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its addresses in the kernel's order (the order they were added).
    pub addresses: Vec<Address>,
    /// Interface index.
    pub index: u32,
    /// Hardware address, `aa:bb:…`, empty when it has none.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Name (`lo`, `eth0`, …).
    pub name: String,
    /// Whether it is administratively up.
    pub up: bool,
}

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// The address, in its usual text form.
    pub ip: String,
    /// Prefix length.
    pub prefix: u8,
    /// `global`, `site`, `link` or `host`.
    pub scope: String,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination with prefix (`0.0.0.0/0` for the default route).
    pub destination: String,
    /// Next hop, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Output interface name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Metric (priority), 0 when unset.
    pub metric: u32,
    /// `global`, `link`, `host`, … .
    pub scope: String,
    /// Preferred source address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Routing table.
    pub table: u32,
}

impl Record {
    /// Whether this record was written for the containerd whose gRPC socket is `address`
    /// (records that name none match every containerd).
    pub fn belongs_to(&self, address: &str) -> bool {
        self.containerd.is_empty()
            || self.containerd == address
            || self.containerd.strip_suffix(".ttrpc") == Some(address)
    }

    /// Whether the pod uses the host's network.
    pub fn host_network(&self) -> bool {
        matches!(self.network, Network::Host)
    }

    /// The pod's IPs in the order CRI reports them: the global addresses of the pod
    /// interface (`eth0`, or every non-loopback interface when there is none), the first
    /// IPv4 one first and the others after it in the kernel's order, as containerd's CRI
    /// picks its `IP` and `AdditionalIPs` from a CNI result.
    pub fn pod_ips(&self) -> Vec<String> {
        let Network::Namespace { interfaces, .. } = &self.network else {
            return Vec::new();
        };
        let pod_if: Vec<&Interface> = match interfaces.iter().find(|i| i.name == POD_INTERFACE) {
            Some(i) => vec![i],
            None => interfaces.iter().filter(|i| i.name != "lo").collect(),
        };
        let mut ips: Vec<String> = pod_if
            .iter()
            .flat_map(|i| i.addresses.iter())
            .filter(|a| a.scope == "global")
            .map(|a| a.ip.clone())
            .collect();
        if let Some(v4) = ips.iter().position(|ip| !ip.contains(':')) {
            let first = ips.remove(v4);
            ips.insert(0, first);
        }
        ips
    }

    /// Every global address in the namespace, on any interface.
    pub fn all_ips(&self) -> Vec<String> {
        let Network::Namespace { interfaces, .. } = &self.network else {
            return Vec::new();
        };
        interfaces
            .iter()
            .flat_map(|i| i.addresses.iter())
            .filter(|a| a.scope == "global")
            .map(|a| a.ip.clone())
            .collect()
    }

    /// The same network, ignoring when and why it was taken.
    pub fn same_network(&self, other: &Record) -> bool {
        self.sandbox_id == other.sandbox_id
            && self.namespace == other.namespace
            && self.containerd == other.containerd
            && self.pod == other.pod
            && self.network == other.network
            && self.truncated == other.truncated
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn addr(ip: &str, prefix: u8, scope: &str) -> Address {
        Address {
            ip: ip.into(),
            prefix,
            scope: scope.into(),
        }
    }

    pub(crate) fn iface(index: u32, name: &str, addresses: Vec<Address>) -> Interface {
        Interface {
            index,
            name: name.into(),
            mac: if name == "lo" {
                "00:00:00:00:00:00".into()
            } else {
                "0a:58:c6:12:00:32".into()
            },
            mtu: if name == "lo" { 65536 } else { 1500 },
            up: true,
            addresses,
        }
    }

    /// A typical CNI pod: lo, eth0 with one IPv4 address, a default route.
    pub(crate) fn sample(id: &str) -> Record {
        Record {
            sandbox_id: id.into(),
            namespace: "k8s.io".into(),
            containerd: "/run/containerd/containerd.sock.ttrpc".into(),
            pod: Pod {
                name: "web-0".into(),
                namespace: "default".into(),
                uid: "0f5a-uid".into(),
            },
            network: Network::Namespace {
                path: "/var/run/netns/cni-1234".into(),
                interfaces: vec![
                    iface(
                        1,
                        "lo",
                        vec![addr("127.0.0.1", 8, "host"), addr("::1", 128, "host")],
                    ),
                    iface(
                        3,
                        "eth0",
                        vec![
                            addr("fd00::5", 64, "global"),
                            addr("198.18.0.50", 28, "global"),
                            addr("fe80::858:c6ff:fe12:32", 64, "link"),
                        ],
                    ),
                ],
                routes: vec![Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: Some("198.18.0.49".into()),
                    interface: Some("eth0".into()),
                    source: None,
                    table: 254,
                    metric: 0,
                    scope: "global".into(),
                }],
            },
            taken_at_ms: 1_700_000_000_000,
            trigger: "create".into(),
            truncated: None,
        }
    }

    #[test]
    fn pod_ips_put_the_first_ipv4_first_and_skip_link_local() {
        assert_eq!(sample("s").pod_ips(), vec!["198.18.0.50", "fd00::5"]);
        assert_eq!(sample("s").all_ips(), vec!["fd00::5", "198.18.0.50"]);
    }

    #[test]
    fn pod_ips_without_eth0_use_every_non_loopback_interface() {
        let mut r = sample("s");
        if let Network::Namespace { interfaces, .. } = &mut r.network {
            interfaces[1].name = "net1".into();
            interfaces.push(iface(4, "net2", vec![addr("10.1.0.2", 24, "global")]));
        }
        assert_eq!(r.pod_ips(), vec!["198.18.0.50", "fd00::5", "10.1.0.2"]);
    }

    #[test]
    fn belongs_to_its_containerd_only() {
        let mut r = sample("s");
        assert!(r.belongs_to("/run/containerd/containerd.sock"));
        assert!(!r.belongs_to("/run/k3s/containerd/containerd.sock"));
        r.containerd.clear();
        assert!(r.belongs_to("/run/k3s/containerd/containerd.sock"));
    }

    #[test]
    fn host_network_has_no_ips() {
        let mut r = sample("s");
        r.network = Network::Host;
        assert!(r.host_network());
        assert!(r.pod_ips().is_empty());
    }

    #[test]
    fn same_network_ignores_time_and_trigger() {
        let a = sample("s");
        let mut b = a.clone();
        b.taken_at_ms += 5;
        b.trigger = "start".into();
        assert!(a.same_network(&b));
        b.network = Network::Host;
        assert!(!a.same_network(&b));
    }
}
