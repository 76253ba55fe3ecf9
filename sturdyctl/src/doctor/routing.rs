//! Whether containerd routes the `sturdy` handler to sturdy's shim, and whether the watchdog
//! runs.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::ctrconfig::{Config, Runtime, Schema, RUNTIME_TYPE, SHIM_BINARY};
use crate::host::Host;
use crate::journal::{lock_path, Journal, DEFAULT_MAX_BYTES};

use super::known::ContainerdVersion;
use super::{run_failed, Context, Finding, Severity};

/// The handler's runtime from the config or, failing that, from the files it imports.
pub(super) fn find_runtime(host: &Host, config: &Config, handler: &str) -> Option<Runtime> {
    if let Some(rt) = config.runtime(handler) {
        return Some(rt);
    }
    for file in import_files(host, config) {
        let Ok(text) = host.read(&file) else { continue };
        // An imported file without `version` takes the main file's schema.
        let text = if text.contains("version") {
            text
        } else {
            format!("version = {}\n{text}", config.schema().number())
        };
        if let Some(rt) = Config::parse(&file, &text)
            .ok()
            .and_then(|c| c.runtime(handler))
        {
            return Some(rt);
        }
    }
    None
}

/// The files `imports` names; a `*` in the last component matches any run of characters.
fn import_files(host: &Host, config: &Config) -> Vec<PathBuf> {
    let base = config
        .path()
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let mut out = Vec::new();
    for pattern in config.imports() {
        let p = base.join(&pattern);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((pre, post)) = name.split_once('*') else {
            out.push(p);
            continue;
        };
        let dir = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        let Ok(entries) = std::fs::read_dir(host.path(&dir)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| {
                n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len()
            })
            .map(|n| dir.join(n))
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

fn containerd_minor(ctx: &Context) -> Option<(u64, u64)> {
    let v = match &ctx.opts.api_version {
        Some(Ok((v, r))) => ContainerdVersion {
            version: v.clone(),
            revision: r.clone(),
        },
        _ => {
            let bin = super::versions::containerd_binary(ctx)?;
            ContainerdVersion::parse(&ctx.host.run(&bin, &["--version"]).ok()?)?
        }
    };
    v.semver().map(|s| (s.major, s.minor))
}

/// The handler in config.toml, the shim binary containerd will run for it, and that the
/// binary is sturdy's and of this release.
pub(super) fn routing(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "routing";
    let config = match &ctx.config {
        Ok(c) => c,
        Err(f) => return vec![f.clone()],
    };
    let handler = &ctx.opts.handler;
    let cfg = ctx.opts.config.display();
    let Some(rt) = &ctx.runtime else {
        return vec![Finding::new(
            CHECK,
            Severity::Error,
            format!(
                "{cfg} defines no runtime `{handler}` under {} (pods with RuntimeClass {handler} fail)",
                config.schema().runtimes_table()
            ),
        )
        .fix(format!("sturdyctl install --config {cfg}"))];
    };
    let rt_type = rt.runtime_type.clone().unwrap_or_default();
    if rt_type != RUNTIME_TYPE {
        return vec![Finding::new(
            CHECK,
            Severity::Error,
            format!("handler `{handler}` has runtime_type {rt_type:?}, not {RUNTIME_TYPE:?}"),
        )
        .fix(format!(
            "set runtime_type = \"{RUNTIME_TYPE}\" for `{handler}` in {cfg}"
        ))];
    }
    let mut out = Vec::new();
    let minor = containerd_minor(ctx);
    let is_16 = minor.is_some_and(|(maj, min)| maj == 1 && min <= 6);
    let explicit = rt.runtime_path.as_deref().filter(|p| !p.is_empty());
    // containerd 1.6 ignores runtime_path and looks the shim up on its PATH.
    let shim = match explicit {
        Some(p) if !is_16 => ctx.host.which(p, None),
        _ => ctx.host.which(SHIM_BINARY, Some(ctx.containerd_path())),
    };
    let path_source = if ctx.containerd_path_env().is_some() {
        "containerd's PATH"
    } else {
        "PATH (containerd not found through its socket: sturdyctl's PATH)"
    };
    let Some(shim) = shim else {
        out.push(
            Finding::new(
                CHECK,
                Severity::Error,
                match explicit {
                    Some(p) if !is_16 => {
                        format!("runtime_path {p} does not exist or is not executable")
                    }
                    _ => format!("{SHIM_BINARY} is not on {path_source}"),
                },
            )
            .fix("sturdyctl install --bin-dir /usr/local/bin"),
        );
        return out;
    };
    let version = match ctx.host.run(&shim, &["-v"]) {
        Ok(text) if text.contains(RUNTIME_TYPE) => text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Version:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default(),
        Ok(text) => {
            out.push(
                Finding::new(
                    CHECK,
                    Severity::Error,
                    format!(
                        "{} is not sturdy's shim (-v said {:?})",
                        shim.display(),
                        text.lines().next().unwrap_or_default()
                    ),
                )
                .fix("sturdyctl install (replaces it with sturdy's shim)"),
            );
            return out;
        }
        Err(e) => {
            out.push(run_failed(CHECK, &e, "sturdyctl install"));
            return out;
        }
    };
    out.push(Finding::new(
        CHECK,
        Severity::Ok,
        format!(
            "handler `{handler}` → {RUNTIME_TYPE} → {} (sturdy {version}, config version {})",
            shim.display(),
            config.schema().number()
        ),
    ));
    if version != ctx.opts.sturdyctl_version {
        out.push(
            Finding::new(
                CHECK,
                Severity::Warn,
                format!(
                    "the shim is sturdy {version} but this sturdyctl is {}: a half-finished upgrade?",
                    ctx.opts.sturdyctl_version
                ),
            )
            .fix("sturdyctl install (installs the shim shipped with this sturdyctl)"),
        );
    }
    let inline: Vec<&str> = rt
        .options
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !matches!(*k, "ConfigPath" | "TypeUrl"))
        .collect();
    if is_16 && !inline.is_empty() {
        out.push(
            Finding::new(
                CHECK,
                Severity::Warn,
                format!(
                    "containerd 1.6 passes a non-runc runtime only ConfigPath: {} in `{handler}`'s \
                     options are ignored",
                    inline.join(", ")
                ),
            )
            .fix("move them into a file named by ConfigPath (docs/configuration.md)"),
        );
    }
    if config.schema() == Schema::V1 {
        out.push(
            Finding::new(
                CHECK,
                Severity::Warn,
                format!("{cfg} uses config version 1"),
            )
            .fix("containerd config migrate (1.7+), then sturdyctl install"),
        );
    }
    if let Some(f) = restart_pending(ctx) {
        out.push(f);
    }
    out
}

/// config.toml changed after the running containerd started: the change is not live yet.
fn restart_pending(ctx: &Context) -> Option<Finding> {
    let pid = ctx.containerd.as_ref().ok()?.pid;
    let modified = std::fs::metadata(ctx.host.path(&ctx.opts.config))
        .ok()?
        .modified()
        .ok()?;
    let modified = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let btime: u64 = ctx
        .host
        .read("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let (_, ticks) = crate::procfs::parse_stat(&ctx.host.read(format!("/proc/{pid}/stat")).ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let started = btime + ticks / hz;
    (modified > started).then(|| {
        Finding::new(
            "routing",
            Severity::Warn,
            format!(
                "{} changed after containerd (pid {pid}) started: the change is not live",
                ctx.opts.config.display()
            ),
        )
        .fix("restart containerd (running containers keep running)")
    })
}

/// The watchdog: its journal lock held by a trusted process, unfinished incidents.
///
/// A watchdog is the root process holding the exclusive lock on `<journal>.lock`, never a
/// process whose command line says `sturdyctl watchdog` (anyone can name a process so;
/// security review 2026-12, L18).
pub(super) fn watchdog(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "watchdog";
    let journal = ctx.host.path(&ctx.opts.journal);
    let lock = lock_path(&journal);
    let shown = ctx.opts.journal.display();
    let mut out = Vec::new();
    let running = match lock_held(&lock) {
        false => {
            out.push(
                Finding::new(
                    CHECK,
                    Severity::Warn,
                    "no sturdyctl watchdog runs: pods of dead or hung shims are not recovered (incident 003)",
                )
                .fix("run `sturdyctl watchdog` as a service, or deploy deploy/ (DaemonSet)"),
            );
            false
        }
        true => match lock_holder(ctx, &lock) {
            Some(pid) => match ctx.host.trust.process(pid) {
                Ok(()) => {
                    out.push(Finding::new(
                        CHECK,
                        Severity::Ok,
                        format!("sturdyctl watchdog runs (pid {pid}, journal {shown})"),
                    ));
                    true
                }
                Err(e) => {
                    out.push(
                        Finding::new(
                            CHECK,
                            Severity::Error,
                            format!(
                                "{shown}'s lock is held by pid {pid}, which is no watchdog ({e}): \
                                 a watchdog cannot start while it is held"
                            ),
                        )
                        .fix(format!(
                            "stop pid {pid}; the lock file must be root's alone (a watchdog of \
                             this release makes it so)"
                        )),
                    );
                    false
                }
            },
            None => {
                out.push(
                    Finding::new(
                        CHECK,
                        Severity::Warn,
                        format!(
                            "{shown}'s lock is held by a process not visible here (another pid \
                             namespace?): it may or may not be a watchdog"
                        ),
                    )
                    .fix("run doctor in the host's pid namespace"),
                );
                false
            }
        },
    };
    let incidents = Journal::new(&journal, DEFAULT_MAX_BYTES)
        .incidents()
        .unwrap_or_default();
    let unfinished: Vec<&str> = incidents
        .iter()
        .filter(|i| !i.finished())
        .map(|i| i.id.as_str())
        .collect();
    if !unfinished.is_empty() && !running {
        out.push(
            Finding::new(
                CHECK,
                Severity::Warn,
                format!(
                    "unfinished recoveries in the journal: {}",
                    unfinished.join(", ")
                ),
            )
            .fix("start the watchdog: it finishes them (sturdyctl status shows them)"),
        );
    }
    let failed = incidents
        .iter()
        .filter(|i| {
            i.finished()
                && !i
                    .entries
                    .iter()
                    .any(|e| matches!(e.phase, crate::journal::Phase::Finished { ok: true, .. }))
        })
        .count();
    if failed > 0 {
        out.push(
            Finding::new(
                CHECK,
                Severity::Info,
                format!("{failed} recoveries in the journal finished with errors"),
            )
            .fix("read them with `sturdyctl status`"),
        );
    }
    out
}

/// Whether someone holds an exclusive flock on `path` (without creating it).
fn lock_held(path: &Path) -> bool {
    // Never follow a link or block on a FIFO someone put there.
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: flock(2) on an fd we own; a shared lock we get is released when `file` drops.
    let rc = unsafe { libc::flock(fd, libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// The pid holding the exclusive flock on `path`, from the node's /proc/locks; `None` when
/// no line names it or its holder is in another pid namespace (shown as pid 0).
fn lock_holder(ctx: &Context, path: &Path) -> Option<i32> {
    let meta = std::fs::metadata(path).ok()?;
    let locks = ctx.host.read("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// In the text of /proc/locks, the pid of the granted exclusive FLOCK on device `dev`,
/// inode `ino`. A line is `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INO 0 EOF` (major and minor
/// in hex); waiters carry a `->` after the number and are skipped.
pub(super) fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<i32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    let held: Vec<(i32, &str)> = locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "FLOCK", _, "WRITE", pid, file, ..] => Some((pid.parse().ok()?, *file)),
                _ => None,
            }
        })
        .collect();
    let exact = held.iter().find(|(_, f)| *f == want);
    // A file system whose stat device is not its superblock's (btrfs subvolumes): the
    // inode alone, if it names one lock.
    let suffix = format!(":{ino}");
    let by_inode: Vec<_> = held.iter().filter(|(_, f)| f.ends_with(&suffix)).collect();
    let found = exact.or(match by_inode.as_slice() {
        [one] => Some(*one),
        _ => None,
    });
    found.map(|(pid, _)| *pid).filter(|p| *p > 0)
}
