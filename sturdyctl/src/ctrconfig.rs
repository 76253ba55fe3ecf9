//! containerd's `config.toml` as far as sturdy cares: which schema it uses, the CRI runtimes
//! it defines, and adding or removing one of them without disturbing anything else.
//!
//! Editing goes through `toml_edit`, which keeps comments, order, quoting and whitespace of
//! everything it is not asked to change, so an install followed by an uninstall gives the
//! original file back byte for byte.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, Value};

/// The runtime type sturdy registers (containerd maps it to `containerd-shim-sturdy-v2`).
pub const RUNTIME_TYPE: &str = "io.containerd.sturdy.v2";
/// The shim binary containerd runs for [`RUNTIME_TYPE`].
pub const SHIM_BINARY: &str = "containerd-shim-sturdy-v2";
/// The CRI handler name (`RuntimeClass.handler`) sturdy is installed under.
pub const HANDLER: &str = "sturdy";

/// A config.toml that cannot be read or edited safely.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML.
    #[error("{path}: not valid TOML: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's report (line, column, what).
        message: String,
    },
    /// A schema version this tool does not edit.
    #[error(
        "{path}: config version {version} is not supported (only 2 and 3; version 1 needs \
         `containerd config migrate` first)"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The `version` it declares (1 when absent).
        version: i64,
    },
    /// A key on the way to the runtimes is something other than a table.
    #[error("{path}: `{key}` is not a table; add the runtime by hand")]
    NotATable {
        /// The file.
        path: PathBuf,
        /// Dotted key.
        key: String,
    },
    /// The handler exists with another runtime type: someone else's runtime.
    #[error(
        "{path}: handler `{handler}` already exists with runtime_type {runtime_type:?}, not \
         {RUNTIME_TYPE:?}; remove or rename it first"
    )]
    Conflict {
        /// The file.
        path: PathBuf,
        /// Handler name.
        handler: String,
        /// Its runtime type ("" when unset).
        runtime_type: String,
    },
    /// toml_edit would not write the untouched file back identically: refuse to edit it.
    #[error("{path}: this file would not survive an edit byte for byte; edit it by hand")]
    NotReproducible {
        /// The file.
        path: PathBuf,
    },
}

/// The config schema, by the file's `version` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// No `version`: the pre-1.5 layout (`plugins.cri`); read, never edited.
    V1,
    /// `version = 2`: containerd 1.5–1.7 (2.x migrates it when loading).
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl Schema {
    /// The plugin holding CRI's runtimes.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            Schema::V1 => "cri",
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    /// The table of runtimes, as a TOML header would name it.
    pub fn runtimes_table(self) -> String {
        format!("plugins.\"{}\".containerd.runtimes", self.cri_plugin())
    }

    /// The config's `version` number.
    pub fn number(self) -> i64 {
        match self {
            Schema::V1 => 1,
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }
}

/// One CRI runtime as the config defines it.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `runtime_type`, if set.
    pub runtime_type: Option<String>,
    /// `runtime_path` (1.7+: an explicit shim binary), if set.
    pub runtime_path: Option<String>,
    /// The `options` table's keys and values.
    pub options: Vec<(String, Value)>,
}

impl Runtime {
    /// A string option.
    pub fn option_str(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_str())
    }

    /// A boolean option.
    pub fn option_bool(&self, key: &str) -> Option<bool> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_bool())
    }
}

/// A parsed containerd config, editable in place.
#[derive(Debug, Clone)]
pub struct Config {
    path: PathBuf,
    doc: DocumentMut,
    schema: Schema,
}

