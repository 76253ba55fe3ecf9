//! Each record next to containerd's own view of its sandbox, and the verdict.

use std::collections::HashMap;
use std::path::PathBuf;

use sandbox_record::{Record, Store};
use serde::Serialize;

use super::api::SandboxContainer;
use super::cri::{self, CriNetwork};
use crate::containerd::Api;

/// How a record and containerd's record of the same sandbox compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// containerd has the pod's IPs, all of them among the recorded addresses.
    Agree,
    /// containerd has an IP the pod's namespace did not have: reported, never changed.
    Differ,
    /// containerd's record has no IP while the pod has one: the incident-000 state.
    Lost,
    /// The pod uses the host's network: nothing to compare or repair.
    HostNetwork,
    /// The record has no pod IP (CNI had not run, or the pod has none): nothing to judge by.
    NoAddress,
    /// containerd does not know the sandbox (removed, or another containerd's record).
    Unknown,
    /// The record belongs to another containerd (its TTRPC address differs).
    Foreign,
    /// The record cannot be trusted (detected by its checksum or format).
    Corrupt,
    /// containerd's extension is missing or unreadable.
    Unreadable,
    /// containerd did not answer: nothing compared.
    Unreachable,
}

impl State {
    /// The word printed for it.
    pub fn word(&self) -> &'static str {
        match self {
            State::Agree => "agree",
            State::Differ => "DIFFER",
            State::Lost => "LOST",
            State::HostNetwork => "host-network",
            State::NoAddress => "no-address",
            State::Unknown => "unknown",
            State::Foreign => "foreign",
            State::Corrupt => "CORRUPT",
            State::Unreadable => "UNREADABLE",
            State::Unreachable => "unreachable",
        }
    }
}

/// One record, compared.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// containerd namespace.
    pub namespace: String,
    /// Sandbox id.
    pub sandbox_id: String,
    /// The record file.
    pub path: PathBuf,
    /// The record, if it could be read and trusted.
    pub record: Option<Record>,
    /// The pod's IPs per the record (CRI's order).
    pub ips: Vec<String>,
    /// containerd's IPs (pod IP first), when its record could be read.
    pub containerd_ips: Option<Vec<String>>,
    /// The sandbox's runtime name, when containerd knows it.
    pub runtime: Option<String>,
    /// Whether containerd knows the sandbox (`None`: containerd did not answer).
    pub known: Option<bool>,
    /// The verdict.
    pub state: State,
    /// Why, when the state needs one (the corruption, the unreadable extension, …).
    pub detail: String,
    /// containerd's extension as read (used by the repair to check nothing changed since).
    #[serde(skip)]
    pub extension: Option<prost_types::Any>,
}

/// The verdict for a trusted record and containerd's view of its sandbox (`None`: unknown).
pub fn compare(
    record: &Record,
    cri: Option<&Result<CriNetwork, cri::CriError>>,
) -> (State, String) {
    let Some(cri) = cri else {
        return (
            State::Unknown,
            "containerd has no such sandbox container".into(),
        );
    };
    if record.host_network() {
        return (State::HostNetwork, String::new());
    }
    let theirs = match cri {
        Ok(n) => n.ips(),
        Err(e) => return (State::Unreadable, e.to_string()),
    };
    let ours = record.pod_ips();
    if ours.is_empty() {
        return (State::NoAddress, "the record holds no pod IP".into());
    }
    if theirs.is_empty() {
        return (
            State::Lost,
            format!(
                "containerd's record has no IP; the pod has {}",
                ours.join(", ")
            ),
        );
    }
    let all = record.all_ips();
    let strange: Vec<&String> = theirs.iter().filter(|ip| !all.contains(ip)).collect();
    if strange.is_empty() {
        (State::Agree, String::new())
    } else {
        (
            State::Differ,
            format!(
                "containerd has {} which the pod's namespace did not have (it has {})",
                strange
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                all.join(", ")
            ),
        )
    }
}

