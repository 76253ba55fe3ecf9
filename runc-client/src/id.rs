//! Container ids the client is willing to hand to a runtime.

/// Longest id accepted, as in containerd's identifiers.
pub const MAX_ID_LEN: usize = 76;

/// Why an id was refused by [`validate_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("longer than {MAX_ID_LEN} characters")]
    TooLong,
    /// The id is not alphanumeric runs joined by single '.', '_' or '-'.
    #[error("must be letters and digits joined by single '.', '_' or '-'")]
    Format,
}

/// Check `id` against containerd's identifier rules: 1 to 76 characters matching
/// `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`.
///
/// Such an id can never be read as a flag (`--help`) nor climb out of a state
/// directory (`../x`), whatever the runtime does with it.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    // Every separator must sit between two alphanumerics.
    let mut after_separator = true;
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => after_separator = false,
            b'.' | b'_' | b'-' if !after_separator => after_separator = true,
            _ => return Err(IdError::Format),
        }
    }
    if after_separator {
        return Err(IdError::Format);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_identifiers() {
        let longest = "a".repeat(MAX_ID_LEN);
        for id in [
            "a",
            "c1",
            "0123abcdef",
            "my-container_1.2",
            "A-b_C.d",
            longest.as_str(),
        ] {
            assert_eq!(validate_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(&"a".repeat(77)), Err(IdError::TooLong));
        for id in [
            "--help", "-a", "a-", ".a", "a.", "_a", "a__b", "a.-b", "..", "../x", "a/b", "a b",
            "a+b", "a:b", "é", "a\0b", "a\nb",
        ] {
            assert_eq!(validate_id(id), Err(IdError::Format), "{id:?}");
        }
    }
}
