//! `sturdyctl upgrade-shims`: check running shims against a new binary and move them onto
//! it in place, one at a time (docs/upgrade.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use sturdyctl::containerd::Api;
use sturdyctl::discovery::{self, Scope, Shim};
use sturdyctl::probe::{self, Outcome as Probe};
use sturdyctl::recovery::delete_binary;
use sturdyctl::upgrade::{self, Candidate, Outcome, Report, UpgradeError};

use super::Target;

/// Options of `sturdyctl upgrade-shims`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// The binary to move shims onto; by default the one containerd would start a new shim
    /// of each runtime from.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Only the shim serving this pod (its sandbox id, or any of its containers' ids);
    /// repeat for more.
    #[arg(long = "pod", value_name = "ID")]
    pods: Vec<String>,
    /// Check everything, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also rehearse each shim's pause (requests held at frame boundaries until calls in
    /// flight are answered, then let through; no exec) and report how long it took.
    #[arg(long)]
    rehearse: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command; exit 0 when every selected shim is ready (dry run), upgraded or
/// already current, and every binary passed.
pub async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let api = Api::new(&args.target.address);
    let runtimes = match api.list().await {
        Ok(l) => Some(l.runtimes),
        Err(e) => {
            log::warn!("{e}; shims are discovered from the bundles alone");
            None
        }
    };
    let scope = Scope {
        state_dir: args.target.state_dir.clone(),
        containerd_address: args.target.address.to_string_lossy().into_owned(),
        runtimes: args.target.runtimes(),
    };
    let shims: Vec<Shim> =
        tokio::task::spawn_blocking(move || discovery::discover(&scope, runtimes.as_ref()))
            .await?
            .into_iter()
            .filter(|s| upgrade::selected(s, &args.pods))
            .collect();
    let mut versions = Vec::new();
    for shim in &shims {
        versions.push(
            match probe::probe(&shim.address, &shim.id, Duration::from_secs(1)).await {
                Probe::Answered { version, .. } => version,
                _ => None,
            },
        );
    }
    let binary = args.binary.clone();
    let dry_run = args.dry_run;
    let mode = upgrade::Mode {
        dry_run,
        rehearse: args.rehearse,
        upgrade_dir: args.target.upgrade_dir.clone(),
    };
    let (candidates, reports) =
        tokio::task::spawn_blocking(move || check_all(binary, &shims, versions, mode)).await?;
    let out = json!({
        "dry_run": dry_run,
        "binaries": candidates,
        "shims": reports,
        "summary": summary(&reports),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out, &reports);
    }
    let ok = reports.iter().all(|r| r.outcome.ok(dry_run))
        && candidates.iter().all(|b| b.get("error").is_none());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Inspects each binary once and checks every shim against its own.
fn check_all(
    binary: Option<PathBuf>,
    shims: &[Shim],
    versions: Vec<Option<String>>,
    mode: upgrade::Mode,
) -> (Vec<Value>, Vec<Report>) {
    let mut inspected: HashMap<PathBuf, Result<Candidate, UpgradeError>> = HashMap::new();
    let mut reports = Vec::new();
    for (shim, version) in shims.iter().zip(versions) {
        let path = match &binary {
            Some(b) => Ok(b.clone()),
            None => shim
                .tasks
                .first()
                .ok_or_else(|| UpgradeError::NoBinary("the shim serves no task".into()))
                .and_then(|t| {
                    delete_binary(shim, t, &HashMap::new()).map_err(UpgradeError::NoBinary)
                }),
        };
        let report = match path {
            Ok(path) => {
                let candidate = inspected
                    .entry(path.clone())
                    .or_insert_with(|| upgrade::inspect(&path));
                match candidate {
                    Ok(c) => upgrade::upgrade_shim(shim, version, c, mode.clone()),
                    Err(e) => refused(shim, version, e),
                }
            }
            Err(e) => refused(shim, version, &e),
        };
        reports.push(report);
    }
    if let (Some(b), true) = (&binary, shims.is_empty()) {
        // Nothing to move, but the binary is still checked: a rollout learns of a bad
        // binary before the first pod lands on the node.
        inspected.insert(b.clone(), upgrade::inspect(b));
    }
    let mut binaries: Vec<Value> = inspected
        .iter()
        .map(|(path, c)| match c {
            Ok(c) => json!({
                "path": path,
                "version": c.info.version,
                "build": c.binary.build_id,
                "reads": c.info.reads,
                "writes": c.info.writes,
            }),
            Err(e) => json!({"path": path, "error": e.to_string()}),
        })
        .collect();
    binaries.sort_by_key(|b| b["path"].to_string());
    (binaries, reports)
}

