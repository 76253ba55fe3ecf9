//! From containerd's `Mount` to the exact mount(2) calls, everything allocated up front so
//! the calls can run in a forked child.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use nix::mount::MsFlags;

use super::{data_limit, detach_once, overlay, MountError};

/// Kernel mount flags and filesystem data parsed from containerd's option words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call itself (never propagation flags).
    pub flags: MsFlags,
    /// Propagation type to set afterwards (the last one named wins), or empty.
    pub propagation: MsFlags,
    /// Everything that is not a flag word, for the filesystem, in order.
    pub data: Vec<String>,
}

impl MountOptions {
    /// The data words joined as mount(2) takes them.
    pub fn data_string(&self) -> String {
        self.data.join(",")
    }
}

enum Word {
    Set(MsFlags),
    Clear(MsFlags),
    Propagation(MsFlags),
}

fn word(w: &str) -> Option<Word> {
    use MsFlags as F;
    use Word::{Clear, Propagation, Set};
    Some(match w {
        "defaults" => Set(F::empty()),
        "ro" => Set(F::MS_RDONLY),
        "rw" => Clear(F::MS_RDONLY),
        "nosuid" => Set(F::MS_NOSUID),
        "suid" => Clear(F::MS_NOSUID),
        "nodev" => Set(F::MS_NODEV),
        "dev" => Clear(F::MS_NODEV),
        "noexec" => Set(F::MS_NOEXEC),
        "exec" => Clear(F::MS_NOEXEC),
        "sync" => Set(F::MS_SYNCHRONOUS),
        "async" => Clear(F::MS_SYNCHRONOUS),
        "dirsync" => Set(F::MS_DIRSYNC),
        "remount" => Set(F::MS_REMOUNT),
        "mand" => Set(F::MS_MANDLOCK),
        "nomand" => Clear(F::MS_MANDLOCK),
        "noatime" => Set(F::MS_NOATIME),
        "atime" => Clear(F::MS_NOATIME),
        "nodiratime" => Set(F::MS_NODIRATIME),
        "diratime" => Clear(F::MS_NODIRATIME),
        "relatime" => Set(F::MS_RELATIME),
        "norelatime" => Clear(F::MS_RELATIME),
        "strictatime" => Set(F::MS_STRICTATIME),
        "nostrictatime" => Clear(F::MS_STRICTATIME),
        "bind" => Set(F::MS_BIND),
        "rbind" => Set(F::MS_BIND.union(F::MS_REC)),
        "private" => Propagation(F::MS_PRIVATE),
        "rprivate" => Propagation(F::MS_PRIVATE.union(F::MS_REC)),
        "shared" => Propagation(F::MS_SHARED),
        "rshared" => Propagation(F::MS_SHARED.union(F::MS_REC)),
        "slave" => Propagation(F::MS_SLAVE),
        "rslave" => Propagation(F::MS_SLAVE.union(F::MS_REC)),
        "unbindable" => Propagation(F::MS_UNBINDABLE),
        "runbindable" => Propagation(F::MS_UNBINDABLE.union(F::MS_REC)),
        _ => return None,
    })
}

/// Option words that need machinery this shim does not have (and must not be passed on
/// to the filesystem as data, where they would fail obscurely).
const UNSUPPORTED: &[&str] = &["loop"];

/// Splits containerd's option words into flags, propagation and filesystem data.
///
/// Returns the first unsupported word as the error.
pub fn parse_options(options: &[String]) -> Result<MountOptions, String> {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for o in options {
        match word(o) {
            Some(Word::Set(f)) => out.flags.insert(f),
            Some(Word::Clear(f)) => out.flags.remove(f),
            Some(Word::Propagation(p)) => out.propagation = p,
            None if UNSUPPORTED.contains(&o.as_str()) => return Err(o.clone()),
            // Taken out before planning when they are used (see `idmapped`); never data.
            None if o.starts_with("uidmap=") || o.starts_with("gidmap=") => return Err(o.clone()),
            None => out.data.push(o.clone()),
        }
    }
    Ok(out)
}

