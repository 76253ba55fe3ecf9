//! Checks on what containerd hands us before it names a file or reaches runc.
//!
//! Container and exec ids become file names in the bundle and arguments of runc, so they
//! follow containerd's own identifier rules; signals are plain numbers 0..=64.

use crate::error::{Error, Result};

/// Longest identifier containerd accepts.
pub const MAX_ID_LEN: usize = 76;
/// Highest signal number Linux knows (SIGRTMAX).
pub const MAX_SIGNAL: u32 = 64;

/// Accepts containerd identifiers: alphanumeric runs joined by single `.`, `_` or `-`.
pub fn validate(kind: &'static str, id: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "{kind} id {id:?} {why} (ids are 1-{MAX_ID_LEN} characters of [A-Za-z0-9], joined by single '.', '_' or '-')"
        )))
    };
    if id.is_empty() {
        return bad("is empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("is too long");
    }
    let mut after_separator = true;
    for c in id.chars() {
        if c.is_ascii_alphanumeric() {
            after_separator = false;
        } else if matches!(c, '.' | '_' | '-') {
            if after_separator {
                return bad("has a separator where a letter or digit must be");
            }
            after_separator = true;
        } else {
            return bad("has a character outside [A-Za-z0-9._-]");
        }
    }
    if after_separator {
        return bad("ends with a separator");
    }
    Ok(())
}

/// Accepts signal numbers 0 (existence check) through 64 (SIGRTMAX).
pub fn signal(sig: u32) -> Result<i32> {
    if sig > MAX_SIGNAL {
        return Err(Error::InvalidArgument(format!(
            "signal {sig} is out of range 0..={MAX_SIGNAL}"
        )));
    }
    Ok(sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_identifiers() {
        for ok in ["a", "c1", "abc.def_g-h", "A9", &"x".repeat(76), "init"] {
            assert!(validate("exec", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../../../../tmp/x",
            "--help",
            "-x",
            "a..b",
            "a/b",
            "a b",
            "a.",
            ".a",
            "é",
            &"x".repeat(77),
        ] {
            let err = validate("exec", bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(signal(0).unwrap(), 0);
        assert_eq!(signal(40).unwrap(), 40);
        assert_eq!(signal(64).unwrap(), 64);
        assert!(signal(65).is_err());
        assert!(signal(u32::MAX).is_err());
    }
}
