//! containerd CRI's own record of a sandbox: the container extension
//! `io.cri-containerd.sandbox.metadata`, JSON `{"Version":"v1","Metadata":{…}}` (1.6, 1.7
//! and the pod sandbox containers of 2.x alike; docs/netmeta.md).

use serde_json::Value;

/// The container extension CRI keeps a sandbox's metadata in.
pub const EXTENSION: &str = "io.cri-containerd.sandbox.metadata";
/// The only metadata version known.
pub const VERSION: &str = "v1";

/// What the watchdog reads from CRI's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriNetwork {
    /// The pod IP (`""` when CRI has none).
    pub ip: String,
    /// Further pod IPs.
    pub additional_ips: Vec<String>,
    /// The network namespace path CRI recorded.
    pub netns_path: String,
    /// Whether the pod config asks for the host's network.
    pub host_network: bool,
}

impl CriNetwork {
    /// Every IP, the pod IP first; empty when CRI has lost them (or never had any).
    pub fn ips(&self) -> Vec<String> {
        std::iter::once(self.ip.clone())
            .chain(self.additional_ips.iter().cloned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Why CRI's record could not be read or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriError {
    /// Not JSON, or not of the expected shape.
    #[error("containerd's {EXTENSION} is not sandbox metadata: {0}")]
    Malformed(String),
    /// A metadata version this tool does not know (nothing is written to it).
    #[error("containerd's {EXTENSION} has metadata version {0:?}, only {VERSION:?} is known")]
    Version(String),
}

fn metadata(doc: &Value) -> Result<&serde_json::Map<String, Value>, CriError> {
    let version = doc
        .get("Version")
        .and_then(Value::as_str)
        .ok_or_else(|| CriError::Malformed("no \"Version\"".into()))?;
    if version != VERSION {
        return Err(CriError::Version(version.into()));
    }
    doc.get("Metadata")
        .and_then(Value::as_object)
        .ok_or_else(|| CriError::Malformed("no \"Metadata\" object".into()))
}

/// Reads the network part of the extension's JSON.
pub fn parse(bytes: &[u8]) -> Result<CriNetwork, CriError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| CriError::Malformed(e.to_string()))?;
    let m = metadata(&doc)?;
    let s = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    // runtime.NamespaceMode NODE = 2: the pod uses the host's network.
    let host_network = m
        .get("Config")
        .and_then(|c| c.pointer("/linux/security_context/namespace_options/network"))
        .and_then(Value::as_i64)
        == Some(2);
    Ok(CriNetwork {
        ip: s("IP"),
        additional_ips: m
            .get("AdditionalIPs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        netns_path: s("NetNSPath"),
        host_network,
    })
}

/// The extension's JSON with `IP` and `AdditionalIPs` set to `ips` (the first is the pod
/// IP) and everything else as it was: only those two members are touched, the others keep
/// their values (re-encoded: containerd reads JSON by name, not by layout).
pub fn with_ips(bytes: &[u8], ips: &[String]) -> Result<Vec<u8>, CriError> {
    let mut doc: Value =
        serde_json::from_slice(bytes).map_err(|e| CriError::Malformed(e.to_string()))?;
    metadata(&doc)?;
    let m = doc
        .get_mut("Metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| CriError::Malformed("no \"Metadata\" object".into()))?;
    let (first, rest) = match ips.split_first() {
        Some((f, r)) => (f.clone(), r.to_vec()),
        None => (String::new(), Vec::new()),
    };
    m.insert("IP".into(), Value::String(first));
    m.insert(
        "AdditionalIPs".into(),
        if rest.is_empty() {
            Value::Null
        } else {
            Value::Array(rest.into_iter().map(Value::String).collect())
        },
    );
    serde_json::to_vec(&doc).map_err(|e| CriError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like what containerd 1.6.20 stores for a pod (trimmed).
    pub(crate) const STORED: &str = r#"{"Version":"v1","Metadata":{"ID":"abc","Name":"web-0_default_uid_0","Config":{"metadata":{"name":"web-0","uid":"uid","namespace":"default"},"hostname":"web-0","log_directory":"/var/log/pods/x","linux":{"cgroup_parent":"/kubepods","security_context":{"namespace_options":{"pid":1}}}},"NetNSPath":"/var/run/netns/cni-1","IP":"198.18.0.50","AdditionalIPs":null,"RuntimeHandler":"sturdy","CNIResult":{"Interfaces":{"eth0":{"IPConfigs":[{"IP":"198.18.0.50","Gateway":"198.18.0.49"}],"Mac":"0a:58:c6:12:00:32","Sandbox":"/var/run/netns/cni-1"}},"DNS":[{}],"Routes":null},"ProcessLabel":""}}"#;

    #[test]
    fn parses_what_containerd_stores() {
        let n = parse(STORED.as_bytes()).unwrap();
        assert_eq!(n.ip, "198.18.0.50");
        assert!(n.additional_ips.is_empty());
        assert_eq!(n.netns_path, "/var/run/netns/cni-1");
        assert!(!n.host_network);
        assert_eq!(n.ips(), vec!["198.18.0.50"]);
        let host = STORED.replace(
            r#""namespace_options":{"pid":1}"#,
            r#""namespace_options":{"network":2,"pid":1}"#,
        );
        assert!(parse(host.as_bytes()).unwrap().host_network);
    }

    #[test]
    fn with_ips_changes_only_the_ips() {
        let lost = with_ips(STORED.as_bytes(), &[]).unwrap();
        let n = parse(&lost).unwrap();
        assert!(n.ips().is_empty());
        let back = with_ips(&lost, &["198.18.0.50".into(), "fd00::5".into()]).unwrap();
        let n = parse(&back).unwrap();
        assert_eq!(n.ips(), vec!["198.18.0.50", "fd00::5"]);
        // Everything else is the same value.
        let mut a: Value = serde_json::from_str(STORED).unwrap();
        let mut b: Value = serde_json::from_slice(&back).unwrap();
        for v in [&mut a, &mut b] {
            let m = v["Metadata"].as_object_mut().unwrap();
            m.remove("IP");
            m.remove("AdditionalIPs");
        }
        assert_eq!(a, b);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let v2 = STORED.replace(r#""Version":"v1""#, r#""Version":"v2""#);
        assert_eq!(parse(v2.as_bytes()), Err(CriError::Version("v2".into())));
        assert!(with_ips(v2.as_bytes(), &["1.2.3.4".into()]).is_err());
        assert!(matches!(parse(b"{"), Err(CriError::Malformed(_))));
        assert!(matches!(
            parse(b"{\"Version\":\"v1\"}"),
            Err(CriError::Malformed(_))
        ));
    }
}
