//! Resolving a path one component at a time, as if a directory were `/`. `canonicalize`
//! can neither show each component where it lies (what [`super::executable`] must check)
//! nor take an absolute symlink target as a path under a mounted host tree (what
//! `install --host-root` needs; security review 2026-12, L19).

use std::fs::Metadata;
use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: u32 = 40;

/// Why a walk stopped.
#[derive(Debug)]
pub enum WalkError<E> {
    /// A component (where it lies) could not be examined.
    Io(PathBuf, io::Error),
    /// A component on the way (where it lies) is not a directory.
    NotADirectory(PathBuf),
    /// Too many symlinks on the way.
    Loop,
    /// The check refused a component.
    Refused(E),
}

/// Resolves `path` as if `root` were `/`, following every symlink: an absolute target
/// starts again at `root`, and `..` never leaves it. `check` sees every component the walk
/// visits, where it lies, with its own metadata (a symlink's, not its target's): `root`
/// itself, each directory and symlink on the way, and the final file; the first it refuses
/// ends the walk. Every component must exist. Returns where the file lies, and its metadata.
pub fn walk<E>(
    root: &Path,
    path: &Path,
    mut check: impl FnMut(&Path, &Metadata) -> Result<(), E>,
) -> Result<(PathBuf, Metadata), WalkError<E>> {
    let mut visit = |at: &Path| {
        let here = in_root(root, at);
        let meta = match std::fs::symlink_metadata(&here) {
            Ok(meta) => meta,
            Err(e) => return Err(WalkError::Io(here, e)),
        };
        check(&here, &meta).map_err(WalkError::Refused)?;
        Ok((here, meta))
    };
    // `at` is the path walked so far as `root` sees it; `here` is where that lies.
    let mut at = PathBuf::from("/");
    let (mut here, mut meta) = visit(&at)?;
    let mut pending = components_rev(path);
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            at.pop();
            (here, meta) = visit(&at)?;
            continue;
        }
        if !meta.is_dir() {
            return Err(WalkError::NotADirectory(here));
        }
        let next = at.join(&part);
        let (next_here, next_meta) = visit(&next)?;
        if !next_meta.file_type().is_symlink() {
            (at, here, meta) = (next, next_here, next_meta);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(WalkError::Loop);
        }
        let target = match std::fs::read_link(&next_here) {
            Ok(target) => target,
            Err(e) => return Err(WalkError::Io(next_here, e)),
        };
        if target.is_absolute() {
            at = PathBuf::from("/");
            (here, meta) = visit(&at)?;
        }
        pending.extend(components_rev(&target));
    }
    Ok((here, meta))
}

/// Where `p` lies when `root` stands for `/` (a relative `p` is taken from `/`).
fn in_root(root: &Path, p: &Path) -> PathBuf {
    let rel: PathBuf = p
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(rel)
}

/// The normal and `..` components of `path`, last first (a stack to pop from).
fn components_rev(path: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    parts.reverse();
    parts
}
