//! What a shim binary's `-v` says about itself: version, build-id and the handover formats
//! it writes and reads. A binary from before handover existed names no formats: it can
//! neither be upgraded in place nor be upgraded to.

/// The parsed `-v` output.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct VersionInfo {
    /// `Version:`.
    pub version: String,
    /// `Revision:`.
    pub revision: Option<String>,
    /// `Build id:` when it is hex (a binary linked without one says so in words).
    pub build_id: Option<String>,
    /// The handover format it writes, if it knows handover.
    pub writes: Option<u32>,
    /// The formats it reads.
    pub reads: Vec<u32>,
}

/// Parses `-v` output; `None` unless it names a version.
pub fn parse(text: &str) -> Option<VersionInfo> {
    let mut v = VersionInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Version" => v.version = value.to_string(),
            "Revision" => v.revision = Some(value.to_string()),
            "Build id" => {
                v.build_id = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| value.to_ascii_lowercase())
            }
            "Handover" => {
                // `writes 1, reads 1,2`
                let (w, r) = value.split_once(',')?;
                v.writes = Some(w.trim().strip_prefix("writes ")?.parse().ok()?);
                v.reads = r
                    .trim()
                    .strip_prefix("reads ")?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .ok()?;
            }
            _ => {}
        }
    }
    (!v.version.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handover_aware_binary_and_an_older_one() {
        let new = "containerd-shim-sturdy-v2:\n  Version:  0.2.0\n  Revision: abc\n  \
                   Build id: 5B04CE\n  Handover: writes 2, reads 1,2\n  Runtime:  x\n";
        let v = parse(new).unwrap();
        assert_eq!(v.version, "0.2.0");
        assert_eq!(v.build_id.as_deref(), Some("5b04ce"));
        assert_eq!((v.writes, v.reads), (Some(2), vec![1, 2]));
        let old = "containerd-shim-sturdy-v2:\n  Version:  0.1.0\n  Revision: d71adf5\n";
        let v = parse(old).unwrap();
        assert_eq!((v.writes, v.reads.len(), v.build_id), (None, 0, None));
        let words = "  Version: 1\n  Build id: none (linked without --build-id)\n";
        assert_eq!(parse(words).unwrap().build_id, None);
        assert_eq!(parse("garbage\n"), None);
        assert_eq!(parse("  Version: 1\n  Handover: writes x, reads 1\n"), None);
    }
}
