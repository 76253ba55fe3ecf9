//! `sturdyctl install` / `uninstall`: binaries into `--bin-dir`, the `sturdy` runtime into
//! containerd's config.toml; prints what changed and whether containerd must restart.

use std::path::PathBuf;

use sturdyctl::ctrconfig::{HANDLER, SHIM_BINARY};
use sturdyctl::host::{Host, SystemRunner, COMMAND_DEADLINE};
use sturdyctl::install::{self, Action, Options, Outcome};

/// Options shared by install and uninstall.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The host's / as mounted here (in a container): --config and --bin-dir are host paths
    /// under it, and their symlinks resolve as on the host.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// containerd's config.toml.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// Directory on containerd's PATH for containerd-shim-sturdy-v2 (and sturdyctl).
    #[arg(long, default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// CRI handler name (RuntimeClass.handler).
    #[arg(long, default_value = HANDLER)]
    handler: String,
    /// Leave sturdyctl itself out of --bin-dir.
    #[arg(long)]
    no_sturdyctl: bool,
    /// Print what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `sturdyctl install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    common: Common,
    /// The shim binary to install [default: containerd-shim-sturdy-v2 next to sturdyctl].
    #[arg(long)]
    shim: Option<PathBuf>,
}

/// Options of `sturdyctl uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    common: Common,
    /// Uninstall even while sturdy shims still run (their pods lose `delete`).
    #[arg(long)]
    force: bool,
}

fn options(c: &Common, shim: Option<PathBuf>, force: bool) -> Result<Options, std::io::Error> {
    let me = std::env::current_exe()?;
    let shim = shim.unwrap_or_else(|| me.with_file_name(SHIM_BINARY));
    Ok(Options {
        host_root: c.host_root.clone(),
        config: c.config.clone(),
        bin_dir: c.bin_dir.clone(),
        shim,
        sturdyctl: (!c.no_sturdyctl).then_some(me),
        handler: c.handler.clone(),
        dry_run: c.dry_run,
        force,
    })
}

/// Installs.
pub fn run_install(args: InstallArgs) -> Result<(), Box<dyn std::error::Error>> {
    let opts = options(&args.common, args.shim, false)?;
    let runner = SystemRunner {
        deadline: COMMAND_DEADLINE,
    };
    let outcome = install::install(&opts, &runner)?;
    print(&outcome, args.common.json)
}

/// Uninstalls.
pub fn run_uninstall(args: UninstallArgs) -> Result<(), Box<dyn std::error::Error>> {
    let opts = options(&args.common, None, args.force)?;
    let outcome = install::uninstall(&opts, &Host::system().processes())?;
    print(&outcome, args.common.json)
}

fn print(o: &Outcome, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    if json {
        println!("{}", serde_json::to_string_pretty(o)?);
        return Ok(());
    }
    if o.dry_run {
        println!("dry run: nothing was written; this is what would be done");
    }
    for b in &o.binaries {
        let action = match b.action {
            Action::Installed => "installed",
            Action::Replaced => "replaced (running shims keep the old file)",
            Action::Unchanged => "unchanged",
            Action::Removed => "removed",
            Action::Absent => "not there",
        };
        println!("binary  {}: {action}", b.path.display());
    }
    println!(
        "config  {}: {}",
        o.config.display(),
        if o.config_changed {
            "changed"
        } else {
            "unchanged"
        }
    );
    if !o.diff.is_empty() {
        print!("{}", o.diff);
    }
    println!(
        "containerd: {}",
        if o.restart_needed {
            "RESTART NEEDED for the config change to take effect"
        } else {
            "no restart needed"
        }
    );
    for n in &o.notes {
        println!("note: {n}");
    }
    Ok(())
}
