//! Stdio URIs: containerd passes `binary:///path?key=value` (a logging binary) or
//! `file:///path` (a log file) as a process's stdout instead of a FIFO path, and the same
//! string as its stderr. The URI is read the way Go's `net/url` reads it, since that is
//! what containerd's clients wrote it for: the scheme is case-insensitive, the path and the
//! query are percent-decoded, `+` in the query is a space, and a query pair that does not
//! decode is skipped.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a process's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// containerd's FIFOs: a plain path (or none).
    Fifo,
    /// A logging binary and the arguments made of the query, each key followed by its
    /// first value (`?debug` gives `debug` and an empty argument, as in the Go shim).
    /// Keys keep their order in the URI (the Go shim's order is random, a map's).
    Binary {
        /// Absolute path of the binary.
        path: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A file both output streams are appended to.
    File(PathBuf),
}

/// The scheme of `s` as Go's `url.Parse` finds it (letters, then letters, digits, `+`,
/// `-`, `.`, up to the first `:`), lower-cased; None for a plain path.
pub fn scheme(s: &str) -> Option<String> {
    let colon = s.find(':')?;
    let name = &s[..colon];
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| name.to_ascii_lowercase())
}

/// Reads the stdout path containerd passed for process `id`.
pub fn parse(id: &str, stdout: &str) -> Result<Target> {
    let invalid = |why: &str| Error::InvalidArgument(format!("{id}: stdio {stdout:?}: {why}"));
    let Some(scheme) = scheme(stdout) else {
        return Ok(Target::Fifo);
    };
    let rest = &stdout[scheme.len() + 1..];
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    // `//authority/path`: the authority (a host) means nothing here and is dropped.
    let raw_path = match rest.strip_prefix("//") {
        Some(after) => after.find('/').map_or("", |i| &after[i..]),
        None if rest.starts_with('/') => rest,
        // An opaque URI (`binary:name`) has no path.
        None => "",
    };
    let path = unescape(raw_path, false).ok_or_else(|| invalid("bad %-escape in the path"))?;
    if path.is_empty() {
        return Err(invalid("no absolute path"));
    }
    let path = PathBuf::from(path);
    match scheme.as_str() {
        "binary" => Ok(Target::Binary {
            path,
            args: query_args(query),
        }),
        "file" => Ok(Target::File(path)),
        other => Err(invalid(&format!(
            "unknown scheme {other:?} (binary:// and file:// are supported)"
        ))),
    }
}

/// The arguments a logging binary gets from `query`: each key, then its first value.
fn query_args(query: &str) -> Vec<String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in query.split('&') {
        // Go refuses `;` as a separator and drops such pairs.
        if part.is_empty() || part.contains(';') {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (Some(k), Some(v)) = (unescape(k, true), unescape(v, true)) else {
            continue;
        };
        if !pairs.iter().any(|(known, _)| *known == k) {
            pairs.push((k, v));
        }
    }
    pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()
}

/// Percent-decodes `s` (and `+` as a space in a query); None for a bad escape or bytes
/// that are not UTF-8.
fn unescape(s: &str, query: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(path: &str, args: &[&str]) -> Target {
        Target::Binary {
            path: path.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn plain_paths_are_fifos() {
        for s in [
            "",
            "/run/containerd/fifo/1/a-stdout",
            "relative",
            "/x:y",
            "a b:c",
        ] {
            assert_eq!(parse("c", s).unwrap(), Target::Fifo, "{s:?}");
        }
    }

    #[test]
    fn binary_uris() {
        assert_eq!(
            parse("c", "binary:///usr/bin/logger").unwrap(),
            binary("/usr/bin/logger", &[])
        );
        assert_eq!(
            parse(
                "c",
                "BINARY:///bin/l?dir=/var/log&id=a+b%2Fc&debug&dir=ignored#frag"
            )
            .unwrap(),
            binary("/bin/l", &["dir", "/var/log", "id", "a b/c", "debug", ""])
        );
        assert_eq!(
            parse("c", "binary://host/my%20logger?x=1;y=2&z=%zz&k=v").unwrap(),
            binary("/my logger", &["k", "v"])
        );
        assert_eq!(
            parse("c", "binary:/bin/l?a=1").unwrap(),
            binary("/bin/l", &["a", "1"])
        );
    }

    #[test]
    fn file_uris() {
        assert_eq!(
            parse("c", "file:///var/log/c.log").unwrap(),
            Target::File("/var/log/c.log".into())
        );
        assert_eq!(
            parse("c", "file:///var/log/a%23b?ignored").unwrap(),
            Target::File("/var/log/a#b".into())
        );
    }

    #[test]
    fn refused() {
        for s in [
            "binary://",
            "binary:relative",
            "file://host",
            "fifo:///x",
            "http://example.com/x",
            "file:///bad%2",
        ] {
            let err = parse("c", s).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{s:?}: {err}");
            assert!(err.to_string().contains(s), "{err}");
        }
    }
}