fn refused(shim: &Shim, old_version: Option<String>, e: &UpgradeError) -> Report {
    Report {
        namespace: shim.namespace.clone(),
        id: shim.id.clone(),
        address: shim.address.clone(),
        pid: shim.process.as_ref().map(|p| p.pid),
        old_version,
        old_build: None,
        old_writes: None,
        new_version: String::new(),
        new_build: None,
        pause_ms: None,
        rehearsal: None,
        upgrade: None,
        error: None,
        running_build: None,
        outcome: Outcome::Refused(e.to_string()),
    }
}

fn summary(reports: &[Report]) -> Value {
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    json!({
        "ready": count(|o| matches!(o, Outcome::Ready)),
        "current": count(|o| matches!(o, Outcome::Current)),
        "refused": count(|o| matches!(o, Outcome::Refused(_))),
        "upgraded": count(|o| matches!(o, Outcome::Upgraded)),
        "rolled_back": count(|o| matches!(o, Outcome::RolledBack(_))),
        "failed": count(|o| matches!(o, Outcome::Failed(_))),
    })
}

fn print_text(out: &Value, reports: &[Report]) {
    let dry = if out["dry_run"] == true {
        " (dry run)"
    } else {
        ""
    };
    println!("UPGRADE SHIMS{dry}");
    for b in out["binaries"].as_array().into_iter().flatten() {
        match b["error"].as_str() {
            Some(e) => println!("  binary {}: REFUSED: {e}", b["path"]),
            None => println!(
                "  binary {}: version {}, build {}, reads handover {}",
                b["path"],
                b["version"].as_str().unwrap_or("?"),
                b["build"].as_str().unwrap_or("?"),
                b["reads"]
            ),
        }
    }
    for r in reports {
        println!("  {}", line(r));
        if let Some(h) = &r.rehearsal {
            println!(
                "    rehearsed: {} us, {} connection(s), {} Wait(s), {} lifecycle(s) held",
                h.paused_us, h.connections, h.waits, h.held
            );
        }
        if let Some(u) = &r.upgrade {
            println!(
                "    handed over: {} connection(s), {} Wait(s), {} lifecycle(s) held",
                u.connections, u.waits, u.held
            );
        }
    }
    let s = &out["summary"];
    println!(
        "{} shims: {} ready, {} current, {} upgraded, {} refused, {} rolled back, {} failed",
        reports.len(),
        s["ready"],
        s["current"],
        s["upgraded"],
        s["refused"],
        s["rolled_back"],
        s["failed"]
    );
}

/// `ns/id pid P: old (build abc…) → new (build def…), pause 12.3 ms: upgraded`.
fn line(r: &Report) -> String {
    let short = |s: &Option<String>| match s.as_deref() {
        Some(s) if s.chars().count() > 12 => format!("{}…", s.chars().take(12).collect::<String>()),
        Some(s) => s.to_string(),
        None => "?".into(),
    };
    let result = match &r.outcome {
        Outcome::Ready => "ready".to_string(),
        Outcome::Current => "current".to_string(),
        Outcome::Upgraded => "upgraded".to_string(),
        Outcome::Refused(why) => format!("REFUSED: {why}"),
        Outcome::RolledBack(why) => format!("ROLLED BACK: {why}"),
        Outcome::Failed(why) => format!("FAILED: {why}"),
    };
    format!(
        "{}/{} pid {}: {} (build {}) → {} (build {}), pause {}: {result}",
        r.namespace,
        r.id,
        r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        r.old_version.as_deref().unwrap_or("?"),
        short(&r.old_build),
        if r.new_version.is_empty() {
            "?"
        } else {
            &r.new_version
        },
        short(&r.new_build),
        r.pause_ms
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_else(|| "-".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_shim_says_old_new_pause_and_result() {
        let r = Report {
            namespace: "k8s.io".into(),
            id: "pod-a".into(),
            address: String::new(),
            pid: Some(4242),
            old_version: Some("0.1.0".into()),
            old_build: Some("5b04cecdfd28aa11bb22".into()),
            old_writes: Some(1),
            new_version: "0.1.1".into(),
            new_build: Some("5b04cecdfd28aa11bb23".into()),
            pause_ms: Some(12.345),
            rehearsal: None,
            upgrade: None,
            error: None,
            running_build: Some("5b04cecdfd28aa11bb23".into()),
            outcome: Outcome::Upgraded,
        };
        assert_eq!(
            line(&r),
            "k8s.io/pod-a pid 4242: 0.1.0 (build 5b04cecdfd28…) → 0.1.1 (build \
             5b04cecdfd28…), pause 12.3 ms: upgraded"
        );
        let failed = Report {
            pause_ms: None,
            outcome: Outcome::RolledBack("rolled back: no resume".into()),
            ..r
        };
        assert!(
            line(&failed).ends_with("pause -: ROLLED BACK: rolled back: no resume"),
            "{}",
            line(&failed)
        );
    }
}
