//! The directory a shim socket lives in. containerd ≥ 2.3 names it in `BootstrapParams`
//! (`socket_dir`); older ones imply `/run/containerd/s`. Whoever can write to that directory
//! can put their own socket where containerd will connect, so it must be ours alone.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Longest `socket_dir` containerd accepts on Linux: with `/` and the 64-character hash
/// the socket path just fits `sun_path` (108 bytes with its NUL).
pub const MAX_SOCKET_DIR: usize = 42;

/// Why a socket directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum SocketDirError {
    /// The name itself is unusable.
    #[error("socket_dir {dir:?}: {reason}")]
    Name { dir: String, reason: &'static str },
    /// Creating or inspecting it failed.
    #[error("socket directory {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    /// It exists but is not a private directory of the shim's uid.
    #[error("socket directory {dir}: {reason}")]
    NotPrivate { dir: String, reason: String },
}

/// Checks a `socket_dir` from containerd: absolute, no `.`/`..`/empty components (beyond a
/// trailing `/`), no control characters, short enough for the socket path. Returns it
/// without a trailing `/`.
pub fn validate(dir: &str) -> Result<&str, SocketDirError> {
    let bad = |reason| SocketDirError::Name {
        dir: dir.to_string(),
        reason,
    };
    let trimmed = dir.trim_end_matches('/');
    if !trimmed.starts_with('/') {
        return Err(bad("not an absolute path"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("has an empty, `.` or `..` component"));
    }
    if trimmed.len() > MAX_SOCKET_DIR {
        return Err(bad(
            "longer than 42 bytes: the socket path would not fit a unix socket address",
        ));
    }
    Ok(trimmed)
}

/// Creates `dir` (mode 0700) if missing and checks that it is a directory, not a symlink,
/// owned by our effective uid and writable by nobody else.
pub fn ensure(dir: &Path) -> Result<(), SocketDirError> {
    let name = || dir.display().to_string();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SocketDirError::Io {
            dir: name(),
            source,
        })?;
    let meta = std::fs::symlink_metadata(dir).map_err(|source| SocketDirError::Io {
        dir: name(),
        source,
    })?;
    let refuse = |reason: String| SocketDirError::NotPrivate {
        dir: name(),
        reason,
    };
    if !meta.file_type().is_dir() {
        return Err(refuse("not a directory (a symlink?)".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(refuse(format!(
            "owned by uid {}, not the shim's {euid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names_containerd_could_send() {
        assert_eq!(validate("/run/containerd/s").unwrap(), "/run/containerd/s");
        assert_eq!(validate("/run/containerd/s/").unwrap(), "/run/containerd/s");
        assert_eq!(validate(&format!("/{}", "a".repeat(41))).unwrap().len(), 42);
        for bad in [
            "",
            "/",
            "run/containerd/s",
            "/run/../etc",
            "/run/./s",
            "/run//s",
            "/run/s\n",
            &format!("/{}", "a".repeat(42)),
        ] {
            assert!(validate(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn only_a_private_directory_of_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/s");
        ensure(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "created with {mode:o}");

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            ensure(&open),
            Err(SocketDirError::NotPrivate { .. })
        ));

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(matches!(
            ensure(&link),
            Err(SocketDirError::NotPrivate { .. })
        ));

        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(ensure(&file).is_err());

        // Someone else's directory (here: nobody's), when we can hand it away.
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        if nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).is_ok() {
            assert!(matches!(
                ensure(&foreign),
                Err(SocketDirError::NotPrivate { .. })
            ));
        } else {
            eprintln!("SKIPPED foreign-owner case: cannot chown here");
        }
    }
}
