//! Node checks: pipe accounting, cgroup version and driver, criu, the record directory.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Context, Finding, Severity};

/// Pages a pipe gets by default (64 KiB of 4 KiB pages); the kernel charges these to the
/// user that created it.
const PIPE_DEFAULT_PAGES: u64 = 16;

/// fs.pipe-user-pages-soft against the pipes root's processes hold (incident 002).
pub(super) fn pipes(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "pipes";
    let read = |name: &str| -> Option<u64> {
        ctx.host
            .read(format!("/proc/sys/fs/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let Some(soft) = read("pipe-user-pages-soft") else {
        return vec![Finding::new(
            CHECK,
            Severity::Warn,
            "cannot read fs.pipe-user-pages-soft",
        )];
    };
    let pipes = root_pipes(ctx);
    let used = pipes * PIPE_DEFAULT_PAGES;
    if soft == 0 {
        return vec![Finding::new(
            CHECK,
            Severity::Ok,
            format!("fs.pipe-user-pages-soft = 0 (no soft limit); root holds about {pipes} pipes"),
        )];
    }
    let summary = format!(
        "root holds about {pipes} pipes (~{used} pages) against fs.pipe-user-pages-soft = {soft}"
    );
    let fix = format!(
        "sysctl -w fs.pipe-user-pages-soft={} (and find what holds the pipes)",
        (soft * 4).max(used * 2)
    );
    if used >= soft {
        vec![Finding::new(
            CHECK,
            Severity::Error,
            format!(
                "{summary}: new pipes of root get 2 pages, and a runtime writing more than that \
                 synchronously hangs (incident 002, runc 1.0.0-rc93)"
            ),
        )
        .fix(fix)]
    } else if used * 10 >= soft * 8 {
        vec![Finding::new(CHECK, Severity::Warn, format!("{summary}: above 80 %")).fix(fix)]
    } else {
        vec![Finding::new(CHECK, Severity::Ok, summary)]
    }
}

/// Distinct pipes open in processes whose real uid is 0 (an estimate of root's charge:
/// resized pipes count at the default size).
fn root_pipes(ctx: &Context) -> u64 {
    let mut inodes = HashSet::new();
    for p in &ctx.processes {
        if p.uids.is_none_or(|(real, _)| real != 0) {
            continue;
        }
        let base = ctx.host.path(format!("/proc/{}", p.pid));
        let Ok(fds) = std::fs::read_dir(base.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(ino) = t.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(ino.to_string());
                }
            }
        }
    }
    inodes.len() as u64
}

/// One mount from /proc/self/mountinfo.
struct Mount {
    point: PathBuf,
    fstype: String,
}

