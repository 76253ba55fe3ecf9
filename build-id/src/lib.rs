//! The GNU build-id of an ELF executable: the linker's hash over the code and data it
//! wrote (`ld --build-id`), kept in a `.note.gnu.build-id` note that `strip` leaves alone.
//!
//! The shim reports its own (`-v`), and `sturdyctl` reads it from a binary on disk and from
//! the image a running shim executes (`/proc/PID/exe`, which still opens after the file was
//! replaced): two binaries with the same build-id are the same build, so a shim whose image
//! differs from the installed binary is running an old build, whatever its version string.
//!
//! Only the program headers and the `PT_NOTE` segments are read, each bounded, so a hostile
//! or truncated file costs at most a few reads of [`MAX_NOTES`] bytes.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Largest note segment read; the build-id note is 36 bytes, all notes of a binary a few
/// hundred.
pub const MAX_NOTES: u64 = 64 << 10;
/// Most program headers examined.
const MAX_PHDRS: u64 = 256;
/// ELF note type of the GNU build-id.
const NT_GNU_BUILD_ID: u32 = 3;
/// Program header type of a note segment.
const PT_NOTE: u32 = 4;

/// A build-id: the note's bytes (20 for `--build-id=sha1`, the default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuildId(Vec<u8>);

impl BuildId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for BuildId {
    /// Lower-case hex, as `readelf -n` and `file` print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why no build-id could be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// What was read.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not an ELF file this reader understands.
    #[error("{path}: {why}")]
    NotElf {
        /// What was read.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// The build-id of the ELF file at `path`; `Ok(None)` for an ELF file without one.
pub fn of_path(path: &Path) -> Result<Option<BuildId>, Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    of_file(&file).map_err(|e| e.at(&path.display().to_string()))
}

/// The build-id of the running executable (`/proc/self/exe`).
pub fn of_self() -> Result<Option<BuildId>, Error> {
    of_path(Path::new("/proc/self/exe"))
}

/// The build-id of an open ELF file; errors name the file as "-" (see [`of_path`]).
pub fn of_file(file: &File) -> Result<Option<BuildId>, Error> {
    let header = read_header(file)?;
    let elf = Layout::parse(&header)?;
    let count = u64::from(elf.phnum).min(MAX_PHDRS);
    let table = read(file, elf.phoff, count * u64::from(elf.phentsize))?;
    for ph in table.chunks_exact(usize::from(elf.phentsize)) {
        if elf.u32(&ph[0..4]) != PT_NOTE {
            continue;
        }
        let (offset, size) = if elf.wide {
            (elf.u64(&ph[8..16]), elf.u64(&ph[32..40]))
        } else {
            (
                u64::from(elf.u32(&ph[4..8])),
                u64::from(elf.u32(&ph[16..20])),
            )
        };
        let notes = read(file, offset, size.min(MAX_NOTES))?;
        if let Some(id) = find_build_id(&elf, &notes) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Class and byte order of an ELF file, and where its program headers are.
struct Layout {
    wide: bool,
    little: bool,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
}

impl Layout {
    fn parse(h: &[u8]) -> Result<Self, Error> {
        if h.len() < 4 || &h[0..4] != b"\x7fELF" {
            return Err(not_elf("no ELF magic"));
        }
        if h.len() < 52 {
            return Err(not_elf("truncated ELF header"));
        }
        let wide = match h[4] {
            1 => false,
            2 => true,
            _ => return Err(not_elf("unknown ELF class")),
        };
        let little = match h[5] {
            1 => true,
            2 => false,
            _ => return Err(not_elf("unknown ELF byte order")),
        };
        let mut l = Layout {
            wide,
            little,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
        };
        if wide {
            if h.len() < 64 {
                return Err(not_elf("truncated ELF header"));
            }
            l.phoff = l.u64(&h[32..40]);
            l.phentsize = l.u16(&h[54..56]);
            l.phnum = l.u16(&h[56..58]);
        } else {
            l.phoff = u64::from(l.u32(&h[28..32]));
            l.phentsize = l.u16(&h[42..44]);
            l.phnum = l.u16(&h[44..46]);
        }
        let min = if wide { 56 } else { 32 };
        // Exactly `min` in practice; anything far larger is not a file to read 256 of.
        if l.phnum > 0 && (usize::from(l.phentsize) < min || l.phentsize > 256) {
            return Err(not_elf("program header entries of an odd size"));
        }
        Ok(l)
    }

    fn u16(&self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    }

    fn u64(&self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
}

/// Walks the notes of one segment (name and descriptor each padded to 4 bytes).
fn find_build_id(elf: &Layout, mut notes: &[u8]) -> Option<BuildId> {
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = elf.u32(&notes[0..4]) as usize;
        let descsz = elf.u32(&notes[4..8]) as usize;
        let kind = elf.u32(&notes[8..12]);
        let name_end = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = name_end.checked_add(pad(descsz)?)?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" && descsz > 0 {
            return Some(BuildId(notes[name_end..name_end + descsz].to_vec()));
        }
        notes = &notes[desc_end..];
    }
    None
}

/// Up to the first 64 bytes: a short file is judged by its magic first.
fn read_header(file: &File) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; 64];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    path: "-".into(),
                    source,
                })
            }
        }
    }
    buf.truncate(done);
    Ok(buf)
}

fn read(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(not_elf("truncated")),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    path: "-".into(),
                    source,
                })
            }
        }
    }
    Ok(buf)
}

fn not_elf(why: &'static str) -> Error {
    Error::NotElf {
        path: "-".into(),
        why,
    }
}

impl Error {
    fn at(self, path: &str) -> Self {
        match self {
            Error::Io { source, .. } => Error::Io {
                path: path.into(),
                source,
            },
            Error::NotElf { why, .. } => Error::NotElf {
                path: path.into(),
                why,
            },
        }
    }
}

#[cfg(test)]
mod tests;
