//! Shortening overlay options that do not fit in one page: every layer path is made
//! relative to the layers' longest common parent directory, which the mount helper
//! changes into before mounting.

use std::path::{Component, Path, PathBuf};

/// Overlay options rewritten relative to `dir`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Compacted {
    /// The common parent directory, to chdir into before mounting.
    pub dir: PathBuf,
    /// The option words with lowerdir/upperdir/workdir made relative to `dir`.
    pub words: Vec<String>,
}

const LOWER: &str = "lowerdir=";
const SINGLE: [&str; 2] = ["upperdir=", "workdir="];

/// Rewrites overlay data words relative to the layers' common parent, or None when there
/// is nothing to gain (no layer paths, a relative one, or only `/` in common).
///
/// When the upper and work directories share no parent with the lower layers (idmapped
/// lower layers are mounted in the bundle, the upper layer stays in the snapshotter),
/// only the lower layers are made relative: overlayfs resolves each path on its own, and
/// the lower list is what grows with the image.
pub(super) fn compact(words: &[String]) -> Option<Compacted> {
    let mut lowers: Vec<&str> = Vec::new();
    let mut singles: Vec<&str> = Vec::new();
    for w in words {
        if let Some(list) = w.strip_prefix(LOWER) {
            // Empty entries ("a::b", data-only layers) are syntax, not paths.
            lowers.extend(split_layers(list).into_iter().filter(|p| !p.is_empty()));
        } else if let Some(p) = SINGLE.iter().find_map(|k| w.strip_prefix(k)) {
            singles.push(p);
        }
    }
    let all: Vec<&str> = lowers.iter().chain(&singles).copied().collect();
    if all.is_empty() || all.iter().any(|p| !p.starts_with('/')) {
        return None;
    }
    let everything = common_parent(&all).and_then(|dir| relative_to(words, dir, true));
    let lowers_only = common_parent(&lowers).and_then(|dir| relative_to(words, dir, false));
    // Whichever is shorter: the lowers' own parent is deeper when the upper layer only
    // shares a distant ancestor with them.
    [everything, lowers_only]
        .into_iter()
        .flatten()
        .min_by_key(|c| c.words.iter().map(String::len).sum::<usize>())
}

/// The words with the lower layers (and, if `singles`, upperdir/workdir) relative to `dir`.
fn relative_to(words: &[String], dir: PathBuf, singles: bool) -> Option<Compacted> {
    let relative = |p: &str| -> Option<String> {
        Path::new(p)
            .strip_prefix(&dir)
            .ok()
            .and_then(|r| r.to_str())
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
    };
    let mut out = Vec::with_capacity(words.len());
    for w in words {
        if let Some(list) = w.strip_prefix(LOWER) {
            let layers = split_layers(list)
                .into_iter()
                .map(|p| {
                    if p.is_empty() {
                        Some(String::new())
                    } else {
                        relative(p)
                    }
                })
                .collect::<Option<Vec<_>>>()?;
            out.push(format!("{LOWER}{}", layers.join(":")));
        } else if let Some(k) = SINGLE.iter().find(|k| singles && w.starts_with(*k)) {
            out.push(format!("{k}{}", relative(&w[k.len()..])?));
        } else {
            out.push(w.clone());
        }
    }
    Some(Compacted { dir, words: out })
}

/// Splits a lowerdir list on the colons overlayfs treats as separators (`\:` is a colon
/// inside a path).
pub(super) fn split_layers(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, b) in list.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b':' => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&list[start..]);
    out
}

/// Longest directory that is a proper ancestor of every path, unless that is `/`.
pub(super) fn common_parent(paths: &[&str]) -> Option<PathBuf> {
    let parents: Vec<Vec<Component>> = paths
        .iter()
        .map(|p| {
            let mut c: Vec<Component> = Path::new(p).components().collect();
            c.pop();
            c
        })
        .collect();
    let first = parents.first()?;
    let mut len = first.len();
    for p in &parents[1..] {
        len = len.min(first.iter().zip(p).take_while(|(a, b)| a == b).count());
    }
    let dir: PathBuf = first[..len].iter().collect();
    (dir.components().count() > 1).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn layers_become_relative_to_their_common_parent() {
        let got = compact(&words(&[
            "index=off",
            "lowerdir=/var/lib/snap/3/fs:/var/lib/snap/2/fs:/var/lib/snap/1/fs",
            "upperdir=/var/lib/snap/4/fs",
            "workdir=/var/lib/snap/4/work",
        ]))
        .unwrap();
        assert_eq!(got.dir, PathBuf::from("/var/lib/snap"));
        assert_eq!(
            got.words,
            words(&[
                "index=off",
                "lowerdir=3/fs:2/fs:1/fs",
                "upperdir=4/fs",
                "workdir=4/work",
            ])
        );
    }

    #[test]
    fn the_common_parent_is_a_whole_directory_not_a_string_prefix() {
        let got = compact(&words(&["lowerdir=/data/snap10/fs:/data/snap1/fs"])).unwrap();
        assert_eq!(got.dir, PathBuf::from("/data"));
        assert_eq!(got.words, words(&["lowerdir=snap10/fs:snap1/fs"]));
        // A single layer still keeps a non-empty relative name.
        let got = compact(&words(&["lowerdir=/a/b/c"])).unwrap();
        assert_eq!(got.words, words(&["lowerdir=c"]));
    }

    #[test]
    fn escaped_colons_and_data_only_separators_survive() {
        assert_eq!(split_layers("/a/x\\:y:/a/z"), vec!["/a/x\\:y", "/a/z"]);
        let got = compact(&words(&["lowerdir=/s/a/fs::/s/b/fs"])).unwrap();
        assert_eq!(got.words, words(&["lowerdir=a/fs::b/fs"]));
    }

    #[test]
    fn lower_layers_alone_when_upper_lives_elsewhere() {
        let got = compact(&words(&[
            "lowerdir=/run/b/idmap/0/3/fs:/run/b/idmap/0/2/fs",
            "upperdir=/var/snap/4/fs",
            "workdir=/var/snap/4/work",
        ]))
        .unwrap();
        assert_eq!(got.dir, PathBuf::from("/run/b/idmap/0"));
        assert_eq!(
            got.words,
            words(&[
                "lowerdir=3/fs:2/fs",
                "upperdir=/var/snap/4/fs",
                "workdir=/var/snap/4/work",
            ])
        );
    }

    #[test]
    fn the_shorter_of_the_two_is_taken() {
        let got = compact(&words(&[
            "lowerdir=/t/bundle/idmap/0/3/fs:/t/bundle/idmap/0/2/fs",
            "upperdir=/t/snap/4/fs",
        ]))
        .unwrap();
        assert_eq!(got.dir, PathBuf::from("/t/bundle/idmap/0"));
        assert_eq!(
            got.words,
            words(&["lowerdir=3/fs:2/fs", "upperdir=/t/snap/4/fs"])
        );
    }

    #[test]
    fn nothing_to_gain_is_none() {
        assert_eq!(compact(&words(&["lowerdir=/a:/b"])), None);
        assert_eq!(compact(&words(&["lowerdir=rel/a:/x/b"])), None);
        assert_eq!(compact(&words(&["index=off"])), None);
    }
}
