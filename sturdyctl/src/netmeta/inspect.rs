//! Each record next to containerd's own view of its sandbox, and the verdict.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sandbox_record::{ScanCache, Store, Summary};
use serde::Serialize;

use super::api::SandboxContainer;
use super::cni::CniResult;
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
    /// What the record says, if it could be read and trusted.
    #[serde(serialize_with = "shared")]
    pub summary: Option<Arc<Summary>>,
    /// The pod's IPs per the record (CRI's order): what its namespace held at the last
    /// snapshot, which a pod with CAP_NET_ADMIN decides.
    pub ips: Vec<String>,
    /// containerd's IPs (pod IP first), when its record could be read.
    pub containerd_ips: Option<Vec<String>>,
    /// The pod IPs CNI's cached result gave the sandbox, when looked up ([`verify`]).
    pub cni_ips: Option<Vec<String>>,
    /// The record's pod IPs that CNI did not give the pod: never written to containerd.
    pub unverified_ips: Vec<String>,
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

fn shared<S: serde::Serializer>(v: &Option<Arc<Summary>>, s: S) -> Result<S::Ok, S::Error> {
    v.as_deref().serialize(s)
}

/// `ips` for a message: the first few, and how many more.
pub fn list<T: std::fmt::Display>(ips: &[T]) -> String {
    const SHOWN: usize = 8;
    let mut s = ips
        .iter()
        .take(SHOWN)
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if ips.len() > SHOWN {
        s.push_str(&format!(" and {} more", ips.len() - SHOWN));
    }
    s
}

/// The verdict for a trusted record and containerd's view of its sandbox (`None`: unknown).
pub fn compare(
    record: &Summary,
    cri: Option<&Result<CriNetwork, cri::CriError>>,
) -> (State, String) {
    let Some(cri) = cri else {
        return (
            State::Unknown,
            "containerd has no such sandbox container".into(),
        );
    };
    if record.host_network {
        return (State::HostNetwork, String::new());
    }
    let theirs = match cri {
        Ok(n) => n.ips(),
        Err(e) => return (State::Unreadable, e.to_string()),
    };
    let ours = &record.pod_ips;
    if ours.is_empty() {
        return (State::NoAddress, "the record holds no pod IP".into());
    }
    if theirs.is_empty() {
        return (
            State::Lost,
            format!("containerd's record has no IP; the pod has {}", list(ours)),
        );
    }
    let strange: Vec<&String> = theirs
        .iter()
        .filter(|ip| !ip.parse().is_ok_and(|ip: IpAddr| record.has_ip(&ip)))
        .collect();
    if strange.is_empty() {
        (State::Agree, String::new())
    } else {
        (
            State::Differ,
            format!(
                "containerd has {} which the pod's namespace did not have (it has {})",
                list(&strange),
                list(&record.all_ips)
            ),
        )
    }
}

/// Fills `cni_ips` and `unverified_ips` of `row` from CNI's cached results.
pub fn verify(row: &mut Row, results: &[CniResult]) {
    let ours: Vec<&CniResult> = results
        .iter()
        .filter(|r| r.container_id == row.sandbox_id)
        .collect();
    let cni: Vec<IpAddr> = ours.iter().flat_map(|r| r.ips.iter().copied()).collect();
    row.unverified_ips = row
        .ips
        .iter()
        .filter(|ip| !ip.parse().is_ok_and(|ip: IpAddr| cni.contains(&ip)))
        .cloned()
        .collect();
    row.cni_ips = Some(cni.iter().map(IpAddr::to_string).collect());
}

