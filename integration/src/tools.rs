//! Upstream programs no package registry here serves (containerd 1.7 and 2.1 to 2.4 with
//! their Go shims, runc 1.3 and 1.4, critest, the critest images), taken from
//! `../shared/tools` and unpacked once into a cache verified against the directory's
//! `SHA256SUMS`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::containerd::{target_dir, workspace_dir};

/// Overrides where the tool archives are found (default `<workspace>/../shared/tools`).
pub const TOOLS_ENV: &str = "STURDY_TOOLS";
/// Overrides where archives are unpacked (default `<target>/tools-cache`).
pub const CACHE_ENV: &str = "STURDY_TOOLS_CACHE";
/// The file listing every archive's SHA-256.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// Archive of critest and crictl of the default release
/// ([`crate::critest::CritestVersion::cri_tools`] names each release's).
pub const CRI_TOOLS: &str = "cri-tools-1.26.1";
/// Archive of the images the default critest release pulls, with its `push.list`.
pub const CRITEST_IMAGES: &str = "critest-images-1.26.1";

/// Why a tool could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    /// The tools directory or one of its archives does not exist on this host.
    #[error("{archive} is not in {dir} (a checkout outside the sturdy workspace has no ../shared/tools; set {TOOLS_ENV} to point elsewhere)")]
    Missing {
        /// Where we looked.
        dir: PathBuf,
        /// The archive we wanted.
        archive: String,
    },
    /// `SHA256SUMS` has no line for the archive.
    #[error("{sums} lists no checksum for {archive}")]
    NoChecksum {
        /// The sums file.
        sums: PathBuf,
        /// The archive.
        archive: String,
    },
    /// The archive's content does not match `SHA256SUMS`.
    #[error("{archive}: sha256 {actual}, but {SUMS_FILE} says {expected}")]
    Checksum {
        /// The archive path.
        archive: PathBuf,
        /// What SHA256SUMS says.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// Reading, locking or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `tar` failed to unpack the archive.
    #[error("unpacking {archive}: tar {status}: {stderr}")]
    Unpack {
        /// The archive path.
        archive: PathBuf,
        /// tar's exit status.
        status: String,
        /// tar's stderr.
        stderr: String,
    },
}

impl ToolsError {
    /// True when the tools are simply not on this host (callers skip rather than fail).
    pub fn is_missing(&self) -> bool {
        matches!(self, ToolsError::Missing { .. })
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ToolsError {
    let context = context.into();
    move |source| ToolsError::Io { context, source }
}

/// Directory holding the archives: `$STURDY_TOOLS`, else `shared/tools` next to the workspace.
pub fn tools_dir() -> PathBuf {
    if let Some(p) = std::env::var_os(TOOLS_ENV) {
        return PathBuf::from(p);
    }
    let ws = workspace_dir();
    ws.parent().unwrap_or(&ws).join("shared").join("tools")
}

/// Directory archives are unpacked into: `$STURDY_TOOLS_CACHE`, else `<target>/tools-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(p);
    }
    target_dir().join("tools-cache")
}

/// True if `name`'s archive is present (not verified).
pub fn available(name: &str) -> bool {
    tools_dir().join(format!("{name}.tar.xz")).is_file()
}

/// The unpacked directory of archive `name` (e.g. `containerd-1.7.29`), unpacking it first if
/// the cache does not hold this exact archive yet.
///
/// The cache is keyed by the checksum `SHA256SUMS` lists, so a replaced archive is unpacked
/// again; the archive itself is hashed only when it is unpacked. Concurrent callers (parallel
/// tests, scripts) serialise on an flock, and an archive is unpacked into a scratch dir and
/// renamed into place, so nobody ever sees half an archive.
pub fn unpacked(name: &str) -> Result<PathBuf, ToolsError> {
    unpack_into(&tools_dir(), &cache_dir(), name)
}

fn unpack_into(dir: &Path, cache: &Path, name: &str) -> Result<PathBuf, ToolsError> {
    let archive = dir.join(format!("{name}.tar.xz"));
    if !archive.is_file() {
        return Err(ToolsError::Missing {
            dir: dir.to_path_buf(),
            archive: format!("{name}.tar.xz"),
        });
    }
    let expected = expected_sum(dir, &format!("{name}.tar.xz"))?;
    let target = cache.join(name);
    let stamp = cache.join(format!("{name}.sha256"));
    let fresh = || std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == expected);
    if fresh() && target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(cache).map_err(io(format!("creating {}", cache.display())))?;
    let _lock = lock(&cache.join(".lock"))?;
    if fresh() && target.is_dir() {
        return Ok(target);
    }
    let actual = sha256_file(&archive)?;
    if actual != expected {
        return Err(ToolsError::Checksum {
            archive,
            expected,
            actual,
        });
    }
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(cache)
        .map_err(io(format!("creating a scratch dir in {}", cache.display())))?;
    let out = Command::new("tar")
        .arg("-xJf")
        .arg(&archive)
        .arg("-C")
        .arg(scratch.path())
        .stdin(Stdio::null())
        .output()
        .map_err(io("running tar (is it installed?)"))?;
    if !out.status.success() {
        return Err(ToolsError::Unpack {
            archive,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // Archives hold one top-level directory named like the archive.
    let unpacked = scratch.path().join(name);
    if !unpacked.is_dir() {
        return Err(ToolsError::Unpack {
            archive,
            status: "ok".into(),
            stderr: format!("no top-level directory {name}/ in it"),
        });
    }
    let _ = std::fs::remove_file(&stamp);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(format!("removing {}", target.display())))?;
    }
    std::fs::rename(&unpacked, &target)
        .map_err(io(format!("renaming into {}", target.display())))?;
    std::fs::write(&stamp, format!("{expected}\n"))
        .map_err(io(format!("writing {}", stamp.display())))?;
    Ok(target)
}

