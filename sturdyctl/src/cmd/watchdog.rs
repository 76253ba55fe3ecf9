//! `sturdyctl watchdog`: run the shim watchdog in the foreground until SIGTERM or SIGINT.

use std::time::Duration;

use sturdyctl::journal::DEFAULT_MAX_BYTES;
use sturdyctl::netmeta::SandboxWatch;
use sturdyctl::units::parse_duration;
use sturdyctl::watchdog::{self, Config};
use tokio::signal::unix::{signal, SignalKind};

use super::Target;

/// Options of `sturdyctl watchdog`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Probe interval, also each probe's deadline (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    /// Consecutive unanswered probes after which a shim is hung and killed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    misses: u32,
    /// How long containerd gets after a shim's death to announce its task exits itself.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    containerd_grace: Duration,
    /// The shims' sandbox network records (their `SandboxRecordDir` option).
    #[arg(long, default_value = sandbox_record::DEFAULT_DIR)]
    record_dir: std::path::PathBuf,
    /// Report sandboxes whose IPs containerd lost, but do not write them back.
    #[arg(long)]
    no_repair: bool,
    /// CNI's result cache: a lost IP is written back only if CNI's result gave it.
    #[arg(long, default_value = sturdyctl::netmeta::cni::DEFAULT_DIR)]
    cni_cache_dir: std::path::PathBuf,
    /// The shim binary to run `delete` with for a runtime whose bundles do not record one
    /// (`RUNTIME=PATH`, repeatable). It must be root's, in directories only root can change.
    #[arg(long = "shim-binary", value_parser = parse_shim_binary)]
    shim_binaries: Vec<(String, std::path::PathBuf)>,
}

fn parse_shim_binary(s: &str) -> Result<(String, std::path::PathBuf), String> {
    let (runtime, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected RUNTIME=PATH"))?;
    let path = std::path::PathBuf::from(path);
    if runtime.is_empty() || !path.is_absolute() {
        return Err(format!("{s:?}: expected RUNTIME=/absolute/path"));
    }
    sturdyctl::trust::executable(&path).map_err(|e| e.to_string())?;
    Ok((runtime.to_string(), path))
}

/// Runs the watchdog until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM"),
            _ = int.recv() => log::info!("SIGINT"),
        }
    };
    let cfg = Config {
        runtimes: args.target.runtimes(),
        address: args.target.address,
        state_dir: args.target.state_dir,
        interval: args.interval,
        misses: args.misses,
        journal: args.target.journal,
        upgrade_dir: args.target.upgrade_dir,
        journal_max_bytes: DEFAULT_MAX_BYTES,
        containerd_grace: args.containerd_grace,
        delete_timeout: Duration::from_secs(10),
        shim_binaries: args.shim_binaries.into_iter().collect(),
        sandboxes: Some(SandboxWatch {
            store: sandbox_record::Store::new(args.record_dir),
            repair: !args.no_repair,
            cni: sturdyctl::netmeta::cni::CniCache::new(args.cni_cache_dir),
        }),
    };
    watchdog::run(cfg, shutdown).await?;
    Ok(())
}
