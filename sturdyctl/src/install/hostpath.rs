//! Host paths seen from where `install` runs: a host directory tree mounted under a root
//! (`/host` in the DaemonSet's init container), whose symlinks mean host paths.
//!
//! `canonicalize` resolves an absolute symlink target in the filesystem of the process that
//! asks: inside a container that is the image, not the host, so a host config.toml that is a
//! symlink would be read from (or written to) the wrong file (security review 2026-12, L19).

use std::convert::Infallible;
use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};

use crate::trust::{walk, WalkError};

/// The host path `p` with every symlink on the way resolved as on the host: an absolute
/// target starts again at `root`, and `..` never leaves it. Returns where the file is here
/// (under `root`); every component must exist.
pub fn resolve_in_root(root: &Path, p: &Path) -> std::io::Result<PathBuf> {
    let walked = walk(root, p, |_, _| Ok::<(), Infallible>(()));
    walked.map(|(here, _)| here).map_err(|e| match e {
        WalkError::Io(here, e) => Error::new(e.kind(), format!("{}: {e}", here.display())),
        WalkError::NotADirectory(here) => {
            Error::other(format!("{}: not a directory", here.display()))
        }
        WalkError::Loop => Error::other(format!(
            "{}: too many levels of symbolic links",
            p.display()
        )),
        WalkError::Refused(never) => match never {},
    })
}

/// The deepest existing ancestor of the host path `p` (or `p` itself), resolved with
/// [`resolve_in_root`], and the components below it that do not exist yet.
pub fn existing_ancestor(root: &Path, p: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let mut base = p.to_path_buf();
    let mut missing = Vec::new();
    loop {
        match resolve_in_root(root, &base) {
            Ok(here) => {
                let rest: PathBuf = missing.iter().rev().collect();
                return Ok((here, rest));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let Some(name) = base.file_name().map(|n| n.to_os_string()) else {
                    return Err(e);
                };
                missing.push(name);
                base.pop();
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        let root = host.path();
        std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
        std::fs::create_dir_all(root.join("etc/k8s")).unwrap();
        std::fs::write(root.join("etc/k8s/containerd.toml"), "version = 2\n").unwrap();
        // Absolute and relative links, as a host would have them.
        symlink(
            "/etc/k8s/containerd.toml",
            root.join("etc/containerd/config.toml"),
        )
        .unwrap();
        symlink(
            "../k8s/containerd.toml",
            root.join("etc/containerd/rel.toml"),
        )
        .unwrap();
        symlink("/../../../etc/k8s", root.join("etc/up")).unwrap();
        let want = root.join("etc/k8s/containerd.toml");
        for p in [
            "/etc/containerd/config.toml",
            "/etc/containerd/rel.toml",
            "/etc/up/containerd.toml",
            "etc/containerd/../k8s/containerd.toml",
        ] {
            assert_eq!(resolve_in_root(root, Path::new(p)).unwrap(), want, "{p}");
        }
        let e = resolve_in_root(root, Path::new("/etc/containerd/none.toml")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        symlink("loop", root.join("etc/loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("/etc/loop")).is_err());
        // Under `/` it is the ordinary resolution.
        assert_eq!(
            resolve_in_root(Path::new("/"), &want).unwrap(),
            std::fs::canonicalize(&want).unwrap()
        );
        let (base, rest) = existing_ancestor(root, Path::new("/etc/up/bin/sub")).unwrap();
        assert_eq!(
            (base, rest),
            (root.join("etc/k8s"), PathBuf::from("bin/sub"))
        );
    }
}
