//! `sturdyctl sandboxes` and `sturdyctl sandbox ID`: sturdy's sandbox network records, each
//! compared with containerd's own record of the sandbox (agree, differ, lost, …).

use std::path::PathBuf;

use serde_json::{json, Value};
use sturdyctl::containerd::Api;
use sturdyctl::netmeta::cni::CniCache;
use sturdyctl::netmeta::{inspect, verify, Row};

/// Options shared by both commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// The shims' sandbox network records (their `SandboxRecordDir` option).
    #[arg(long = "dir", alias = "record-dir", default_value = sandbox_record::DEFAULT_DIR)]
    dir: PathBuf,
    /// CNI's result cache, which says which IPs CNI gave each pod.
    #[arg(long, default_value = sturdyctl::netmeta::cni::DEFAULT_DIR)]
    cni_cache_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `sturdyctl sandboxes`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    at: Where,
}

/// Options of `sturdyctl sandbox`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Sandbox id, or a unique prefix of one.
    id: String,
    #[command(flatten)]
    at: Where,
}

/// Every record compared with containerd's, and each record's IPs with CNI's result.
async fn rows(at: &Where) -> Vec<Row> {
    let api = Api::new(&at.address);
    let store = sandbox_record::Store::new(&at.dir);
    let (mut rows, _) = inspect(&api, &store, &mut Default::default()).await;
    match CniCache::new(&at.cni_cache_dir).pod_results() {
        Ok(results) => rows.iter_mut().for_each(|r| verify(r, &results)),
        Err(e) => eprintln!("{e}; the records' IPs are not checked against CNI's results"),
    }
    rows
}

fn summary(r: &Row) -> Value {
    let pod = r.summary.as_ref().map(|rec| &rec.pod);
    json!({
        "namespace": r.namespace,
        "sandbox_id": r.sandbox_id,
        "pod_name": pod.map(|p| p.name.clone()),
        "pod_namespace": pod.map(|p| p.namespace.clone()),
        "pod_uid": pod.map(|p| p.uid.clone()),
        "host_network": r.summary.as_ref().map(|rec| rec.host_network),
        "ips": r.ips,
        "containerd_ips": r.containerd_ips,
        "cni_ips": r.cni_ips,
        "unverified_ips": r.unverified_ips,
        "truncated": r.summary.as_ref().and_then(|rec| rec.truncated.clone()),
        "runtime": r.runtime,
        "state": r.state,
        "detail": r.detail,
        "record": r.path,
    })
}

/// What needs saying about a row besides its state: a truncated record, addresses CNI
/// did not give the pod.
fn note(r: &Row) -> String {
    let mut notes = Vec::new();
    if r.summary.as_ref().is_some_and(|s| s.truncated.is_some()) {
        notes.push("TRUNCATED".to_string());
    }
    if !r.unverified_ips.is_empty() {
        notes.push(format!(
            "not from CNI: {}",
            sturdyctl::netmeta::inspect::list(&r.unverified_ips)
        ));
    }
    notes.join("; ")
}

/// Lists every record with its verdict.
pub async fn list(args: ListArgs) -> Result<(), Box<dyn std::error::Error>> {
    let rows = rows(&args.at).await;
    if args.at.json {
        let v: Vec<Value> = rows.iter().map(summary).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<13}  {:<30}  {:<32}  {:<32}  {:<12}  NOTE",
        "SANDBOX", "POD", "IPS (sturdy)", "IPS (containerd)", "STATE"
    );
    for r in &rows {
        let pod = r
            .summary
            .as_ref()
            .map(|rec| format!("{}/{}", rec.pod.namespace, rec.pod.name))
            .unwrap_or_else(|| "-".into());
        let ips = if r.summary.as_ref().is_some_and(|rec| rec.host_network) {
            "host network".to_string()
        } else {
            sturdyctl::netmeta::inspect::list(&r.ips)
        };
        let theirs = r
            .containerd_ips
            .as_ref()
            .map(|v| {
                if v.is_empty() {
                    "(none)".to_string()
                } else {
                    v.join(",")
                }
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<13}  {:<30}  {:<32}  {:<32}  {:<12}  {}",
            r.sandbox_id.chars().take(13).collect::<String>(),
            pod,
            ips,
            theirs,
            r.state.word(),
            note(r)
        );
    }
    if rows.is_empty() {
        println!("(no records in {})", args.at.dir.display());
    }
    Ok(())
}

