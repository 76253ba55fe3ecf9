use std::io::Write;
use std::os::fd::AsRawFd;

use super::*;

fn fixture(version: u32) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/handover/testdata")
        .join(format!("handover-v{version}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(2)).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn every_format_this_binary_reads_has_a_fixture_that_decodes() {
    assert_eq!(READS.last(), Some(&WRITES), "a binary reads what it writes");
    for v in READS {
        let doc = decode(&fixture(*v)).unwrap_or_else(|e| panic!("format {v}: {e}"));
        assert_eq!(doc.version, WRITES, "format {v} is converted to the newest");
    }
}

#[test]
fn the_format_2_fixture_is_the_sample_field_for_field() {
    // The fixture is frozen; the sample is what `--handover-sample` prints. Both must name
    // every field, so a field added to format 2 without a version bump fails here.
    assert_eq!(decode(&fixture(2)).unwrap(), v2::sample());
    let doc = v2::sample();
    assert_eq!(decode(&encode(&doc).unwrap()).unwrap(), doc);
}

#[test]
fn versions_this_binary_does_not_read_are_refused() {
    for version in [
        serde_json::json!(0),
        serde_json::json!(1),
        serde_json::json!(99),
    ] {
        let bytes = with(|v| v["version"] = version.clone());
        let err = decode(&bytes).unwrap_err();
        assert!(
            matches!(err, HandoverError::Unsupported { .. }),
            "version {version}: {err}"
        );
        assert!(err.to_string().contains("reads (2)"), "{err}");
    }
    for bad in [
        with(|v| {
            v.as_object_mut().unwrap().remove("version");
        }),
        with(|v| v["version"] = serde_json::json!("2")),
        b"not json".to_vec(),
    ] {
        assert!(matches!(decode(&bad), Err(HandoverError::Syntax(_))));
    }
}

#[test]
fn a_field_the_reader_does_not_know_is_refused_not_dropped() {
    let top = with(|v| v["pending_signals"] = serde_json::json!([9]));
    assert!(decode(&top)
        .unwrap_err()
        .to_string()
        .contains("pending_signals"));
    let deep = with(|v| v["containers"][0]["init"]["stdio"]["stdout"]["extra_fd"] = 30.into());
    assert!(decode(&deep).unwrap_err().to_string().contains("extra_fd"));
}

#[test]
fn inconsistent_documents_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("stdio", with(|v| v["listener"] = 2.into())),
        (
            "named twice",
            with(|v| v["connections"][1]["fd"] = 5.into()),
        ),
        (
            "named twice",
            with(|v| v["containers"][0]["init"]["stdio"]["stdout"]["sink"] = 3.into()),
        ),
        (
            "has no spec",
            with(|v| v["containers"][0]["execs"][0]["exec_spec"] = serde_json::Value::Null),
        ),
        (
            "not handed over",
            with(|v| v["containers"][0]["init"]["stdio"]["terminal"] = true.into()),
        ),
        (
            "build-id is not hex",
            with(|v| v["upgrade"]["target_build_id"] = "xyz".into()),
        ),
        (
            "listed twice",
            with(|v| {
                let c = v["containers"][0].clone();
                v["containers"].as_array_mut().unwrap().push(c);
            }),
        ),
        (
            "container id",
            with(|v| v["containers"][0]["id"] = "../x".into()),
        ),
        (
            "exec id",
            with(|v| v["containers"][0]["execs"][0]["exec_id"] = "".into()),
        ),
        (
            "plain absolute path",
            with(|v| v["containers"][0]["bundle"] = "/run/../etc".into()),
        ),
        (
            "with exit",
            with(|v| v["containers"][0]["init"]["state"] = "stopped".into()),
        ),
        (
            "with exit",
            with(|v| v["containers"][0]["execs"][1]["exit"] = serde_json::Value::Null),
        ),
        (
            "pid 0",
            with(|v| v["containers"][0]["init"]["pid"] = 0.into()),
        ),
        (
            "without an fd",
            with(|v| {
                v["containers"][0]["init"]["stdio"]["stdout"]["pending"] = serde_json::Value::Null
            }),
        ),
        (
            "not one whole request frame",
            with(|v| v["connections"][0]["pending"][0] = "00000009000000070100abcd".into()),
        ),
        (
            "not one whole request frame",
            with(|v| v["connections"][0]["pending"][0] = "00000002000000070200abcd".into()),
        ),
        (
            "shorter than a frame header",
            with(|v| v["connections"][0]["pending"][0] = "0000".into()),
        ),
        (
            "not hex",
            with(|v| v["connections"][0]["pending"][0] = "zz".into()),
        ),
        (
            "at most",
            with(|v| {
                let c = v["connections"][0].clone();
                let many: Vec<_> = (0..=v2::Limits::CONNECTIONS)
                    .map(|i| {
                        let mut c = c.clone();
                        c["fd"] = (100 + i).into();
                        c
                    })
                    .collect();
                v["connections"] = many.into();
            }),
        ),
    ];
    for (why, bytes) in cases {
        let err = decode(&bytes).unwrap_err();
        assert!(
            matches!(err, HandoverError::Invalid { .. }) && err.to_string().contains(why),
            "expected {why:?}, got {err}"
        );
    }
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    let big = vec![b' '; MAX_DOCUMENT + 1];
    assert!(matches!(decode(&big), Err(HandoverError::TooLarge { .. })));
}

#[test]
fn the_sealed_memfd_carries_the_document_and_cannot_change() {
    let bytes = encode(&v2::sample()).unwrap();
    let fd = memfd::write_sealed(&bytes).unwrap();
    let file = std::fs::File::from(fd);
    assert_eq!(memfd::read_sealed(&file).unwrap(), bytes);
    assert_eq!(
        decode(&memfd::read_sealed(&file).unwrap()).unwrap(),
        v2::sample()
    );
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // Reopening for write is refused outright (EPERM) on a write-sealed memfd.
    if let Ok(w) = writer.as_mut() {
        assert!(w.write_all(b"x").is_err(), "wrote into a sealed memfd");
    }
    assert!(file.set_len(1).is_err(), "shrank a sealed memfd");
}

#[test]
fn an_unsealed_fd_is_refused() {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&fixture(2)).unwrap();
    assert!(matches!(
        memfd::read_sealed(&f),
        Err(HandoverError::Unsealed { .. })
    ));
    assert_eq!(memfd::read_bounded(&f, "file").unwrap(), fixture(2));
}
