//! `sturdyctl`: operator tool for sturdy. One module per subcommand under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;

/// Operator tool for the sturdy containerd shim.
#[derive(Debug, Parser)]
#[command(name = "sturdyctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch containerd's shims; recover the pods of dead or hung ones (foreground).
    Watchdog(cmd::watchdog::Args),
    /// List the shims the watchdog would watch and its recent incidents.
    Status(cmd::status::Args),
    /// List sturdy's sandbox network records and whether containerd's own records agree.
    Sandboxes(cmd::sandboxes::ListArgs),
    /// Show one sandbox's network record and containerd's view of it.
    Sandbox(cmd::sandboxes::ShowArgs),
    /// Check the node (runc, containerd, config, cgroups, pipes, watchdog); exit 0/1/2 by
    /// the worst finding.
    Doctor(cmd::doctor::Args),
    /// Install the shim and add the `sturdy` runtime to containerd's config.toml.
    Install(cmd::install::InstallArgs),
    /// Remove the `sturdy` runtime from containerd's config.toml and the binaries.
    Uninstall(cmd::install::UninstallArgs),
    /// Move running shims onto a new binary in place (checks only so far: docs/upgrade.md).
    UpgradeShims(cmd::upgrade::Args),
}

fn ok() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sturdyctl::logger::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sturdyctl: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watchdog(args) => cmd::watchdog::run(args).await.map(|()| ok()),
            Command::Status(args) => cmd::status::run(args).await.map(|()| ok()),
            Command::Doctor(args) => cmd::doctor::run(args).await,
            Command::Install(args) => cmd::install::run_install(args).map(|()| ok()),
            Command::Uninstall(args) => cmd::install::run_uninstall(args).map(|()| ok()),
            Command::Sandboxes(args) => cmd::sandboxes::list(args).await.map(|()| ok()),
            Command::Sandbox(args) => cmd::sandboxes::show(args).await.map(|()| ok()),
            Command::UpgradeShims(args) => cmd::upgrade::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sturdyctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