/// Every record in `store` compared with what containerd at `api` stores; `cache` keeps
/// what was decoded, so that only changed records are read again at the next call.
///
/// containerd is listed before the records, so a record is `Unknown` only if its sandbox
/// container did not exist when listed; callers that delete on that confirm it first.
/// Also returns containerd's IPs of every sandbox it listed (`None` if it did not answer).
pub async fn inspect(
    api: &Api,
    store: &Store,
    cache: &mut ScanCache,
) -> (Vec<Row>, Option<HashMap<(String, String), Vec<String>>>) {
    let listed = api.sandbox_containers().await;
    let address = api.socket().to_string_lossy().into_owned();
    let store2 = store.clone();
    let mut taken = std::mem::take(cache);
    let scanned = tokio::task::spawn_blocking(move || {
        let r = store2.scan(&mut taken);
        (taken, r)
    })
    .await;
    let entries = match scanned {
        Ok((back, r)) => {
            *cache = back;
            match r {
                Ok(e) => e,
                Err(e) => {
                    log::error!("{e}");
                    return (Vec::new(), None);
                }
            }
        }
        Err(e) => {
            log::error!("listing sandbox records: {e}");
            return (Vec::new(), None);
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
    let all_ips = containers.as_ref().map(|m| {
        m.iter()
            .filter_map(|(k, c)| {
                let any = c.extension.as_ref()?;
                Some((k.clone(), cri::parse(&any.value).ok()?.ips()))
            })
            .collect()
    });
    let mut rows = Vec::new();
    for entry in entries {
        let key = (entry.namespace.clone(), entry.sandbox_id.clone());
        let mut row = Row {
            namespace: entry.namespace.clone(),
            sandbox_id: entry.sandbox_id.clone(),
            path: entry.path.clone(),
            summary: None,
            ips: Vec::new(),
            containerd_ips: None,
            cni_ips: None,
            unverified_ips: Vec::new(),
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
        match entry.summary {
            Err(e) => {
                row.state = State::Corrupt;
                row.detail = e.to_string();
            }
            Ok(summary) => {
                row.ips = summary.pod_ips.iter().map(IpAddr::to_string).collect();
                if !summary.belongs_to(&address) {
                    row.state = State::Foreign;
                    row.detail = format!("written for containerd {}", summary.containerd);
                } else if containers.is_some() {
                    let (state, detail) = compare(&summary, cri.as_ref());
                    row.state = state;
                    row.detail = detail;
                } else if summary.host_network {
                    row.state = State::HostNetwork;
                }
                row.summary = Some(summary);
            }
        }
        rows.push(row);
    }
    (rows, all_ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_record::{Address, Interface, Network, Pod, Record};

    fn record(ips: &[&str]) -> Summary {
        Summary::from(Record {
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
        })
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
        host.host_network = true;
        assert_eq!(compare(&host, Some(&cri("", &[]))).0, State::HostNetwork);
        assert_eq!(compare(&host, None).0, State::Unknown);
    }

    #[test]
    fn verify_names_the_addresses_cni_did_not_give() {
        let mut row = Row {
            namespace: "k8s.io".into(),
            sandbox_id: "s".into(),
            path: PathBuf::new(),
            summary: None,
            ips: vec!["10.0.0.5".into(), "192.0.2.77".into()],
            containerd_ips: None,
            cni_ips: None,
            unverified_ips: vec![],
            runtime: None,
            known: Some(true),
            state: State::Agree,
            detail: String::new(),
            extension: None,
        };
        let cni = |id: &str, ip: &str| CniResult {
            file: PathBuf::from(format!("/c/net-{id}-eth0")),
            network: "net".into(),
            container_id: id.into(),
            ips: vec![ip.parse().unwrap()],
        };
        verify(
            &mut row,
            &[cni("other", "192.0.2.77"), cni("s", "10.0.0.5")],
        );
        assert_eq!(row.cni_ips, Some(vec!["10.0.0.5".to_string()]));
        assert_eq!(row.unverified_ips, vec!["192.0.2.77"]);
        verify(&mut row, &[]);
        assert_eq!(row.cni_ips, Some(vec![]));
        assert_eq!(row.unverified_ips.len(), 2);
    }

    #[test]
    fn long_lists_are_cut() {
        let ips: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(
            list(&ips),
            "10.0.0.0, 10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5, 10.0.0.6, 10.0.0.7 and 2 more"
        );
    }
}