/// Which mount(2) step failed; sent as a number from the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub(super) enum Step {
    Chdir = 1,
    Mount = 2,
    Propagation = 3,
    RemountReadOnly = 4,
}

impl Step {
    pub(super) fn from_raw(n: i32) -> Option<Step> {
        Some(match n {
            1 => Step::Chdir,
            2 => Step::Mount,
            3 => Step::Propagation,
            4 => Step::RemountReadOnly,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Step::Chdir => "chdir",
            Step::Mount => "mount",
            Step::Propagation => "set propagation",
            Step::RemountReadOnly => "remount read-only",
        }
    }
}

/// One mount, ready to run.
#[derive(Debug)]
pub(super) struct Plan {
    describe: String,
    target_path: PathBuf,
    chdir_path: Option<PathBuf>,
    chdir: Option<CString>,
    source: Option<CString>,
    target: CString,
    fstype: Option<CString>,
    flags: MsFlags,
    propagation: MsFlags,
    data: Option<CString>,
}

/// How a mount is named in errors (its options can be kilobytes long, so not those).
pub(super) fn describe(m: &Mount, target: &Path) -> String {
    let kind = if m.type_.is_empty() {
        "(no type)"
    } else {
        &m.type_
    };
    format!("{kind} {} on {}", m.source, target.display())
}

impl Plan {
    /// Parses `m` and decides how to mount it under `rootfs` (absolute).
    pub(super) fn new(m: &Mount, rootfs: &Path) -> Result<Plan, MountError> {
        let target_path = resolve_target(m, rootfs)?;
        let name = describe(m, &target_path);
        let opts = parse_options(&m.options).map_err(|option| MountError::Unsupported {
            mount: name.clone(),
            option,
        })?;
        let limit = data_limit();
        let mut data = opts.data_string();
        let mut chdir_path = None;
        if data.len() > limit {
            if m.type_ != "overlay" {
                return Err(MountError::TooLong {
                    mount: name,
                    len: data.len(),
                    limit,
                    hint: "",
                });
            }
            let compacted = overlay::compact(&opts.data).ok_or_else(|| MountError::TooLong {
                mount: name.clone(),
                len: data.len(),
                limit,
                hint: " (the overlay layers share no parent directory to shorten them against)",
            })?;
            data = compacted.words.join(",");
            if data.len() > limit {
                return Err(MountError::TooLong {
                    mount: name,
                    len: data.len(),
                    limit,
                    hint: " even with the layer paths made relative",
                });
            }
            chdir_path = Some(compacted.dir);
        }
        let c = |what: &str, bytes: &[u8]| {
            CString::new(bytes).map_err(|_| MountError::Invalid {
                mount: name.clone(),
                reason: format!("{what} contains a NUL byte"),
            })
        };
        let nonempty = |what: &str, s: &str| -> Result<Option<CString>, MountError> {
            if s.is_empty() {
                Ok(None)
            } else {
                c(what, s.as_bytes()).map(Some)
            }
        };
        Ok(Plan {
            chdir: chdir_path
                .as_ref()
                .map(|d: &PathBuf| c("layer directory", d.as_os_str().as_bytes()))
                .transpose()?,
            source: nonempty("source", &m.source)?,
            target: c("target", target_path.as_os_str().as_bytes())?,
            fstype: nonempty("type", &m.type_)?,
            data: nonempty("options", &data)?,
            flags: opts.flags,
            propagation: opts.propagation,
            chdir_path,
            target_path,
            describe: name,
        })
    }

    /// Where the mount goes.
    pub(super) fn target_path(&self) -> &Path {
        &self.target_path
    }

    /// The mount must be made from a forked helper that changes directory first.
    pub(super) fn needs_helper(&self) -> bool {
        self.chdir.is_some()
    }

    /// Name of the mount for error messages.
    pub(super) fn name(&self) -> &str {
        &self.describe
    }