impl Config {
    /// Parses `text` (the content of `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string().trim_end().to_string(),
                })?;
        let version = match doc.get("version") {
            None => 1,
            Some(v) => v.as_integer().unwrap_or(-1),
        };
        let schema = match version {
            1 => Schema::V1,
            2 => Schema::V2,
            3 => Schema::V3,
            _ => {
                return Err(ConfigError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    version,
                })
            }
        };
        Ok(Config {
            path: path.to_path_buf(),
            doc,
            schema,
        })
    }

    /// Which schema the file uses.
    pub fn schema(&self) -> Schema {
        self.schema
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The document as it would be written now.
    pub fn render(&self) -> String {
        self.doc.to_string()
    }

    /// The `imports` entries (other files merged into this one by containerd).
    pub fn imports(&self) -> Vec<String> {
        self.doc
            .get("imports")
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A top-level-or-nested string setting by dotted path (e.g. `["grpc", "address"]`).
    pub fn get_str(&self, keys: &[&str]) -> Option<String> {
        let mut item = self.doc.as_item();
        for k in keys {
            item = item.as_table_like()?.get(k)?;
        }
        item.as_str().map(String::from)
    }

    fn runtimes(&self) -> Option<&dyn toml_edit::TableLike> {
        self.doc
            .get("plugins")?
            .get(self.schema.cri_plugin())?
            .get("containerd")?
            .get("runtimes")?
            .as_table_like()
    }

    /// Every runtime the CRI plugin defines, in file order.
    pub fn runtime_names(&self) -> Vec<String> {
        self.runtimes()
            .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// The runtime named `name` (the CRI handler), if defined.
    pub fn runtime(&self, name: &str) -> Option<Runtime> {
        let t = self.runtimes()?.get(name)?.as_table_like()?;
        let s = |k: &str| t.get(k).and_then(Item::as_str).map(String::from);
        let options = t
            .get("options")
            .and_then(Item::as_table_like)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_value().map(|v| (k.to_string(), v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        Some(Runtime {
            runtime_type: s("runtime_type"),
            runtime_path: s("runtime_path"),
            options,
        })
    }

    fn refuse_unless_reproducible(&self, original: &str) -> Result<(), ConfigError> {
        if self.doc.to_string() != original {
            return Err(ConfigError::NotReproducible {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Adds `[<runtimes>.<handler>]` with `runtime_type = RUNTIME_TYPE` after the last
    /// runtime, styled like its siblings (indentation, quoting). `original` is the text the
    /// config was parsed from. Returns whether anything changed.
    pub fn add_runtime(&mut self, handler: &str, original: &str) -> Result<bool, ConfigError> {
        if self.schema == Schema::V1 {
            return Err(ConfigError::UnsupportedVersion {
                path: self.path.clone(),
                version: 1,
            });
        }
        if let Some(existing) = self.runtime(handler) {
            let rt = existing.runtime_type.unwrap_or_default();
            if rt == RUNTIME_TYPE {
                return Ok(false);
            }
            return Err(ConfigError::Conflict {
                path: self.path.clone(),
                handler: handler.to_string(),
                runtime_type: rt,
            });
        }
        self.refuse_unless_reproducible(original)?;
        let path = self.path.clone();
        let plugin = self.schema.cri_plugin();
        let mut table = self.doc.as_table_mut();
        let mut dotted = String::new();
        for key in ["plugins", plugin, "containerd", "runtimes"] {
            if !dotted.is_empty() {
                dotted.push('.');
            }
            dotted.push_str(key);
            let entry = table.entry(key).or_insert_with(|| {
                let mut t = Table::new();
                t.set_implicit(true);
                Item::Table(t)
            });
            table = entry.as_table_mut().ok_or_else(|| ConfigError::NotATable {
                path: path.clone(),
                key: dotted.clone(),
            })?;
        }
        let style = SiblingStyle::of(table);
        let mut runtime = Table::new();
        runtime.decor_mut().set_prefix(style.header_prefix.clone());
        runtime.insert("runtime_type", Item::Value(style.string(RUNTIME_TYPE)));
        if let Some(mut key) = runtime.key_mut("runtime_type") {
            key.leaf_decor_mut().set_prefix(style.key_indent.clone());
        }
        table.insert(handler, Item::Table(runtime));
        Ok(true)
    }

    /// Removes the handler's runtime if it is sturdy's. Returns whether anything changed;
    /// a handler of another runtime type is refused, never removed.
    pub fn remove_runtime(&mut self, handler: &str, original: &str) -> Result<bool, ConfigError> {
        let Some(existing) = self.runtime(handler) else {
            return Ok(false);
        };
        let rt = existing.runtime_type.unwrap_or_default();
        if rt != RUNTIME_TYPE {
            return Err(ConfigError::Conflict {
                path: self.path.clone(),
                handler: handler.to_string(),
                runtime_type: rt,
            });
        }
        self.refuse_unless_reproducible(original)?;
        let plugin = self.schema.cri_plugin();
        let runtimes = self
            .doc
            .get_mut("plugins")
            .and_then(|p| p.get_mut(plugin))
            .and_then(|p| p.get_mut("containerd"))
            .and_then(|p| p.get_mut("runtimes"))
            .and_then(Item::as_table_like_mut);
        Ok(runtimes.is_some_and(|r| r.remove(handler).is_some()))
    }
}

/// How the existing runtimes are written, so an added one looks like them.
struct SiblingStyle {
    header_prefix: String,
    key_indent: String,
    literal_strings: bool,
}

impl SiblingStyle {
    fn of(runtimes: &Table) -> SiblingStyle {
        let sibling = runtimes
            .iter()
            .filter_map(|(_, item)| item.as_table())
            .find(|t| !t.is_implicit());
        let Some(sibling) = sibling else {
            return SiblingStyle {
                header_prefix: "\n".into(),
                key_indent: "  ".into(),
                literal_strings: false,
            };
        };
        let raw = |d: Option<&toml_edit::RawString>| {
            d.and_then(|r| r.as_str()).unwrap_or_default().to_string()
        };
        // The header's own indentation is what follows its prefix's last newline; a blank
        // line always separates the new table from whatever ends before it.
        let prefix = raw(sibling.decor().prefix());
        let indent = prefix.rsplit('\n').next().unwrap_or_default();
        let first_key = sibling.iter().next().map(|(k, _)| k.to_string());
        let key_indent = first_key
            .and_then(|k| sibling.key(&k).map(|k| raw(k.leaf_decor().prefix())))
            .unwrap_or_else(|| format!("{indent}  "));
        let literal_strings = sibling
            .get("runtime_type")
            .and_then(Item::as_value)
            .and_then(|v| match v {
                Value::String(f) => f.as_repr().and_then(|r| r.as_raw().as_str()),
                _ => None,
            })
            .is_some_and(|s| s.starts_with('\''));
        SiblingStyle {
            header_prefix: format!("\n{indent}"),
            key_indent,
            literal_strings,
        }
    }

    fn string(&self, s: &str) -> Value {
        if self.literal_strings && !s.contains('\'') {
            if let Ok(v) = format!("'{s}'").parse::<Value>() {
                return v;
            }
        }
        Value::from(s)
    }
}

#[cfg(test)]
mod tests;
