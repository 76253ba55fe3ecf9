//! Reading cgroup files in the kernel's few formats.

use std::io;
use std::path::Path;

use super::CgroupError;

/// The file's text; `None` when it does not exist (a controller or kernel feature that is
/// not there, such as swap accounting).
pub fn read(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        // ENODEV: the file of a cgroup being removed.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// One number in `text` (of the file `path`); the word `max` (no limit) reads as `max`.
pub fn parse_number(path: &Path, text: &str, max: u64) -> Result<u64, CgroupError> {
    let t = text.trim();
    if t == "max" {
        return Ok(max);
    }
    t.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        text: t.to_string(),
    })
}

/// A file holding one number; `None` when it does not exist.
pub fn number(path: &Path, max: u64) -> Result<Option<u64>, CgroupError> {
    read(path)?
        .map(|text| parse_number(path, &text, max))
        .transpose()
}

/// A file of `key value` lines (memory.stat, cpu.stat, …), each passed to `each`;
/// `false` when the file does not exist.
pub fn flat_keyed(path: &Path, mut each: impl FnMut(&str, u64)) -> Result<bool, CgroupError> {
    let Some(text) = read(path)? else {
        return Ok(false);
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(' ').ok_or_else(|| CgroupError::Parse {
            path: path.to_path_buf(),
            text: line.to_string(),
        })?;
        each(key, parse_number(path, value, u64::MAX)?);
    }
    Ok(true)
}

/// Values of `key=value` fields (io.stat, PSI lines), each passed to `each`.
pub fn nested_fields<'a>(
    path: &Path,
    fields: impl Iterator<Item = &'a str>,
    mut each: impl FnMut(&'a str, &'a str) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    for field in fields {
        let (key, value) = field.split_once('=').ok_or_else(|| CgroupError::Parse {
            path: path.to_path_buf(),
            text: field.to_string(),
        })?;
        each(key, value)?;
    }
    Ok(())
}

/// The names `<prefix>.<size>.<suffix>` in `dir` give the huge page sizes the kernel
/// accounts there ("2MB", "1GB"), sorted.
pub fn hugepage_sizes(dir: &Path, suffix: &str) -> Result<Vec<String>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut sizes: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?;
            let size = size.strip_suffix('.')?;
            // Skips the reservation files (hugetlb.2MB.rsvd.*) of newer kernels.
            (!size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort();
    Ok(sizes)
}