/// Shows one record in full with its verdict.
pub async fn show(args: ShowArgs) -> Result<(), Box<dyn std::error::Error>> {
    let rows = rows(&args.at).await;
    let matching: Vec<&Row> = rows
        .iter()
        .filter(|r| r.sandbox_id.starts_with(&args.id))
        .collect();
    let r = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "no record of a sandbox {:?} in {}",
                args.id,
                args.at.dir.display()
            )
            .into())
        }
        many => {
            return Err(format!(
                "{:?} matches {} sandboxes: {}",
                args.id,
                many.len(),
                many.iter()
                    .map(|r| r.sandbox_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .into())
        }
    };
    let mut v = summary(r);
    // The whole record for one sandbox (the listing keeps only summaries).
    let record = sandbox_record::Store::new(&args.at.dir)
        .read(&r.namespace, &r.sandbox_id)
        .ok()
        .flatten();
    v["network"] = json!(record.as_ref().map(|rec| &rec.network));
    v["taken_at_ms"] = json!(r.summary.as_ref().map(|rec| rec.taken_at_ms));
    v["trigger"] = json!(r.summary.as_ref().map(|rec| &rec.trigger));
    if args.at.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |v: &Value| {
        v.as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string())
    };
    println!("sandbox     {}/{}", r.namespace, r.sandbox_id);
    println!(
        "pod         {}/{} (uid {})",
        s(&v["pod_namespace"]),
        s(&v["pod_name"]),
        s(&v["pod_uid"])
    );
    println!(
        "record      {} (taken at {}, on {})",
        r.path.display(),
        r.summary
            .as_ref()
            .map(|rec| sturdyctl::units::format_ms(rec.taken_at_ms))
            .unwrap_or_else(|| "-".into()),
        s(&v["trigger"])
    );
    println!("runtime     {}", r.runtime.as_deref().unwrap_or("-"));
    println!(
        "state       {}{}",
        r.state.word(),
        if r.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", r.detail)
        }
    );
    println!("ips         {}", r.ips.join(", "));
    if let Some(cni) = &r.cni_ips {
        println!(
            "cni         {}",
            if cni.is_empty() {
                "(no result cached)".to_string()
            } else {
                cni.join(", ")
            }
        );
    }
    if !r.unverified_ips.is_empty() {
        println!(
            "NOT FROM CNI {} (never written to containerd)",
            r.unverified_ips.join(", ")
        );
    }
    if let Some(t) = r.summary.as_ref().and_then(|s| s.truncated.as_ref()) {
        println!("TRUNCATED   {t}");
    }
    println!(
        "containerd  {}",
        r.containerd_ips
            .as_ref()
            .map(|v| if v.is_empty() {
                "(no IP)".to_string()
            } else {
                v.join(", ")
            })
            .unwrap_or_else(|| "-".into())
    );
    if let Some(sandbox_record::Network::Namespace {
        path,
        interfaces,
        routes,
    }) = record.as_ref().map(|rec| &rec.network)
    {
        println!("netns       {path}");
        for i in interfaces {
            println!(
                "  {} (#{}) mac {} mtu {}{}",
                i.name,
                i.index,
                i.mac,
                i.mtu,
                if i.up { "" } else { " DOWN" }
            );
            for a in &i.addresses {
                println!("      {}/{} {}", a.ip, a.prefix, a.scope);
            }
        }
        for rt in routes {
            println!(
                "  route {}{}{} table {}",
                rt.destination,
                rt.gateway
                    .as_ref()
                    .map(|g| format!(" via {g}"))
                    .unwrap_or_default(),
                rt.interface
                    .as_ref()
                    .map(|d| format!(" dev {d}"))
                    .unwrap_or_default(),
                rt.table
            );
        }
    } else if r.summary.as_ref().is_some_and(|rec| rec.host_network) {
        println!("netns       host network");
    }
    Ok(())
}