    /// What an idmapped bind mount is made from: source, target, flags, propagation.
    pub(super) fn bind_parts(&self) -> (Option<&CStr>, &CStr, MsFlags, MsFlags) {
        (
            self.source.as_deref(),
            &self.target,
            self.flags,
            self.propagation,
        )
    }

    /// Runs the mount in this process (only for plans that need no chdir).
    pub(super) fn run_here(&self) -> Result<(), MountError> {
        if self.needs_helper() {
            return Err(MountError::Helper {
                mount: self.describe.clone(),
                reason: "a mount that needs a chdir must run in the helper".into(),
            });
        }
        self.syscalls()
            .map_err(|(step, errno)| self.failed(step, errno))
    }

    /// The mount(2) sequence. Only async-signal-safe calls on memory allocated before:
    /// it runs between fork and _exit in the helper.
    pub(super) fn syscalls(&self) -> Result<(), (Step, i32)> {
        fn ptr(c: &Option<CString>) -> *const libc::c_char {
            c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
        }
        let none = std::ptr::null::<libc::c_char>();
        let errno = nix::errno::Errno::last_raw;
        // SAFETY: every pointer is null or a live NUL-terminated string owned by `self`.
        unsafe {
            if let Some(dir) = &self.chdir {
                if libc::chdir(dir.as_ptr()) != 0 {
                    return Err((Step::Chdir, errno()));
                }
            }
            if libc::mount(
                ptr(&self.source),
                self.target.as_ptr(),
                ptr(&self.fstype),
                self.flags.bits(),
                ptr(&self.data).cast(),
            ) != 0
            {
                return Err((Step::Mount, errno()));
            }
            if !self.propagation.is_empty()
                && libc::mount(
                    none,
                    self.target.as_ptr(),
                    none,
                    self.propagation.bits(),
                    std::ptr::null(),
                ) != 0
            {
                return Err((Step::Propagation, errno()));
            }
            // A bind mount ignores MS_RDONLY; only a remount of the bind makes it read-only.
            let bind_ro = MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            if self.flags.contains(bind_ro)
                && !self.flags.contains(MsFlags::MS_REMOUNT)
                && libc::mount(
                    none,
                    self.target.as_ptr(),
                    none,
                    (self.flags | MsFlags::MS_REMOUNT).bits(),
                    std::ptr::null(),
                ) != 0
            {
                return Err((Step::RemountReadOnly, errno()));
            }
        }
        Ok(())
    }

