//! Runtime options containerd hands the shim at Create, in either encoding.
//!
//! With `runtime_type = "io.containerd.runc.v2"` (plus `runtime_path`) CRI sends
//! `containerd.runc.v1.Options`; with `runtime_type = "io.containerd.sturdy.v2"` it
//! sends `runtimeoptions.v1.Options` whose `config_body` (or `config_path`) holds the
//! TOML of the runtime's `options` table. Both are decoded into one [`RuntimeOptions`],
//! and anything we do not understand is an error rather than a silent misparse.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::{well_known_types::any::Any, CodedInputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use serde::{Deserialize, Serialize};

/// Type name of the runc shim's options message.
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// Type name of CRI's generic runtime options message.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Largest `config_path` file read; an options table is a few hundred bytes, and the file
/// is read on the runtime thread, so anything bigger is a mistake we refuse to slurp.
pub const CONFIG_PATH_LIMIT: u64 = 1 << 20;

/// Why runtime options were rejected.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The Any carried a message type this shim does not accept.
    #[error("unsupported runtime options type {0:?} (expected {RUNC_OPTIONS_TYPE} or {RUNTIME_OPTIONS_TYPE})")]
    UnsupportedType(String),
    /// The protobuf payload did not decode.
    #[error("malformed {type_url} payload: {reason}")]
    Malformed { type_url: String, reason: String },
    /// The TOML options table had a key we do not know.
    #[error("unknown runtime option {0:?} (known: BinaryName, Root, SystemdCgroup, NoPivotRoot, NoNewKeyring, ShimCgroup, IoUid, IoGid, CriuPath, CriuImagePath, CriuWorkPath, SandboxRecordDir, NoSandboxRecord)")]
    UnknownKey(String),
    /// A key had a value of the wrong type or range.
    #[error("runtime option {key}: {reason}")]
    BadValue { key: String, reason: String },
    /// The TOML did not parse; carries the parser's full report (position and message).
    #[error("runtime options TOML: {0}")]
    Toml(String),
    /// `config_path` could not be opened or read.
    #[error("runtime options config_path {path:?}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `config_path` names something other than a regular file (a FIFO would block forever).
    #[error("runtime options config_path {path:?} is not a regular file ({kind})")]
    ConfigPathNotRegular { path: PathBuf, kind: &'static str },
    /// `config_path` is larger than [`CONFIG_PATH_LIMIT`].
    #[error("runtime options config_path {path:?} is {size} bytes, more than the {limit} bytes accepted")]
    ConfigPathTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// `config_path` is relative: the shim's working directory is the bundle, never what was meant.
    #[error("runtime options config_path {0:?} must be an absolute path")]
    ConfigPathRelative(PathBuf),
}

/// The options this shim honours, whatever encoding they arrived in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    /// runc-compatible binary (name on PATH or absolute path); empty means `runc`.
    pub binary_name: String,
    /// runc `--root`; empty means the shim's default.
    pub root: String,
    /// Pass `--systemd-cgroup` to runc.
    pub systemd_cgroup: bool,
    /// Pass `--no-pivot` to `runc create`.
    pub no_pivot_root: bool,
    /// Pass `--no-new-keyring` to `runc create`.
    pub no_new_keyring: bool,
    /// cgroup the shim daemon moves itself into.
    pub shim_cgroup: String,
    /// Owner uid of the container's stdio pipes.
    pub io_uid: u32,
    /// Owner gid of the container's stdio pipes.
    pub io_gid: u32,
    /// CRIU binary runc runs: `criu` on PATH, or an absolute path to a file named `criu`
    /// (runc-client puts its directory first on runc's PATH); empty means `criu` on PATH.
    #[serde(default)]
    pub criu_path: String,
    /// CRIU image path for checkpoints.
    pub criu_image_path: String,
    /// CRIU work path for checkpoints.
    pub criu_work_path: String,
    /// Directory of the pod sandbox network records; empty means
    /// `/var/lib/sturdy/sandboxes` (docs/netmeta.md).
    pub sandbox_record_dir: String,
    /// Keep no pod sandbox network records.
    pub no_sandbox_record: bool,
}

impl RuntimeOptions {
    /// The runc binary to run, defaulting to `runc`.
    pub fn binary(&self) -> &str {
        if self.binary_name.is_empty() {
            "runc"
        } else {
            &self.binary_name
        }
    }