/// A program inside an unpacked archive, e.g. `tool("cri-tools-1.26.1", "critest")`.
pub fn tool(archive: &str, program: &str) -> Result<PathBuf, ToolsError> {
    let path = unpacked(archive)?.join(program);
    if !path.is_file() {
        return Err(ToolsError::Io {
            context: format!("{} in the unpacked {archive}", path.display()),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    Ok(path)
}

fn expected_sum(dir: &Path, file: &str) -> Result<String, ToolsError> {
    let sums = dir.join(SUMS_FILE);
    let text = std::fs::read_to_string(&sums).map_err(io(format!("reading {}", sums.display())))?;
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        // sha256sum marks binary mode with a '*' before the name.
        .find(|(_, n)| n.trim().trim_start_matches('*') == file)
        .map(|(sum, _)| sum.trim().to_lowercase())
        .ok_or(ToolsError::NoChecksum {
            sums,
            archive: file.into(),
        })
}

fn sha256_file(path: &Path) -> Result<String, ToolsError> {
    let mut f = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn lock(path: &Path) -> Result<Flock<File>, ToolsError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| ToolsError::Io {
        context: format!("locking {}", path.display()),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lines_are_matched_by_exact_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SUMS_FILE),
            "aa  containerd-1.7.29.tar.xz\nBB *containerd-2.1.5.tar.xz\n",
        )
        .unwrap();
        assert_eq!(
            expected_sum(dir.path(), "containerd-1.7.29.tar.xz").unwrap(),
            "aa"
        );
        assert_eq!(
            expected_sum(dir.path(), "containerd-2.1.5.tar.xz").unwrap(),
            "bb"
        );
        assert!(matches!(
            expected_sum(dir.path(), "containerd-1.7.tar.xz"),
            Err(ToolsError::NoChecksum { .. })
        ));
    }

    /// Builds `<tools>/demo-1.tar.xz` holding `demo-1/hello` and its SHA256SUMS line.
    fn demo_archive(tools: &Path, content: &str) -> String {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("demo-1")).unwrap();
        std::fs::write(src.path().join("demo-1/hello"), content).unwrap();
        let archive = tools.join("demo-1.tar.xz");
        let st = Command::new("tar")
            .arg("-cJf")
            .arg(&archive)
            .arg("-C")
            .arg(src.path())
            .arg("demo-1")
            .status()
            .unwrap();
        assert!(st.success());
        let sum = sha256_file(&archive).unwrap();
        std::fs::write(tools.join(SUMS_FILE), format!("{sum}  demo-1.tar.xz\n")).unwrap();
        sum
    }

    #[test]
    fn archives_are_verified_unpacked_once_and_refreshed_when_replaced() {
        let tools = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let missing = unpack_into(tools.path(), cache.path(), "demo-1").unwrap_err();
        assert!(missing.is_missing(), "{missing}");

        demo_archive(tools.path(), "one");
        let dir = unpack_into(tools.path(), cache.path(), "demo-1").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("hello")).unwrap(), "one");
        // Cached: a marker left in the unpacked dir survives the next call.
        std::fs::write(dir.join("marker"), "").unwrap();
        unpack_into(tools.path(), cache.path(), "demo-1").unwrap();
        assert!(dir.join("marker").exists(), "unpacked twice");

        // A replaced archive (new checksum) is unpacked again.
        demo_archive(tools.path(), "two");
        let dir = unpack_into(tools.path(), cache.path(), "demo-1").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("hello")).unwrap(), "two");
        assert!(!dir.join("marker").exists());

        // An archive that does not match SHA256SUMS is refused, and the cache is not touched.
        std::fs::write(
            tools.path().join(SUMS_FILE),
            format!("{}  demo-1.tar.xz\n", "0".repeat(64)),
        )
        .unwrap();
        let err = unpack_into(tools.path(), cache.path(), "demo-1").unwrap_err();
        assert!(matches!(err, ToolsError::Checksum { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join("hello")).unwrap(), "two");
    }
}
