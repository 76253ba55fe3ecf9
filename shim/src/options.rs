//! Runtime options containerd hands the shim at Create, in either encoding.
//!
//! With `runtime_type = "io.containerd.runc.v2"` (plus `runtime_path`) CRI sends
//! `containerd.runc.v1.Options`; with `runtime_type = "io.containerd.sturdy.v2"` it
//! sends `runtimeoptions.v1.Options` whose `config_body` (or `config_path`) holds the
//! TOML of the runtime's `options` table. Both are decoded into one [`RuntimeOptions`],
//! and anything we do not understand is an error rather than a silent misparse.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::{well_known_types::any::Any, CodedInputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use serde::{Deserialize, Serialize};

/// Type name of the runc shim's options message.
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// Type name of CRI's generic runtime options message.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

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
    #[error("unknown runtime option {0:?} (known: BinaryName, Root, SystemdCgroup, NoPivotRoot, NoNewKeyring, ShimCgroup, IoUid, IoGid, CriuImagePath, CriuWorkPath)")]
    UnknownKey(String),
    /// A key had a value of the wrong type or range.
    #[error("runtime option {key}: {reason}")]
    BadValue { key: String, reason: String },
    /// The TOML did not parse.
    #[error("runtime options TOML: {0}")]
    Toml(String),
    /// `config_path` could not be read.
    #[error("runtime options config_path {path:?}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// CRIU image path for checkpoints.
    pub criu_image_path: String,
    /// CRIU work path for checkpoints.
    pub criu_work_path: String,
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
                Ok(Self {
                    binary_name: o.binary_name,
                    root: o.root,
                    systemd_cgroup: o.systemd_cgroup,
                    no_pivot_root: o.no_pivot_root,
                    no_new_keyring: o.no_new_keyring,
                    shim_cgroup: o.shim_cgroup,
                    io_uid: o.io_uid,
                    io_gid: o.io_gid,
                    criu_image_path: o.criu_image_path,
                    criu_work_path: o.criu_work_path,
                })
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
                    let path = PathBuf::from(&generic.config_path);
                    std::fs::read_to_string(&path)
                        .map_err(|source| OptionsError::ConfigPath { path, source })?
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
        let table: toml::Table = body
            .parse()
            .map_err(|e: toml::de::Error| OptionsError::Toml(e.message().to_string()))?;
        let mut o = Self::default();
        for (key, value) in &table {
            match key.as_str() {
                "BinaryName" => o.binary_name = string(key, value)?,
                "Root" => o.root = string(key, value)?,
                "ShimCgroup" => o.shim_cgroup = string(key, value)?,
                "CriuImagePath" => o.criu_image_path = string(key, value)?,
                "CriuWorkPath" => o.criu_work_path = string(key, value)?,
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

    /// Rejects values that would be misread later (e.g. a boolean word as a path).
    pub fn validate(&self) -> Result<(), OptionsError> {
        for (key, value) in [
            ("ShimCgroup", &self.shim_cgroup),
            ("Root", &self.root),
            ("BinaryName", &self.binary_name),
        ] {
            if value.contains('\0') || value.contains('\n') {
                return Err(OptionsError::BadValue {
                    key: key.into(),
                    reason: "contains a control character".into(),
                });
            }
            if value == "true" || value == "false" {
                return Err(OptionsError::BadValue {
                    key: key.into(),
                    reason: format!("{value:?} looks like a boolean, expected a path"),
                });
            }
        }
        if !self.root.is_empty() && !self.root.starts_with('/') {
            return Err(OptionsError::BadValue {
                key: "Root".into(),
                reason: format!("{:?} must be an absolute path", self.root),
            });
        }
        Ok(())
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
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    fn generic_any(body: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, "io.containerd.sturdy.v1.Options")
                .unwrap();
            out.write_bytes(3, body.as_bytes()).unwrap();
            out.flush().unwrap();
        }
        Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn none_is_default() {
        assert_eq!(
            RuntimeOptions::from_any(None).unwrap(),
            RuntimeOptions::default()
        );
        assert_eq!(RuntimeOptions::default().binary(), "runc");
    }

    #[test]
    fn runc_options_decode() {
        let o = RuncOptions {
            binary_name: "crun".into(),
            root: "/run/x".into(),
            systemd_cgroup: true,
            shim_cgroup: "/shims".into(),
            io_uid: 7,
            ..Default::default()
        };
        let any = Any {
            type_url: format!("type.googleapis.com/{RUNC_OPTIONS_TYPE}"),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let got = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert_eq!(got.binary(), "crun");
        assert_eq!(got.root, "/run/x");
        assert!(got.systemd_cgroup);
        assert_eq!(got.shim_cgroup, "/shims");
        assert_eq!(got.io_uid, 7);
    }

    #[test]
    fn generic_options_same_keys() {
        let any = generic_any(
            "BinaryName = \"crun\"\nRoot = \"/run/sturdy\"\nSystemdCgroup = false\nNoPivotRoot = true\nIoGid = 5\n",
        );
        let got = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert_eq!(got.binary(), "crun");
        assert_eq!(got.root, "/run/sturdy");
        assert!(got.no_pivot_root);
        assert_eq!(got.io_gid, 5);
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err =
            RuntimeOptions::from_any(Some(&generic_any("BinaryNme = \"runc\"\n"))).unwrap_err();
        assert!(
            matches!(err, OptionsError::UnknownKey(ref k) if k == "BinaryNme"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        for body in [
            "SystemdCgroup = \"yes\"",
            "ShimCgroup = true",
            "IoUid = -1",
            "Root = \"relative\"",
            "ShimCgroup = \"true\"",
        ] {
            let err = RuntimeOptions::from_toml(body).unwrap_err();
            assert!(
                matches!(err, OptionsError::BadValue { .. }),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn unsupported_type_is_an_error() {
        let any = Any {
            type_url: "example.Other".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert!(matches!(
            RuntimeOptions::from_any(Some(&any)),
            Err(OptionsError::UnsupportedType(_))
        ));
    }

    #[test]
    fn config_path_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opts.toml");
        std::fs::write(&path, "BinaryName = \"crun\"\n").unwrap();
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(2, path.to_str().unwrap()).unwrap();
            out.flush().unwrap();
        }
        let any = Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            RuntimeOptions::from_any(Some(&any)).unwrap().binary(),
            "crun"
        );
    }
}