    /// Decodes the options Any of a CreateTaskRequest (or the `start` stdin payload).
    pub fn from_any(any: Option<&Any>) -> Result<Self, OptionsError> {
        let Some(any) = any else {
            return Ok(Self::default());
        };
        if any.type_url.is_empty() && any.value.is_empty() {
            return Ok(Self::default());
        }
        // containerd's typeurl writes bare names; protobuf's Any::pack adds a host prefix.
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        match name {
            RUNC_OPTIONS_TYPE => {
                let o = RuncOptions::parse_from_bytes(&any.value).map_err(|e| {
                    OptionsError::Malformed {
                        type_url: any.type_url.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let criu_path = removed_criu_path(&o);
                let decoded = Self {
                    binary_name: o.binary_name,
                    root: o.root,
                    systemd_cgroup: o.systemd_cgroup,
                    no_pivot_root: o.no_pivot_root,
                    no_new_keyring: o.no_new_keyring,
                    shim_cgroup: o.shim_cgroup,
                    io_uid: o.io_uid,
                    io_gid: o.io_gid,
                    criu_path,
                    criu_image_path: o.criu_image_path,
                    criu_work_path: o.criu_work_path,
                    ..Self::default()
                };
                decoded.validate()?;
                Ok(decoded)
            }
            RUNTIME_OPTIONS_TYPE => {
                let generic = decode_runtime_options(&any.value).map_err(|reason| {
                    OptionsError::Malformed {
                        type_url: any.type_url.clone(),
                        reason,
                    }
                })?;
                let body = if !generic.config_body.is_empty() {
                    String::from_utf8(generic.config_body).map_err(|_| OptionsError::Malformed {
                        type_url: any.type_url.clone(),
                        reason: "config_body is not UTF-8".into(),
                    })?
                } else if !generic.config_path.is_empty() {
                    read_config_path(Path::new(&generic.config_path))?
                } else {
                    String::new()
                };
                Self::from_toml(&body)
            }
            other => Err(OptionsError::UnsupportedType(other.to_string())),
        }
    }

    /// Parses the TOML of a runtime's `options` table, rejecting unknown keys and bad types.
    pub fn from_toml(body: &str) -> Result<Self, OptionsError> {
        let table: toml::Table = body.parse().map_err(|e: toml::de::Error| {
            OptionsError::Toml(e.to_string().trim_end().to_string())
        })?;
        let mut o = Self::default();
        for (key, value) in &table {
            match key.as_str() {
                "BinaryName" => o.binary_name = string(key, value)?,
                "Root" => o.root = string(key, value)?,
                "ShimCgroup" => o.shim_cgroup = string(key, value)?,
                "CriuPath" => o.criu_path = string(key, value)?,
                "CriuImagePath" => o.criu_image_path = string(key, value)?,
                "CriuWorkPath" => o.criu_work_path = string(key, value)?,
                "SandboxRecordDir" => o.sandbox_record_dir = string(key, value)?,
                "NoSandboxRecord" => o.no_sandbox_record = boolean(key, value)?,
                "SystemdCgroup" => o.systemd_cgroup = boolean(key, value)?,
                "NoPivotRoot" => o.no_pivot_root = boolean(key, value)?,
                "NoNewKeyring" => o.no_new_keyring = boolean(key, value)?,
                "IoUid" => o.io_uid = id(key, value)?,
                "IoGid" => o.io_gid = id(key, value)?,
                // containerd's own key for the options type; it carries no setting.
                "TypeUrl" => {}
                _ => return Err(OptionsError::UnknownKey(key.clone())),
            }
        }
        o.validate()?;
        Ok(o)
    }

    /// Rejects values that would be misread later (a boolean word as a path, a relative
    /// path resolved against whatever directory runc happens to run in).
    pub fn validate(&self) -> Result<(), OptionsError> {
        let bad = |key: &str, reason: String| OptionsError::BadValue {
            key: key.into(),
            reason,
        };
        for (key, value) in [
            ("ShimCgroup", &self.shim_cgroup),
            ("Root", &self.root),
            ("BinaryName", &self.binary_name),
            ("CriuPath", &self.criu_path),
            ("CriuImagePath", &self.criu_image_path),
            ("CriuWorkPath", &self.criu_work_path),
            ("SandboxRecordDir", &self.sandbox_record_dir),
        ] {
            if value.chars().any(char::is_control) {
                return Err(bad(key, format!("{value:?} contains a control character")));
            }
            if value == "true" || value == "false" {
                return Err(bad(
                    key,
                    format!("{value:?} looks like a boolean, expected a path"),
                ));
            }
        }
        for (key, value) in [
            ("Root", &self.root),
            ("CriuImagePath", &self.criu_image_path),
            ("CriuWorkPath", &self.criu_work_path),
            ("SandboxRecordDir", &self.sandbox_record_dir),
        ] {
            if !value.is_empty() && !value.starts_with('/') {
                return Err(bad(key, format!("{value:?} must be an absolute path")));
            }
        }
        // A bare name is looked up on PATH; a relative path with a slash would be resolved
        // against the shim's working directory (the bundle), which nobody means.
        for (key, b) in [
            ("BinaryName", &self.binary_name),
            ("CriuPath", &self.criu_path),
        ] {
            if b.contains('/') && !b.starts_with('/') {
                return Err(bad(
                    key,
                    format!("{b:?} is a relative path: use a bare name looked up on PATH or an absolute path"),
                ));
            }
            if b.ends_with('/') {
                return Err(bad(key, format!("{b:?} names a directory")));
            }
        }
        let cg = &self.shim_cgroup;
        if !cg.is_empty() {
            if !cg.starts_with('/') {
                return Err(bad(
                    "ShimCgroup",
                    format!("{cg:?} must be an absolute cgroup path such as \"/shims\""),
                ));
            }
            if cg.split('/').any(|c| c == ".." || c == ".") {
                return Err(bad(
                    "ShimCgroup",
                    format!("{cg:?} must not contain \".\" or \"..\""),
                ));
            }
            if cg.trim_matches('/').is_empty() {
                return Err(bad(
                    "ShimCgroup",
                    format!("{cg:?} is the root cgroup; name a cgroup below it"),
                ));
            }
        }
        Ok(())
    }
}

/// Reads a `config_path` file without ever blocking on it and without reading more than
/// [`CONFIG_PATH_LIMIT`].
fn read_config_path(path: &Path) -> Result<String, OptionsError> {
    if !path.is_absolute() {
        return Err(OptionsError::ConfigPathRelative(path.to_path_buf()));
    }
    let io_err = |source| OptionsError::ConfigPath {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(OptionsError::ConfigPathNotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let too_large = |size| OptionsError::ConfigPathTooLarge {
        path: path.to_path_buf(),
        size,
        limit: CONFIG_PATH_LIMIT,
    };
    if meta.len() > CONFIG_PATH_LIMIT {
        return Err(too_large(meta.len()));
    }
    // The file may grow between fstat and read: never take more than the limit.
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(CONFIG_PATH_LIMIT + 1)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() as u64 > CONFIG_PATH_LIMIT {
        return Err(too_large(data.len() as u64));
    }
    String::from_utf8(data).map_err(|e| {
        io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })
}

/// `criu_path` (field 8) of `containerd.runc.v1.Options`: containerd 1.6 and 1.7 send it,
/// 2.0 removed it from the message, and so did the protos this shim is built with; it
/// survives decoding as an unknown field.
fn removed_criu_path(o: &RuncOptions) -> String {
    use containerd_shim_protos::protobuf::UnknownValueRef;
    match o.special_fields.unknown_fields().get(8) {
        Some(UnknownValueRef::LengthDelimited(bytes)) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        _ => String::new(),
    }
}

fn string(key: &str, value: &toml::Value) -> Result<String, OptionsError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| OptionsError::BadValue {
            key: key.into(),
            reason: format!("expected a string, got {}", value.type_str()),
        })
}

fn boolean(key: &str, value: &toml::Value) -> Result<bool, OptionsError> {
    value.as_bool().ok_or_else(|| OptionsError::BadValue {
        key: key.into(),
        reason: format!("expected a boolean, got {}", value.type_str()),
    })
}

fn id(key: &str, value: &toml::Value) -> Result<u32, OptionsError> {
    let n = value.as_integer().ok_or_else(|| OptionsError::BadValue {
        key: key.into(),
        reason: format!("expected an integer, got {}", value.type_str()),
    })?;
    u32::try_from(n).map_err(|_| OptionsError::BadValue {
        key: key.into(),
        reason: format!("{n} is out of range for an id"),
    })
}

/// Fields of CRI's `runtimeoptions.v1.Options`.
#[derive(Default)]
struct GenericOptions {
    config_path: String,
    config_body: Vec<u8>,
}

/// Hand-decodes `runtimeoptions.v1.Options` (type_url=1, config_path=2, config_body=3);
/// the message is not part of the shim protos and has only three fields.
fn decode_runtime_options(bytes: &[u8]) -> Result<GenericOptions, String> {
    let mut out = GenericOptions::default();
    let mut input = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (1, 2) => {
                input.read_string().map_err(|e| e.to_string())?;
            }
            (2, 2) => out.config_path = input.read_string().map_err(|e| e.to_string())?,
            (3, 2) => out.config_body = input.read_bytes().map_err(|e| e.to_string())?,
            (_, 0) => {
                input.read_raw_varint64().map_err(|e| e.to_string())?;
            }
            (_, 2) => {
                input.read_bytes().map_err(|e| e.to_string())?;
            }
            _ => return Err(format!("unexpected field {field} wire type {wire}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
