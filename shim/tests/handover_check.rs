//! What `sturdyctl upgrade-shims` asks of a shim binary before any shim may exec into it:
//! `-v` names the build and the handover formats, `--check-handover` decodes a document
//! from a file or a sealed memfd and refuses anything else, `--handover-sample` writes one
//! the same binary accepts. Runs the real binary; no containerd needed.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;

use common::{run, run_with_fd, SHIM};
use sturdy_shim::handover;

fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/handover/testdata/handover-v2.json"
    ))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_names_the_build_id_and_the_handover_formats() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["-v"], b"", &[]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let id = build_id::of_path(Path::new(SHIM))
        .unwrap()
        .expect("the shim is linked with a build-id");
    assert!(stdout.contains(&format!("  Build id: {id}\n")), "{stdout}");
    assert!(
        stdout.contains("  Handover: writes 2, reads 2\n"),
        "{stdout}"
    );
}

#[test]
fn a_fixture_file_is_checked_and_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["--check-handover", fixture().to_str().unwrap()],
        b"",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["version"], 2);
    assert_eq!(summary["containers"], 1);
    assert_eq!(summary["processes"], 3);
    assert_eq!(summary["fds"], 16);
}

#[test]
fn a_sealed_memfd_is_accepted_an_unsealed_fd_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture()).unwrap();
    let sealed = handover::memfd::write_sealed(&bytes).unwrap();
    let out = run_with_fd(
        dir.path(),
        &["-check-handover", "7"],
        &[],
        sealed.as_raw_fd(),
        7,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let plain = std::fs::File::open(fixture()).unwrap();
    let out = run_with_fd(
        dir.path(),
        &["--check-handover", "7"],
        &[],
        plain.as_raw_fd(),
        7,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not sealed"),
        "{}",
        text(&out.stderr)
    );

    let out = run(dir.path(), &["--check-handover", "9"], b"", &[]);
    assert_eq!(out.status.code(), Some(1), "an fd it does not have");
    let out = run(dir.path(), &["--check-handover"], b"", &[]);
    assert_eq!(out.status.code(), Some(2), "no argument");
}

#[test]
fn unknown_formats_links_and_non_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("v3.json");
    let doc = std::fs::read_to_string(fixture()).unwrap();
    std::fs::write(
        &newer,
        doc.replacen("\"version\": 2,", "\"version\": 3,", 1),
    )
    .unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(fixture(), &link).unwrap();
    for (path, why) in [
        (
            newer.as_path(),
            "format version 3 is not one this binary reads",
        ),
        (link.as_path(), "open"),
        (dir.path(), "not a regular file"),
    ] {
        let out = run(
            dir.path(),
            &["--check-handover", path.to_str().unwrap()],
            b"",
            &[],
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} was accepted",
            path.display()
        );
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
}

#[test]
fn the_sample_is_accepted_by_the_same_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--handover-sample"], b"", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = dir.path().join("sample.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let out = run(
        dir.path(),
        &["--check-handover", file.to_str().unwrap()],
        b"",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}
