//! `sturdyctl status`: the shims discovered now (with a probe each) and recent incidents.

use std::time::Duration;

use serde_json::{json, Value};
use std::collections::HashMap;

use sturdyctl::builds;
use sturdyctl::containerd::Api;
use sturdyctl::discovery::{self, Scope};
use sturdyctl::journal::{Incident, Journal, Phase, DEFAULT_MAX_BYTES};
use sturdyctl::probe::{self, Outcome};
use sturdyctl::recovery::delete_binary;
use sturdyctl::units::format_ms;

use super::Target;

/// How many incidents are shown.
const RECENT: usize = 20;

/// Options of `sturdyctl status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the status.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let api = Api::new(&args.target.address);
    let listing = match api.list().await {
        Ok(l) => Some(l),
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
    let runtimes = listing.as_ref().map(|l| l.runtimes.clone());
    let shims =
        tokio::task::spawn_blocking(move || discovery::discover(&scope, runtimes.as_ref())).await?;
    let mut shim_values = Vec::new();
    for shim in &shims {
        let outcome = probe::probe(&shim.address, &shim.id, Duration::from_secs(1)).await;
        let probe = match &outcome {
            Outcome::Answered { latency, .. } => format!("answered in {} ms", latency.as_millis()),
            Outcome::NoReply => "NO REPLY within 1 s".into(),
            Outcome::Refused(e) => format!("REFUSED: {e}"),
        };
        let version = match &outcome {
            Outcome::Answered { version, .. } => version.clone(),
            _ => None,
        };
        let build = build_of(shim);
        let tasks: Vec<Value> = shim
            .tasks
            .iter()
            .map(|t| {
                let status = listing.as_ref().and_then(|l| {
                    l.tasks
                        .iter()
                        .find(|x| x.namespace == t.namespace && x.id == t.id)
                        .map(|x| x.status.clone())
                });
                json!({"namespace": t.namespace, "id": t.id, "bundle": t.bundle, "status": status})
            })
            .collect();
        shim_values.push(json!({
            "address": shim.address,
            "runtime": shim.runtime,
            "namespace": shim.namespace,
            "id": shim.id,
            "pid": shim.process.as_ref().map(|p| p.pid),
            "exe": shim.process.as_ref().map(|p| p.exe.clone()),
            "probe": probe,
            "answering": outcome.answered(),
            "version": version,
            "build": build,
            "tasks": tasks,
        }));
    }
    let journal = Journal::new(&args.target.journal, DEFAULT_MAX_BYTES);
    let incidents = journal.incidents()?;
    let recent: Vec<Value> = incidents
        .iter()
        .rev()
        .take(RECENT)
        .rev()
        .map(incident_value)
        .collect();
    let old = shim_values
        .iter()
        .filter(|s| s["build"]["current"] == false)
        .count();
    let out = json!({
        "containerd": args.target.address,
        "shims_on_old_binary": old,
        "containerd_answering": listing.is_some(),
        "state_dir": args.target.state_dir,
        "journal": args.target.journal,
        "shims": shim_values,
        "incidents": recent,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out);
    }
    Ok(())
}

/// The build a shim runs against the installed one; `null` fields for a shim without a
/// process.
fn build_of(shim: &sturdyctl::discovery::Shim) -> Value {
    let (Some(process), Some(task)) = (&shim.process, shim.tasks.first()) else {
        return json!({"current": null, "unknown": "no shim process"});
    };
    let installed = delete_binary(shim, task, &HashMap::new());
    json!(builds::compare(builds::of_process(process.pid), installed))
}

