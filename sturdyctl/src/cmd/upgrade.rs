//! `sturdyctl upgrade-shims`: check, and eventually move, running shims onto a new binary
//! in place (docs/upgrade.md). Until the in-place exec exists, a run without `--dry-run`
//! performs every check, touches no shim, and fails saying the exec is not implemented.

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

/// Runs the command; exit 0 when every selected shim is ready (dry run) or moved.
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
    let ok = reports
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Ready | Outcome::Current))
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
        outcome: Outcome::Refused(e.to_string()),
    }
}

fn summary(reports: &[Report]) -> Value {
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    json!({
        "ready": count(|o| matches!(o, Outcome::Ready)),
        "current": count(|o| matches!(o, Outcome::Current)),
        "refused": count(|o| matches!(o, Outcome::Refused(_))),
        "not_implemented": count(|o| matches!(o, Outcome::NotImplemented(_))),
    })
}

fn print_text(out: &Value, reports: &[Report]) {
    let short = |s: &Option<String>| {
        s.as_deref()
            .map(|s| s.chars().take(12).collect::<String>())
            .unwrap_or_else(|| "?".into())
    };
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
        let result = match &r.outcome {
            Outcome::Ready => "READY".to_string(),
            Outcome::Current => "already current".to_string(),
            Outcome::Refused(why) => format!("REFUSED: {why}"),
            Outcome::NotImplemented(why) => format!("NOT UPGRADED: {why}"),
        };
        let rehearsed = r
            .rehearsal
            .as_ref()
            .map(|h| {
                format!(
                    "  rehearsed: {} us, {} connection(s), {} Wait(s), {} lifecycle(s) held",
                    h.paused_us, h.connections, h.waits, h.held
                )
            })
            .unwrap_or_default();
        println!(
            "  {}/{}  pid {}  {} ({}) -> {} ({})  pause {}  {result}{rehearsed}",
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
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let s = &out["summary"];
    println!(
        "{} shims: {} ready, {} current, {} refused, {} not upgraded (exec not implemented)",
        reports.len(),
        s["ready"],
        s["current"],
        s["refused"],
        s["not_implemented"]
    );
}