fn mounts(ctx: &Context) -> Vec<Mount> {
    let text = ctx.host.read("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let fstype = right.split_whitespace().next()?;
            Some(Mount {
                point: PathBuf::from(point.replace("\\040", " ")),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// The mount `path` lives on: the longest mount point that is a prefix of it (later
/// mounts over the same point win).
fn mount_of<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.point))
        .max_by_key(|(i, m)| (m.point.components().count(), *i))
        .map(|(_, m)| m)
}

/// cgroup v1/v2, PID 1, and sturdy's SystemdCgroup against kubelet's driver and runc's.
pub(super) fn cgroup(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "cgroup";
    let mounts = mounts(ctx);
    let at = |p: &str| mounts.iter().rev().find(|m| m.point == Path::new(p));
    let version = match at("/sys/fs/cgroup").map(|m| m.fstype.as_str()) {
        Some("cgroup2") => "v2 (unified)",
        Some(_) if at("/sys/fs/cgroup/unified").is_some_and(|m| m.fstype == "cgroup2") => {
            "v1 (hybrid)"
        }
        Some(_) => "v1",
        None => {
            return vec![Finding::new(
                CHECK,
                Severity::Error,
                "no cgroup file system at /sys/fs/cgroup",
            )
            .fix("mount cgroup2 at /sys/fs/cgroup (or boot with systemd)")]
        }
    };
    let v2 = version.starts_with("v2");
    let init = ctx
        .host
        .read("/proc/1/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let systemd_init = init == "systemd";
    let systemd = ctx.option_bool("SystemdCgroup").unwrap_or(false);
    let driver = |s: bool| if s { "systemd" } else { "cgroupfs" };
    let mut out = Vec::new();
    let what = format!(
        "cgroup {version}, PID 1 is {init:?}, sturdy's SystemdCgroup = {systemd} ({} driver)",
        driver(systemd)
    );
    if systemd && !systemd_init {
        out.push(
            Finding::new(
                CHECK,
                Severity::Error,
                format!("{what}: runc cannot use systemd without systemd"),
            )
            .fix("set SystemdCgroup = false in sturdy's options"),
        );
    }
    if let Some(kubelet) = kubelet_driver(ctx) {
        if kubelet != driver(systemd) {
            out.push(
                Finding::new(
                    CHECK,
                    Severity::Error,
                    format!("{what}, but kubelet's cgroupDriver is {kubelet}"),
                )
                .fix(format!(
                    "set SystemdCgroup = {} in sturdy's options (kubelet and runtime must agree)",
                    kubelet == "systemd"
                )),
            );
        }
    }
    if let Some(runc_systemd) = ctx
        .config
        .as_ref()
        .ok()
        .and_then(|c| c.runtime("runc"))
        .and_then(|r| r.option_bool("SystemdCgroup"))
    {
        if runc_systemd != systemd {
            out.push(
                Finding::new(
                    CHECK,
                    Severity::Warn,
                    format!(
                        "the runc handler uses SystemdCgroup = {runc_systemd}, sturdy {systemd}"
                    ),
                )
                .fix("use the same SystemdCgroup for every runtime of one kubelet"),
            );
        }
    }
    if v2 && systemd_init && !systemd && out.is_empty() {
        out.push(
            Finding::new(
                CHECK,
                Severity::Warn,
                format!("{what}: two managers of one cgroup tree"),
            )
            .fix("set SystemdCgroup = true (and kubelet cgroupDriver: systemd)"),
        );
    }
    if out.is_empty() {
        out.push(Finding::new(CHECK, Severity::Ok, what));
    }
    out
}

/// `cgroupDriver` from kubelet's config file, when there is one.
fn kubelet_driver(ctx: &Context) -> Option<String> {
    let text = ctx.host.read("/var/lib/kubelet/config.yaml").ok()?;
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("cgroupDriver:")?;
        Some(v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

/// criu, needed only for checkpoint/restore.
pub(super) fn criu(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "criu";
    let configured =
        ctx.option_str("CriuImagePath").is_some() || ctx.option_str("CriuWorkPath").is_some();
    match ctx.host.which("criu", Some(ctx.containerd_path())) {
        Some(bin) => match ctx.host.run(&bin, &["--version"]) {
            Err(e @ crate::host::RunError::Untrusted { .. }) => {
                vec![super::run_failed(CHECK, &e, "")]
            }
            run => {
                let v = run
                    .map(|t| t.lines().next().unwrap_or_default().trim().to_string())
                    .unwrap_or_else(|e| e.to_string());
                vec![Finding::new(
                    CHECK,
                    Severity::Ok,
                    format!("{} ({v}): checkpoint/restore available", bin.display()),
                )]
            }
        },
        None if configured => vec![Finding::new(
            CHECK,
            Severity::Warn,
            "sturdy's options set Criu paths but criu is not on containerd's PATH",
        )
        .fix("apt-get install criu")],
        None => vec![Finding::new(
            CHECK,
            Severity::Info,
            "criu not installed: checkpoint/restore unavailable (nothing else needs it)",
        )
        .fix("apt-get install criu, if you checkpoint containers")],
    }
}

/// The record directory: a directory, writable, and not on memory-backed storage.
pub(super) fn records(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "records";
    let dir = &ctx.opts.record_dir;
    let local = ctx.host.path(dir);
    let mounts = mounts(ctx);
    let fs = mount_of(&mounts, dir)
        .map(|m| m.fstype.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    match std::fs::metadata(&local) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(Finding::new(
            CHECK,
            Severity::Info,
            format!(
                "{} does not exist yet; sturdy and the watchdog create it on first use",
                dir.display()
            ),
        )),
        Err(e) => out.push(Finding::new(
            CHECK,
            Severity::Error,
            format!("{}: {e}", dir.display()),
        )),
        Ok(m) if !m.is_dir() => out.push(
            Finding::new(
                CHECK,
                Severity::Error,
                format!("{} is not a directory", dir.display()),
            )
            .fix(format!("move the file away: mv {0} {0}.old", dir.display())),
        ),
        Ok(_) => match probe_write(&local) {
            Ok(()) => out.push(Finding::new(
                CHECK,
                Severity::Ok,
                format!("{} is writable ({fs})", dir.display()),
            )),
            Err(e) => out.push(
                Finding::new(
                    CHECK,
                    Severity::Error,
                    format!("{} is not writable: {e}", dir.display()),
                )
                .fix("make it writable by root (a read-only or full file system?)"),
            ),
        },
    }
    if matches!(fs.as_str(), "tmpfs" | "ramfs") {
        out.push(
            Finding::new(
                CHECK,
                Severity::Warn,
                format!(
                    "{} is on {fs}: sandbox records and the watchdog journal are lost at reboot",
                    dir.display()
                ),
            )
            .fix("put it on persistent storage (it lives under /var/lib for that reason)"),
        );
    }
    out
}

/// Creates, syncs and removes a file in `dir`.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".sturdyctl-doctor-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(b"doctor\n")?;
            f.sync_all()
        });
    let removed = std::fs::remove_file(&path);
    result?;
    removed
}
