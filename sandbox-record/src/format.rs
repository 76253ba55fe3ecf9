//! The file format: one JSON object
//! `{"format":"sturdy-sandbox-record","version":1,"sha256":"<hex>","record":{…}}`
//! whose `sha256` is the SHA-256 of the record's canonical form (compact JSON, object keys
//! sorted, serde_json's string escapes), which is also how the record is written. Any byte
//! changed in the record or in the checksum is detected; the format and version say which
//! reader can trust it.
//!
//! Neither side builds a `serde_json::Value` of the record (a tree several times the size
//! of the file, and a record may be 1 MiB): the writer serialises the record's types, whose
//! fields are declared in sorted order, straight into its canonical form; the reader hashes
//! the record's bytes as stored and decodes them straight into a [`Record`].

use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::RecordError;
use crate::limits::MAX_RECORD_BYTES;
use crate::model::Record;

/// The `format` field of every record file.
pub const FORMAT: &str = "sturdy-sandbox-record";
/// The format version this crate writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Encodes `record` into the bytes of a record file (ending in a newline).
pub fn encode(record: &Record) -> Result<Vec<u8>, RecordError> {
    let encode_err = |source| RecordError::Encode {
        id: record.sandbox_id.clone(),
        source,
    };
    let body = serde_json::to_vec(record).map_err(encode_err)?;
    let sum = sha256_hex(&body);
    let mut out = Vec::with_capacity(body.len() + 128);
    out.extend_from_slice(b"{\"format\":\"");
    out.extend_from_slice(FORMAT.as_bytes());
    out.extend_from_slice(format!("\",\"version\":{FORMAT_VERSION},\"sha256\":\"").as_bytes());
    out.extend_from_slice(sum.as_bytes());
    out.extend_from_slice(b"\",\"record\":");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"}\n");
    if out.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge {
            id: record.sandbox_id.clone(),
            bytes: out.len(),
        });
    }
    Ok(out)
}

/// Decodes and checks the bytes of the record file at `path` (named in errors only).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Record, RecordError> {
    let corrupt = |reason: String| RecordError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(corrupt(format!(
            "{} bytes, more than the {MAX_RECORD_BYTES} a record may have",
            bytes.len()
        )));
    }
    /// The file, the record left as the bytes it was stored as.
    #[derive(Deserialize)]
    struct File<'a> {
        format: Option<Value>,
        version: Option<Value>,
        sha256: Option<Value>,
        #[serde(borrow)]
        record: Option<&'a RawValue>,
    }
    let file: File =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    if file.format.as_ref().and_then(Value::as_str) != Some(FORMAT) {
        return Err(corrupt(format!("\"format\" is not {FORMAT:?}")));
    }
    let version = file
        .version
        .as_ref()
        .and_then(Value::as_u64)
        .ok_or_else(|| corrupt("no numeric \"version\"".into()))?;
    if version == 0 {
        return Err(corrupt("\"version\" is 0".into()));
    }
    if version > u64::from(FORMAT_VERSION) {
        return Err(RecordError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
            supported: FORMAT_VERSION,
        });
    }
    let want = file
        .sha256
        .as_ref()
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt("no \"sha256\"".into()))?;
    let record = file.record.ok_or_else(|| corrupt("no \"record\"".into()))?;
    // The record is stored in its canonical form: its bytes are what the checksum covers.
    let got = sha256_hex(record.get().as_bytes());
    if got != want {
        return Err(corrupt(format!(
            "checksum mismatch: the file says sha256 {want}, its record hashes to {got}"
        )));
    }
    serde_json::from_str(record.get())
        .map_err(|e| corrupt(format!("record does not match format {version}: {e}")))
}

