//! `sturdyctl doctor`: check the node and print each finding with its fix; the exit code is
//! the worst severity (0 ok/info, 1 warn, 2 error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use sturdyctl::containerd::Api;
use sturdyctl::doctor::{self, Finding, Options, Peer, Severity};
use sturdyctl::host::Host;

/// How long connecting to containerd's socket may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// Options of `sturdyctl doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// containerd's config.toml.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// containerd's gRPC socket (asked for the running release).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// The CRI handler sturdy is installed under.
    #[arg(long, default_value = sturdyctl::ctrconfig::HANDLER)]
    handler: String,
    /// sturdy's record directory.
    #[arg(long, default_value = "/var/lib/sturdy")]
    record_dir: PathBuf,
    /// The watchdog's incident journal.
    #[arg(long, default_value = "/var/lib/sturdy/watchdog.journal")]
    journal: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs every check and prints the findings. Exit code 3 when doctor itself failed, so it
/// is never mistaken for a finding's 1 or 2.
pub async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match checks(args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("sturdyctl doctor: {e}");
            Ok(ExitCode::from(3))
        }
    }
}

/// Who listens on containerd's socket: the peer credentials of a connection, which for a
/// listening Unix socket are those of the process that called `listen()`. containerd does
/// that itself, so this is containerd's pid, whatever other processes call themselves.
async fn listener(address: &Path) -> Result<Peer, String> {
    let connect = tokio::net::UnixStream::connect(address);
    let stream = tokio::time::timeout(CONNECT_DEADLINE, connect)
        .await
        .map_err(|_| format!("no connection within {CONNECT_DEADLINE:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let pid = cred
        .pid()
        .filter(|p| *p > 0)
        .ok_or("SO_PEERCRED names no pid (a listener in another pid namespace?)")?;
    Ok(Peer {
        pid,
        uid: cred.uid(),
    })
}

async fn checks(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let listener = Some(listener(&args.address).await);
    let api_version = if args.address.exists() {
        Some(
            Api::new(&args.address)
                .version()
                .await
                .map_err(|e| e.to_string()),
        )
    } else {
        None
    };
    let opts = Options {
        config: args.config,
        address: args.address,
        listener,
        handler: args.handler,
        record_dir: args.record_dir,
        journal: args.journal,
        api_version,
        ..Options::default()
    };
    let findings = tokio::task::spawn_blocking(move || doctor::run(&Host::system(), &opts)).await?;
    let worst = doctor::worst(&findings);
    if args.json {
        let out = serde_json::json!({
            "worst": worst,
            "exit_code": worst.exit_code(),
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&findings, worst);
    }
    Ok(ExitCode::from(worst.exit_code()))
}

fn print_text(findings: &[Finding], worst: Severity) {
    for f in findings {
        println!("{:<5} {:<10} {}", f.severity.label(), f.check, f.summary);
        if let Some(fix) = &f.fix {
            if f.severity >= Severity::Info {
                println!("{:<16} fix: {fix}", "");
            }
        }
        if let Some(src) = &f.source {
            if f.severity >= Severity::Warn {
                println!("{:<16} see: {src}", "");
            }
        }
    }
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    println!(
        "\n{} error, {} warning, {} info, {} ok: {}",
        count(Severity::Error),
        count(Severity::Warn),
        count(Severity::Info),
        count(Severity::Ok),
        match worst {
            Severity::Ok | Severity::Info => "nothing to fix",
            Severity::Warn => "see the warnings",
            Severity::Error => "fix the errors",
        }
    );
}