fn incident_value(inc: &Incident) -> Value {
    let mut v = json!({"id": inc.id, "finished": inc.finished()});
    let mut steps = Vec::new();
    for e in &inc.entries {
        match &e.phase {
            Phase::Started { reason, shim } => {
                v["started_at"] = json!(format_ms(e.at_ms));
                v["reason"] = json!(reason);
                v["address"] = json!(shim.address);
                v["runtime"] = json!(shim.runtime);
                v["containers"] =
                    json!(shim.tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>());
            }
            Phase::Step {
                step,
                ok,
                ms,
                detail,
            } => {
                steps.push(json!({"step": step, "ok": ok, "ms": ms, "detail": detail}));
            }
            Phase::Finished {
                ok,
                total_ms,
                summary,
            } => {
                v["ok"] = json!(ok);
                v["total_ms"] = json!(total_ms);
                v["summary"] = json!(summary);
                v["finished_at"] = json!(format_ms(e.at_ms));
            }
        }
    }
    v["steps"] = json!(steps);
    if v.get("reason").is_none() && inc.id.starts_with("sandbox-ip ") {
        v["reason"] = json!("sandbox IP lost by containerd (docs/netmeta.md)");
    }
    v
}

/// `version 0.1.0, build 5b04ce…  current` or `… OLD BINARY: installed <path> is build …`.
fn build_line(sh: &Value) -> String {
    let b = &sh["build"];
    let short = |v: &Value| {
        v.as_str()
            .map(|s| s.chars().take(12).collect::<String>())
            .unwrap_or_else(|| "?".into())
    };
    let head = format!(
        "version {}, build {}",
        sh["version"].as_str().unwrap_or("?"),
        short(&b["running"])
    );
    match b["current"].as_bool() {
        Some(true) => format!("{head}  current"),
        Some(false) => format!(
            "{head}  OLD BINARY: installed {} is build {}",
            b["installed_binary"].as_str().unwrap_or("?"),
            short(&b["installed"])
        ),
        None => format!(
            "{head}  (installed build unknown: {})",
            b["unknown"].as_str().unwrap_or("?")
        ),
    }
}

fn print_text(out: &Value) {
    let s = |v: &Value| {
        v.as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string())
    };
    println!(
        "containerd {} ({}), state {}",
        s(&out["containerd"]),
        if out["containerd_answering"] == true {
            "answering"
        } else {
            "NOT answering"
        },
        s(&out["state_dir"])
    );
    let shims = out["shims"].as_array().cloned().unwrap_or_default();
    println!("\nSHIMS ({})", shims.len());
    for sh in &shims {
        println!(
            "  {}  {}  pid {}  {}",
            s(&sh["address"]),
            s(&sh["runtime"]),
            sh["pid"]
                .as_i64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "- (no process)".into()),
            s(&sh["probe"])
        );
        println!("      {}", build_line(sh));
        for t in sh["tasks"].as_array().into_iter().flatten() {
            println!(
                "      {}/{}  {}",
                s(&t["namespace"]),
                s(&t["id"]),
                t["status"].as_str().unwrap_or("-")
            );
        }
    }
    if out["shims_on_old_binary"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  {} of {} shims run an OLD BINARY (sturdyctl upgrade-shims moves them)",
            out["shims_on_old_binary"],
            shims.len()
        );
    }
    let incidents = out["incidents"].as_array().cloned().unwrap_or_default();
    println!(
        "\nINCIDENTS ({}; journal {})",
        incidents.len(),
        s(&out["journal"])
    );
    for inc in &incidents {
        let state = if inc["finished"] == true {
            if inc["ok"] == true {
                "ok"
            } else {
                "FINISHED WITH ERRORS"
            }
        } else {
            "UNFINISHED"
        };
        println!(
            "  {}  {}  {}  {}  {} ms",
            inc["started_at"].as_str().unwrap_or("?"),
            s(&inc["id"]),
            inc["reason"].as_str().unwrap_or("?"),
            state,
            inc["total_ms"]
                .as_u64()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into())
        );
        for st in inc["steps"].as_array().into_iter().flatten() {
            println!(
                "      {:<8} {} ({} ms): {}",
                if st["ok"] == true { "ok" } else { "FAILED" },
                s(&st["step"]),
                st["ms"],
                s(&st["detail"])
            );
        }
    }
}