/// Lower-case hex SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Appends the canonical form of `v`: compact, object keys sorted by their bytes.
///
/// Written by hand rather than relying on serde_json's map ordering, which changes when
/// any crate in a build turns on `preserve_order`. The writer does not need it (its types
/// serialise sorted); the tests check with it that they do.
#[cfg(test)]
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(k, out);
                out.push(b':');
                canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => string(s, out),
        // Numbers, booleans and null print the same whatever the map ordering.
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
fn string(s: &str, out: &mut Vec<u8>) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample;
    use crate::model::Network;

    fn p() -> &'static Path {
        Path::new("/r/k8s.io/s.json")
    }

    #[test]
    fn roundtrip_and_layout() {
        let r = sample("s1");
        let bytes = encode(&r).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("{\"format\":\"sturdy-sandbox-record\",\"version\":1,\"sha256\":\""),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        assert_eq!(text.lines().count(), 1);
        assert_eq!(decode(p(), &bytes).unwrap(), r);
        // The record is stored in the canonical form the checksum covers.
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let body = &text[text.find("\"record\":").unwrap() + 9..text.len() - 2];
        assert_eq!(sha256_hex(body.as_bytes()), v["sha256"].as_str().unwrap());
    }

    /// The writer relies on the record's types declaring their fields sorted: a field added
    /// out of order fails here (and every record written with it would be corrupt).
    #[test]
    fn the_writer_serialises_in_canonical_form() {
        use crate::model::Route;
        let mut host = sample("h");
        host.network = Network::Host;
        let mut full = sample("f");
        full.truncated = Some("left out: 3 routes".into());
        if let Network::Namespace { routes, .. } = &mut full.network {
            routes.push(Route {
                destination: "fd00::/64".into(),
                gateway: None,
                interface: None,
                source: Some("fd00::5".into()),
                table: 7,
                metric: 1024,
                scope: "link".into(),
            });
        }
        for r in [sample("s"), host, full] {
            let mut want = Vec::new();
            canonical(&serde_json::to_value(&r).unwrap(), &mut want);
            assert_eq!(
                String::from_utf8(serde_json::to_vec(&r).unwrap()).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    #[test]
    fn a_record_not_stored_in_canonical_form_is_corrupt() {
        let text = String::from_utf8(encode(&sample("s1")).unwrap()).unwrap();
        let spaced = text.replacen("\"record\":{", "\"record\":{ ", 1);
        let err = decode(p(), spaced.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn host_network_roundtrip() {
        let mut r = sample("h");
        r.network = Network::Host;
        let bytes = encode(&r).unwrap();
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .contains("\"network\":{\"mode\":\"host\"}"));
        assert_eq!(decode(p(), &bytes).unwrap(), r);
    }

    #[test]
    fn canonical_sorts_keys_and_escapes() {
        let v: Value =
            serde_json::from_str(r#"{"b":[1,{"z":null,"a":"x\"\n"}],"a":true}"#).unwrap();
        let mut out = Vec::new();
        canonical(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":true,"b":[1,{"a":"x\"\n","z":null}]}"#
        );
    }

    #[test]
    fn a_changed_value_that_still_parses_is_a_checksum_mismatch() {
        let bytes = encode(&sample("s1")).unwrap();
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("198.18.0.50", "198.18.0.51");
        let err = decode(p(), text.as_bytes()).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn every_single_flipped_byte_is_detected() {
        let r = sample("s1");
        let bytes = encode(&r).unwrap();
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x20, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                match decode(p(), &b) {
                    // A flip in insignificant places (the final newline into other
                    // whitespace) leaves the same record: that is not corruption.
                    Ok(got) => assert_eq!(got, r, "byte {i} ^ {mask:#x} changed the record"),
                    Err(e) => assert!(
                        e.is_corrupt() || matches!(e, RecordError::UnsupportedVersion { .. }),
                        "byte {i}: {e}"
                    ),
                }
            }
        }
    }

    #[test]
    fn truncations_are_corrupt() {
        let bytes = encode(&sample("s1")).unwrap();
        for len in 0..bytes.len() - 1 {
            let err = decode(p(), &bytes[..len]).unwrap_err();
            assert!(err.is_corrupt(), "{len}: {err}");
        }
    }

    #[test]
    fn newer_version_is_not_called_corrupt() {
        let bytes = encode(&sample("s1")).unwrap();
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        let err = decode(p(), text.as_bytes()).unwrap_err();
        assert!(
            matches!(err, RecordError::UnsupportedVersion { version: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_format_or_missing_fields_are_corrupt() {
        for text in [
            "{}",
            "[]",
            r#"{"format":"other","version":1,"sha256":"","record":{}}"#,
            r#"{"format":"sturdy-sandbox-record","sha256":"","record":{}}"#,
            r#"{"format":"sturdy-sandbox-record","version":1,"record":{}}"#,
            r#"{"format":"sturdy-sandbox-record","version":1,"sha256":"x"}"#,
        ] {
            assert!(
                decode(p(), text.as_bytes()).unwrap_err().is_corrupt(),
                "{text}"
            );
        }
        // A correct checksum over something that is not a record is still refused.
        let mut body = Vec::new();
        canonical(&serde_json::json!({"sandbox_id": "x"}), &mut body);
        let text = format!(
            r#"{{"format":"sturdy-sandbox-record","version":1,"sha256":"{}","record":{}}}"#,
            sha256_hex(&body),
            String::from_utf8(body).unwrap()
        );
        let err = decode(p(), text.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