    /// The error for a failed step; a step after the mount itself undoes the mount, so a
    /// bind meant to be read-only never stays writable.
    pub(super) fn failed(&self, step: Step, errno: i32) -> MountError {
        let source = std::io::Error::from_raw_os_error(errno);
        if matches!(step, Step::Propagation | Step::RemountReadOnly) {
            if let Err(e) = detach_once(&self.target_path) {
                log::warn!(
                    "mount {}: undoing after {}: {e}",
                    self.describe,
                    step.name()
                );
            }
        }
        match (step, &self.chdir_path) {
            (Step::Chdir, Some(dir)) => MountError::Chdir {
                mount: self.describe.clone(),
                dir: dir.clone(),
                source,
            },
            _ => MountError::Syscall {
                mount: self.describe.clone(),
                step: step.name(),
                source,
            },
        }
    }
}

/// `rootfs`, or the mount's `target` inside it; never a path that leaves the rootfs.
fn resolve_target(m: &Mount, rootfs: &Path) -> Result<PathBuf, MountError> {
    let sub = m.target.trim_start_matches('/');
    if sub.is_empty() {
        return Ok(rootfs.to_path_buf());
    }
    let invalid = |reason: String| MountError::Invalid {
        mount: describe(m, rootfs),
        reason,
    };
    let mut path = rootfs.to_path_buf();
    for component in Path::new(sub).components() {
        match component {
            Component::Normal(c) => path.push(c),
            Component::CurDir => continue,
            _ => return Err(invalid(format!("target {:?} leaves the rootfs", m.target))),
        }
        // A symlink inside the image could point anywhere on the host.
        if path.symlink_metadata().is_ok_and(|md| md.is_symlink()) {
            return Err(invalid(format!(
                "target {:?} goes through the symlink {}",
                m.target,
                path.display()
            )));
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn mount(type_: &str, target: &str, options: &[&str]) -> Mount {
        Mount {
            type_: type_.into(),
            source: type_.into(),
            target: target.into(),
            options: strings(options),
            ..Default::default()
        }
    }

    #[test]
    fn flag_words_become_flags_and_the_rest_data_in_order() {
        let o = parse_options(&strings(&[
            "rbind", "ro", "nosuid", "nodev", "noexec", "rprivate", "size=1m", "mode=755",
        ]))
        .unwrap();
        use MsFlags as F;
        assert_eq!(
            o.flags,
            F::MS_BIND | F::MS_REC | F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC
        );
        assert_eq!(o.propagation, F::MS_PRIVATE | F::MS_REC);
        assert_eq!(o.data_string(), "size=1m,mode=755");
    }

    #[test]
    fn later_words_override_earlier_ones() {
        use MsFlags as F;
        let o =
            parse_options(&strings(&["ro", "noatime", "rw", "atime", "sync", "async"])).unwrap();
        assert_eq!(o.flags, F::empty());
        let o = parse_options(&strings(&["shared", "rslave"])).unwrap();
        assert_eq!(o.propagation, F::MS_SLAVE | F::MS_REC);
        let o = parse_options(&strings(&[
            "remount",
            "dirsync",
            "mand",
            "relatime",
            "strictatime",
            "nodiratime",
            "defaults",
        ]))
        .unwrap();
        assert_eq!(
            o.flags,
            F::MS_REMOUNT
                | F::MS_DIRSYNC
                | F::MS_MANDLOCK
                | F::MS_RELATIME
                | F::MS_STRICTATIME
                | F::MS_NODIRATIME
        );
        assert!(o.data.is_empty());
    }

    #[test]
    fn loop_is_refused_not_passed_as_data() {
        assert_eq!(
            parse_options(&strings(&["ro", "loop"])),
            Err("loop".to_string())
        );
    }

    #[test]
    fn idmap_words_never_become_data() {
        assert_eq!(
            parse_options(&strings(&["lowerdir=/a", "gidmap=0:1:1"])),
            Err("gidmap=0:1:1".to_string())
        );
    }

    #[test]
    fn targets_stay_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let plan = Plan::new(&mount("tmpfs", "", &[]), root).unwrap();
        assert_eq!(plan.target_path(), root);
        let plan = Plan::new(&mount("tmpfs", "/dev/./shm", &[]), root).unwrap();
        assert_eq!(plan.target_path(), root.join("dev/shm"));
        let err = Plan::new(&mount("tmpfs", "../../etc", &[]), root).unwrap_err();
        assert!(err.to_string().contains("leaves the rootfs"), "{err}");
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let err = Plan::new(&mount("tmpfs", "link/x", &[]), root).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn oversized_data_is_an_error_unless_an_overlay_can_be_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("x-opt={}", "a".repeat(data_limit()));
        let err = Plan::new(&mount("tmpfs", "", &[&long]), dir.path()).unwrap_err();
        assert!(matches!(err, MountError::TooLong { .. }), "{err}");
        // No common parent below "/" to shorten against.
        let lowers: Vec<String> = (0..800).map(|i| format!("/l{i:04}")).collect();
        let opt = format!("lowerdir={}", lowers.join(":"));
        let err = Plan::new(&mount("overlay", "", &[&opt]), dir.path()).unwrap_err();
        assert!(err.to_string().contains("no parent directory"), "{err}");
        let lowers: Vec<String> = (0..300).map(|i| format!("/long-parent-dir/{i}")).collect();
        let opt = format!("lowerdir={}", lowers.join(":"));
        let plan = Plan::new(&mount("overlay", "", &[&opt]), dir.path()).unwrap();
        assert!(plan.needs_helper());
        assert!(plan.run_here().is_err(), "a chdir plan ran in-process");
        let err = Plan::new(&mount("tmpfs", "", &["a\0b"]), dir.path()).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}
