use std::io::Write;

use super::*;

/// A minimal little-endian ELF64 file: header, one PT_NOTE program header, its notes.
fn elf64(notes: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&1u16.to_le_bytes());
    let mut ph = vec![0u8; 56];
    ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
    ph[8..16].copy_from_slice(&120u64.to_le_bytes());
    ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    f.extend_from_slice(&ph);
    f.extend_from_slice(notes);
    f
}

fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&kind.to_le_bytes());
    n.extend_from_slice(name);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

#[test]
fn the_gnu_note_is_found_after_other_notes() {
    let mut notes = note(b"GNU\0", 1, &[0; 16]);
    notes.extend(note(b"Go\0\0", NT_GNU_BUILD_ID, b"not this one"));
    notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab, 0xcd, 0x01]));
    let f = file_with(&elf64(&notes));
    let id = of_path(f.path()).unwrap().unwrap();
    assert_eq!(id.to_string(), "abcd01");
}

#[test]
fn an_elf_file_without_a_build_id_has_none() {
    let f = file_with(&elf64(&note(b"GNU\0", 1, &[0; 16])));
    assert_eq!(of_path(f.path()).unwrap(), None);
}

#[test]
fn truncated_or_foreign_files_are_errors_not_panics() {
    let full = elf64(&note(b"GNU\0", NT_GNU_BUILD_ID, &[1; 20]));
    for len in [0, 3, 40, 63, 100, full.len() - 1] {
        let f = file_with(&full[..len]);
        assert!(of_path(f.path()).is_err(), "{len} bytes were accepted");
    }
    let f = file_with(b"#!/bin/sh\necho hi\n");
    assert!(matches!(of_path(f.path()), Err(Error::NotElf { .. })));
    // A note announcing more than the segment holds ends the search.
    let mut bad = note(b"GNU\0", NT_GNU_BUILD_ID, &[1; 20]);
    bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let f = file_with(&elf64(&bad));
    assert_eq!(of_path(f.path()).unwrap(), None);
}

#[test]
fn this_test_binary_has_the_build_id_readelf_shows() {
    let exe = std::env::current_exe().unwrap();
    let out = match std::process::Command::new("readelf")
        .arg("-n")
        .arg(&exe)
        .output()
    {
        Ok(out) if out.status.success() => out,
        other => test_skip::skip!("readelf (binutils) to compare with: {other:?}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let shown = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(str::to_string);
    assert!(shown.is_some(), "the linker wrote no build-id: {text}");
    assert_eq!(of_self().unwrap().map(|i| i.to_string()), shown);
}
