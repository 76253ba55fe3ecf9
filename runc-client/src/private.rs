//! Private scratch directories for files that may hold secrets: an exec's process spec
//! (its env carries passwords and tokens) and runc's per-call log (whose errors may quote it).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A fresh directory only its owner can enter, removed with its contents on drop (so also
/// when a call fails or its future is dropped).
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// `parent/prefix-XXXXXX` from mkdtemp: an unguessable name, mode 0700, never an
    /// existing directory or a symlink someone planted.
    pub(crate) fn new(parent: &Path, prefix: &str) -> std::io::Result<PrivateDir> {
        let path = nix::unistd::mkdtemp(&parent.join(format!("{prefix}-XXXXXX")))?;
        Ok(PrivateDir { path })
    }

    /// Path of the directory.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A new 0600 file `name` holding `contents`; fails rather than reuse or follow anything.
    pub(crate) fn create_file(&self, name: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        file.write_all(contents)?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // std's remove_dir_all does not follow symlinks, even ones swapped in meanwhile.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn private_file_in_private_dir_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let dir = PrivateDir::new(parent.path(), "p").unwrap();
        assert_eq!(dir.path().parent(), Some(parent.path()));
        let path = dir.create_file("f.json", b"secret").unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        let same = dir.path().to_path_buf();
        drop(dir);
        assert!(!same.exists());
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn never_reuses_or_follows_what_is_there() {
        let parent = tempfile::tempdir().unwrap();
        let dir = PrivateDir::new(parent.path(), "p").unwrap();
        let outside = parent.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("link")).unwrap();
        assert!(dir.create_file("link", b"x").is_err());
        dir.create_file("f", b"x").unwrap();
        assert!(dir.create_file("f", b"y").is_err());
        drop(dir);
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(&outside).unwrap().nlink(), 1);
    }

    #[test]
    fn two_dirs_never_share_a_name() {
        let parent = tempfile::tempdir().unwrap();
        let a = PrivateDir::new(parent.path(), "p").unwrap();
        let b = PrivateDir::new(parent.path(), "p").unwrap();
        assert_ne!(a.path(), b.path());
    }
}