/// Every record in `store` compared with what containerd at `api` stores.
///
/// containerd is listed before the records, so a record is `Unknown` only if its sandbox
/// container did not exist when listed; callers that delete on that confirm it first.
pub async fn inspect(api: &Api, store: &Store) -> Vec<Row> {
    let listed = api.sandbox_containers().await;
    let address = api.socket().to_string_lossy().into_owned();
    let store2 = store.clone();
    let entries = match tokio::task::spawn_blocking(move || store2.list()).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            log::error!("{e}");
            return Vec::new();
        }
        Err(e) => {
            log::error!("listing sandbox records: {e}");
            return Vec::new();
        }
    };
    let containers: Option<HashMap<(String, String), SandboxContainer>> = match &listed {
        Ok(list) => Some(
            list.iter()
                .map(|c| ((c.namespace.clone(), c.id.clone()), c.clone()))
                .collect(),
        ),
        Err(e) => {
            log::warn!("{e}; sandbox records are listed without containerd's view");
            None
        }
    };
    let mut rows = Vec::new();
    for entry in entries {
        let key = (entry.namespace.clone(), entry.sandbox_id.clone());
        let mut row = Row {
            namespace: entry.namespace.clone(),
            sandbox_id: entry.sandbox_id.clone(),
            path: entry.path.clone(),
            record: None,
            ips: Vec::new(),
            containerd_ips: None,
            runtime: None,
            known: containers.as_ref().map(|m| m.contains_key(&key)),
            state: State::Unreachable,
            detail: String::new(),
            extension: None,
        };
        let container = containers.as_ref().and_then(|m| m.get(&key));
        row.runtime = container.map(|c| c.runtime.clone());
        let cri = container.map(|c| match &c.extension {
            Some(any) => cri::parse(&any.value),
            None => Err(cri::CriError::Malformed(format!(
                "the container has no {} extension",
                cri::EXTENSION
            ))),
        });
        row.extension = container.and_then(|c| c.extension.clone());
        if let Some(Ok(n)) = &cri {
            row.containerd_ips = Some(n.ips());
        }
        match entry.record {
            Err(e) => {
                row.state = State::Corrupt;
                row.detail = e.to_string();
            }
            Ok(record) => {
                row.ips = record.pod_ips();
                if !record.belongs_to(&address) {
                    row.state = State::Foreign;
                    row.detail = format!("written for containerd {}", record.containerd);
                } else if containers.is_some() {
                    let (state, detail) = compare(&record, cri.as_ref());
                    row.state = state;
                    row.detail = detail;
                } else if record.host_network() {
                    row.state = State::HostNetwork;
                }
                row.record = Some(record);
            }
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_record::{Address, Interface, Network, Pod};

    fn record(ips: &[&str]) -> Record {
        Record {
            sandbox_id: "s".into(),
            namespace: "k8s.io".into(),
            containerd: String::new(),
            pod: Pod::default(),
            network: Network::Namespace {
                path: "/var/run/netns/cni-1".into(),
                interfaces: vec![Interface {
                    index: 2,
                    name: "eth0".into(),
                    mac: String::new(),
                    mtu: 1500,
                    up: true,
                    addresses: ips
                        .iter()
                        .map(|ip| Address {
                            ip: ip.to_string(),
                            prefix: 24,
                            scope: "global".into(),
                        })
                        .collect(),
                }],
                routes: vec![],
            },
            taken_at_ms: 0,
            trigger: "create".into(),
            truncated: None,
        }
    }

    fn cri(ip: &str, more: &[&str]) -> Result<CriNetwork, cri::CriError> {
        Ok(CriNetwork {
            ip: ip.into(),
            additional_ips: more.iter().map(|s| s.to_string()).collect(),
            netns_path: String::new(),
            host_network: false,
        })
    }

    #[test]
    fn verdicts() {
        let r = record(&["10.0.0.5", "10.0.0.6"]);
        assert_eq!(compare(&r, Some(&cri("10.0.0.5", &[]))).0, State::Agree);
        assert_eq!(
            compare(&r, Some(&cri("10.0.0.5", &["10.0.0.6"]))).0,
            State::Agree
        );
        assert_eq!(compare(&r, Some(&cri("", &[]))).0, State::Lost);
        let (s, d) = compare(&r, Some(&cri("10.0.0.9", &[])));
        assert_eq!(s, State::Differ);
        assert!(d.contains("10.0.0.9"), "{d}");
        assert_eq!(compare(&r, None).0, State::Unknown);
        assert_eq!(
            compare(&r, Some(&Err(cri::CriError::Version("v9".into())))).0,
            State::Unreadable
        );
        assert_eq!(
            compare(&record(&[]), Some(&cri("", &[]))).0,
            State::NoAddress
        );
        let mut host = record(&[]);
        host.network = Network::Host;
        assert_eq!(compare(&host, Some(&cri("", &[]))).0, State::HostNetwork);
        assert_eq!(compare(&host, None).0, State::Unknown);
    }
}
