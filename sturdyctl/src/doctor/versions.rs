//! The runc (or configured BinaryName) and containerd versions against the known-bad tables.

use runc_client::Version;

use super::known::ContainerdVersion;
use super::{run_failed, Context, Finding, Severity};

/// `<BinaryName or runc> --version` against runc-client's table.
pub(super) fn runc(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "runc";
    let name = ctx.option_str("BinaryName").unwrap_or("runc");
    let Some(bin) = ctx.host.which(name, Some(ctx.containerd_path())) else {
        return vec![Finding::new(
            CHECK,
            Severity::Error,
            format!("OCI runtime {name:?} (sturdy's BinaryName) is not on containerd's PATH"),
        )
        .fix("install runc (apt-get install runc) or set BinaryName to an absolute path")];
    };
    let text = match ctx.host.run(&bin, &["--version"]) {
        Ok(t) => t,
        Err(e) => {
            return vec![run_failed(
                CHECK,
                &e,
                format!(
                    "check {} runs at all (`{} --version`)",
                    bin.display(),
                    bin.display()
                ),
            )]
        }
    };
    let Some(version) = Version::parse(&text) else {
        return vec![Finding::new(
            CHECK,
            Severity::Warn,
            format!(
                "{}: unrecognised --version output {:?}",
                bin.display(),
                first_line(&text)
            ),
        )
        .fix("check that BinaryName names runc or a runc-compatible runtime")];
    };
    let what = format!(
        "{} {} at {}{}",
        version.runtime,
        version.runc,
        bin.display(),
        version
            .commit
            .as_deref()
            .map(|c| format!(" (build {c})"))
            .unwrap_or_default()
    );
    let mut out = Vec::new();
    for issue in version.known_issues() {
        out.push(
            Finding::new(
                CHECK,
                Severity::Error,
                format!("{what}: {}: {}", issue.id, issue.summary),
            )
            .fix(format!(
                "upgrade {} to {} or later",
                version.runtime, issue.fixed_in
            ))
            .source(issue.source),
        );
    }
    for issue in version.backported_issues() {
        out.push(
            Finding::new(
                CHECK,
                Severity::Info,
                format!("{what}: {} is fixed in this distribution build", issue.id),
            )
            .source(issue.source),
        );
    }
    if out.iter().all(|f| f.severity < Severity::Warn) {
        out.insert(
            0,
            Finding::new(CHECK, Severity::Ok, format!("{what}: no known issues")),
        );
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// containerd's binary: the one the daemon found through its socket runs, else the one on
/// sturdyctl's PATH. Only [`crate::host::Host::run`]'s check at use makes it runnable.
pub(super) fn containerd_binary(ctx: &Context) -> Option<std::path::PathBuf> {
    ctx.containerd
        .as_ref()
        .ok()
        .and_then(|d| d.exe.clone())
        .or_else(|| ctx.host.which("containerd", None))
}

/// Which containerd doctor looks at and whether its PATH is root's alone.
fn identity(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "containerd";
    let daemon = match &ctx.containerd {
        Ok(d) => d,
        Err(f) => return vec![f.clone()],
    };
    let mut out = vec![Finding::new(
        CHECK,
        Severity::Ok,
        format!(
            "containerd pid {} listens on {} ({})",
            daemon.pid,
            ctx.opts.address.display(),
            daemon
                .exe
                .as_ref()
                .map(|e| e.display().to_string())
                .unwrap_or_else(|| "binary unknown".into())
        ),
    )];
    let Some(path) = &daemon.path_env else {
        return out;
    };
    let open: Vec<String> = std::env::split_paths(path)
        .filter_map(|d| {
            let e = ctx.host.trust.directory(&d).err()?;
            Some(format!("{} ({e})", d.display()))
        })
        .collect();
    if !open.is_empty() {
        out.push(
            Finding::new(
                CHECK,
                Severity::Error,
                format!(
                    "containerd's PATH has directories other users can change ({}): containerd \
                     runs the shims, and they runc and criu, found there as root; doctor runs \
                     nothing from them",
                    open.join("; ")
                ),
            )
            .fix(super::UNTRUSTED_FIX),
        );
    }
    out
}

/// The running containerd's version (its API; else the binary it runs; else the one on
/// PATH) against the containerd table, and a restart pending after a binary upgrade.
pub(super) fn containerd(ctx: &Context) -> Vec<Finding> {
    let mut out = identity(ctx);
    out.extend(version(ctx));
    out
}

fn version(ctx: &Context) -> Vec<Finding> {
    const CHECK: &str = "containerd";
    let binary = containerd_binary(ctx);
    let on_disk = binary.as_ref().map(|b| {
        ctx.host
            .run(b, &["--version"])
            .map_err(|e| e.to_string())
            .and_then(|t| {
                ContainerdVersion::parse(&t)
                    .ok_or_else(|| format!("unrecognised version {:?}", first_line(&t)))
            })
    });
    let running = match &ctx.opts.api_version {
        Some(Ok((version, revision))) => Some(ContainerdVersion {
            version: version.clone(),
            revision: revision.clone(),
        }),
        _ => None,
    };
    let mut out = Vec::new();
    if let (Some(run), Some(Ok(disk))) = (&running, &on_disk) {
        if run.semver() != disk.semver() || run.revision != disk.revision {
            out.push(
                Finding::new(
                    CHECK,
                    Severity::Warn,
                    format!(
                        "the running containerd is {} but {} on disk is {}: an upgrade is waiting \
                         for a restart",
                        run.version,
                        binary
                            .as_ref()
                            .map(|b| b.display().to_string())
                            .unwrap_or_default(),
                        disk.version
                    ),
                )
                .fix(
                    "restart containerd (running containers keep running; see docs/operations.md)",
                ),
            );
        }
    }
    let (version, how) = match (&running, &on_disk) {
        (Some(v), _) => (v.clone(), "running"),
        (None, Some(Ok(v))) => (v.clone(), "on disk"),
        (None, Some(Err(e))) => {
            out.push(Finding::new(
                CHECK,
                Severity::Warn,
                format!("containerd version unknown: {e}"),
            ));
            return out;
        }
        (None, None) => {
            out.push(
                Finding::new(
                    CHECK,
                    Severity::Error,
                    "no containerd found (not running, not on PATH)",
                )
                .fix("install containerd (apt-get install containerd) and start it"),
            );
            return out;
        }
    };
    if let Some(Err(e)) = &ctx.opts.api_version {
        out.push(Finding::new(
            CHECK,
            Severity::Info,
            format!("containerd's API did not answer ({e}); judging the binary on disk"),
        ));
    }
    let what = format!(
        "containerd {} ({how}, build {})",
        version.version, version.revision
    );
    let (bad, backported) = version.issues();
    for issue in &bad {
        out.push(
            Finding::new(
                CHECK,
                issue.severity,
                format!("{what}: {}: {}", issue.id, issue.summary),
            )
            .fix(format!("upgrade containerd to {} or later", issue.fixed_in))
            .source(issue.source),
        );
    }
    for issue in &backported {
        out.push(
            Finding::new(
                CHECK,
                Severity::Info,
                format!("{what}: {} is fixed in this distribution build", issue.id),
            )
            .source(issue.source),
        );
    }
    if bad.is_empty() {
        out.insert(
            0,
            Finding::new(CHECK, Severity::Ok, format!("{what}: no known issues")),
        );
    }
    out
}
