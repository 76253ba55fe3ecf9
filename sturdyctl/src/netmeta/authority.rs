//! Which IPs the repair may write back into containerd's record of a sandbox: those CNI's
//! cached result gave it (the pod cannot change that) and that no other sandbox holds. The
//! record of the pod's namespace only tells which of them the pod still shows; an address
//! the pod added itself is reported, never written (docs/netmeta.md).

use std::collections::HashMap;
use std::net::IpAddr;

use super::cni::CniResult;
use super::inspect::list;

/// What a repair may write for one sandbox, and what it may not and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorised {
    /// The IPs to write (CRI's order): CNI gave them to this sandbox and nobody else holds
    /// them.
    pub write: Vec<String>,
    /// The CNI result they come from.
    pub source: Option<std::path::PathBuf>,
    /// IPs not written, each with why.
    pub refused: Vec<(String, String)>,
    /// Why nothing at all can be written, if so.
    pub none_because: Option<String>,
}

/// What may be written back for `sandbox` (namespace, id), whose record holds
/// `record_ips`: the IPs of its CNI result that no other sandbox containerd knows holds
/// (in containerd's record, `held`, or in CNI's results).
pub fn authorised(
    sandbox: (&str, &str),
    record_ips: &[String],
    results: &[CniResult],
    held: &HashMap<(String, String), Vec<String>>,
) -> Authorised {
    let (ns, id) = sandbox;
    let mut out = Authorised {
        write: Vec::new(),
        source: None,
        refused: Vec::new(),
        none_because: None,
    };
    let mine: Vec<&CniResult> = results.iter().filter(|r| r.container_id == id).collect();
    let given: Vec<IpAddr> = match mine.as_slice() {
        [one] => {
            out.source = Some(one.file.clone());
            one.ips.clone()
        }
        [] => {
            out.none_because = Some("CNI's result cache has no result of it".into());
            Vec::new()
        }
        many => {
            out.none_because = Some(format!(
                "CNI's result cache has {} results of it ({})",
                many.len(),
                list(&many.iter().map(|r| r.file.display()).collect::<Vec<_>>())
            ));
            Vec::new()
        }
    };
    for ip in record_ips {
        if !ip.parse().is_ok_and(|ip: IpAddr| given.contains(&ip)) {
            out.refused.push((
                ip.clone(),
                "in the pod's namespace, not in CNI's result".into(),
            ));
        }
    }
    let known = |other: &str| held.keys().any(|(_, k)| k == other);
    for ip in &given {
        let text = ip.to_string();
        let holder = held
            .iter()
            .find(|((n, k), ips)| (n.as_str(), k.as_str()) != (ns, id) && ips.contains(&text))
            .map(|((n, k), _)| format!("{n}/{k}"))
            .or_else(|| {
                results
                    .iter()
                    .find(|r| r.container_id != id && known(&r.container_id) && r.ips.contains(ip))
                    .map(|r| r.container_id.clone())
            });
        match holder {
            Some(h) => out.refused.push((text, format!("held by sandbox {h}"))),
            None => out.write.push(text),
        }
    }
    if out.write.is_empty() && out.none_because.is_none() {
        out.none_because = Some("no IP of its CNI result is free to write".into());
    }
    out
}

/// The refused IPs and why, for a log line.
pub fn refused_text(a: &Authorised) -> String {
    a.refused
        .iter()
        .take(8)
        .map(|(ip, why)| format!("{ip} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
        + &if a.refused.len() > 8 {
            format!(" and {} more", a.refused.len() - 8)
        } else {
            String::new()
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn result(id: &str, ips: &[&str]) -> CniResult {
        CniResult {
            file: PathBuf::from(format!("/var/lib/cni/results/net-{id}-eth0")),
            network: "net".into(),
            container_id: id.into(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        }
    }

    fn held(entries: &[(&str, &[&str])]) -> HashMap<(String, String), Vec<String>> {
        entries
            .iter()
            .map(|(id, ips)| {
                (
                    ("k8s.io".to_string(), id.to_string()),
                    ips.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_cnis_ips_are_written_and_the_pods_own_are_reported() {
        let a = authorised(
            ("k8s.io", "me"),
            &strings(&["198.18.0.5", "192.0.2.77"]),
            &[
                result("me", &["198.18.0.5"]),
                result("other", &["198.18.0.6"]),
            ],
            &held(&[("me", &[]), ("other", &["198.18.0.6"])]),
        );
        assert_eq!(a.write, vec!["198.18.0.5"]);
        assert_eq!(
            a.source,
            Some(PathBuf::from("/var/lib/cni/results/net-me-eth0"))
        );
        assert_eq!(
            a.refused,
            vec![(
                "192.0.2.77".to_string(),
                "in the pod's namespace, not in CNI's result".to_string()
            )]
        );
        assert!(a.none_because.is_none());
    }

    #[test]
    fn an_ip_another_sandbox_holds_is_not_written() {
        // A pod that put its neighbour's IP on its eth0 gains nothing, and a stale result
        // giving a live neighbour's IP to this sandbox is not trusted either.
        let a = authorised(
            ("k8s.io", "me"),
            &strings(&["198.18.0.6"]),
            &[result("me", &["198.18.0.6"])],
            &held(&[("me", &[]), ("victim", &["198.18.0.6"])]),
        );
        assert!(a.write.is_empty());
        assert_eq!(a.refused[0].1, "held by sandbox k8s.io/victim");
        assert!(a.none_because.is_some());
        // Held in CNI's results by a sandbox containerd knows (its own record lost too).
        let a = authorised(
            ("k8s.io", "me"),
            &strings(&["198.18.0.6"]),
            &[
                result("me", &["198.18.0.6"]),
                result("victim", &["198.18.0.6"]),
            ],
            &held(&[("me", &[]), ("victim", &[])]),
        );
        assert!(a.write.is_empty(), "{a:?}");
        // ... but not by the leftover result of a sandbox containerd no longer has.
        let a = authorised(
            ("k8s.io", "me"),
            &strings(&["198.18.0.6"]),
            &[
                result("me", &["198.18.0.6"]),
                result("gone", &["198.18.0.6"]),
            ],
            &held(&[("me", &[])]),
        );
        assert_eq!(a.write, vec!["198.18.0.6"]);
    }

    #[test]
    fn without_a_single_cni_result_nothing_is_written() {
        let a = authorised(("k8s.io", "me"), &strings(&["198.18.0.5"]), &[], &held(&[]));
        assert!(a.write.is_empty());
        assert!(a.none_because.unwrap().contains("no result"));
        let two = [result("me", &["198.18.0.5"]), result("me", &["198.18.0.9"])];
        let a = authorised(
            ("k8s.io", "me"),
            &strings(&["198.18.0.5"]),
            &two,
            &held(&[]),
        );
        assert!(a.write.is_empty());
        assert!(a.none_because.unwrap().contains("2 results"));
    }

    #[test]
    fn cnis_order_is_kept_and_a_removed_address_is_still_written() {
        // The pod removed CNI's IPv6 address: CNI's result still says it is the pod's.
        let a = authorised(
            ("k8s.io", "me"),
            &strings(&["198.18.0.5"]),
            &[result("me", &["198.18.0.5", "fd00::5"])],
            &held(&[("me", &[])]),
        );
        assert_eq!(a.write, vec!["198.18.0.5", "fd00::5"]);
    }
}
