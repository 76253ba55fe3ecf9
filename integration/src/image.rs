//! Builds OCI image-layout archives locally, so tests never need a registry.
//!
//! The busybox image holds the host's static busybox plus a hard link per applet: Debian's
//! busybox-static runs applets in-process from `sh`, and some tests need binaries that are
//! really exec'd. The pause image reuses the very same layer with a different entrypoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use flate2::{write::GzEncoder, Compression};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// Reference of the busybox test image.
pub const BUSYBOX_IMAGE: &str = "sturdy.local/busybox:1";
/// Reference of the pause (sandbox) image used by the CRI plugin.
pub const PAUSE_IMAGE: &str = "sturdy.local/pause:3";

/// Pause entrypoint: sits idle and exits 0 on TERM/INT like the real pause binary does.
pub const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done";

/// Fixed mtime so identical inputs yield identical digests.
const EPOCH: u64 = 1_700_000_000;

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One image to put into an archive: a name, its runtime config and its layers.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// Full reference, e.g. `sturdy.local/busybox:1`.
    pub name: String,
    /// The `config` object of the image config (Env, Cmd, Entrypoint, ...).
    pub config: serde_json::Value,
    /// Uncompressed layer tarballs, bottom first.
    pub layers: Vec<Vec<u8>>,
}

/// Locate the static busybox the images are built from (`STURDY_BUSYBOX` overrides).
pub fn host_busybox() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STURDY_BUSYBOX") {
        return Ok(PathBuf::from(p));
    }
    ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::Unexpected("busybox not found; install busybox-static".into()))
}

/// GOARCH-style name of the host architecture, as image configs spell it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(EPOCH);
    h.set_size(size);
    h
}

/// Build the uncompressed rootfs layer: /bin/busybox + hard-linked applets, /etc basics, /tmp.
pub fn busybox_layer(busybox: &Path) -> Result<Vec<u8>> {
    let binary = std::fs::read(busybox).ctx(|| format!("reading {}", busybox.display()))?;
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .ctx(|| format!("running {} --list", busybox.display()))?;
    let applets = String::from_utf8_lossy(&out.stdout).into_owned();

    let mut b = tar::Builder::new(Vec::new());
    let io = |what: &str| {
        let what = what.to_string();
        move || format!("building layer: {what}")
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("var", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .ctx(io(dir))?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    b.append_data(&mut h, "bin/busybox", binary.as_slice())
        .ctx(io("bin/busybox"))?;
    for applet in applets.split_whitespace() {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let mut h = header(tar::EntryType::Link, 0o755, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "bin/busybox")
            .ctx(io(applet))?;
    }
    // Scripts with `#!/usr/bin/env` shebangs are common enough to be worth one more link.
    let mut h = header(tar::EntryType::Link, 0o755, 0);
    b.append_link(&mut h, "usr/bin/env", "bin/busybox")
        .ctx(io("usr/bin/env"))?;
    let files: [(&str, &str); 3] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "sturdy\n"),
    ];
    for (path, text) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, path, text.as_bytes()).ctx(io(path))?;
    }
    b.into_inner().ctx(io("finish"))
}

/// Image definitions of the busybox and pause test images (sharing one layer).
pub fn default_images() -> Result<Vec<OciImage>> {
    let layer = busybox_layer(&host_busybox()?)?;
    let env = json!(["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]);
    Ok(vec![
        OciImage {
            name: BUSYBOX_IMAGE.into(),
            config: json!({"Env": env, "Cmd": ["/bin/sh"], "WorkingDir": "/"}),
            layers: vec![layer.clone()],
        },
        OciImage {
            name: PAUSE_IMAGE.into(),
            config: json!({
                "Env": env,
                "Entrypoint": ["/bin/sh", "-c", PAUSE_SCRIPT],
                "WorkingDir": "/",
            }),
            layers: vec![layer],
        },
    ])
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Serialise images into one OCI image-layout tarball (what `ctr images import` reads).
pub fn oci_archive(images: &[OciImage]) -> Result<Vec<u8>> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add_blob = |data: Vec<u8>| -> (String, usize) {
        let hexd = sha256_hex(&data);
        let len = data.len();
        if !blobs.iter().any(|(d, _)| *d == hexd) {
            blobs.push((hexd.clone(), data));
        }
        (format!("sha256:{hexd}"), len)
    };
    let mut index_entries = Vec::new();
    for image in images {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in &image.layers {
            diff_ids.push(format!("sha256:{}", sha256_hex(layer)));
            let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
            gz.write_all(layer)
                .and_then(|_| gz.try_finish())
                .ctx(|| "gzip layer".into())?;
            let (digest, size) = add_blob(gz.finish().ctx(|| "gzip layer".into())?);
            layer_descs.push(json!({"mediaType": MEDIA_LAYER, "digest": digest, "size": size}));
        }
        let config = json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": image.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "sturdy-integration image builder"}],
        });
        let (cdigest, csize) = add_blob(serde_json::to_vec(&config)?);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": cdigest, "size": csize},
            "layers": layer_descs,
        });
        let (mdigest, msize) = add_blob(serde_json::to_vec(&manifest)?);
        index_entries.push(json!({
            "mediaType": MEDIA_MANIFEST,
            "digest": mdigest,
            "size": msize,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                // ctr names the imported image after this one...
                "io.containerd.image.name": image.name,
                // ...and this is what the OCI spec says a ref is.
                "org.opencontainers.image.ref.name": image.name,
            },
        }));
    }
    let index = json!({"schemaVersion": 2, "manifests": index_entries});

    let mut b = tar::Builder::new(Vec::new());
    let mut put = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data)
            .ctx(|| format!("archiving {path}"))
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    put("index.json", &serde_json::to_vec(&index)?)?;
    for (hexd, data) in &blobs {
        put(&format!("blobs/sha256/{hexd}"), data)?;
    }
    b.into_inner().ctx(|| "finishing archive".into())
}

/// The busybox + pause archive, built once per process because gzip is slow in debug builds.
pub fn default_archive() -> Result<&'static [u8]> {
    static CACHE: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(a) = CACHE.get() {
        return Ok(a);
    }
    let built = oci_archive(&default_images()?)?;
    Ok(CACHE.get_or_init(|| built))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Read;

    fn unpack(archive: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut out = HashMap::new();
        let mut a = tar::Archive::new(archive);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
        out
    }

    fn blob<'a>(files: &'a HashMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
        let hexd = digest.strip_prefix("sha256:").expect("sha256 digest");
        let data = &files[&format!("blobs/sha256/{hexd}")];
        assert_eq!(
            sha256_hex(data),
            hexd,
            "blob content does not match its digest"
        );
        data
    }

    #[test]
    fn archive_is_a_consistent_oci_layout() {
        let files = unpack(default_archive().unwrap());
        assert!(files.contains_key("oci-layout"));
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        let names: Vec<&str> = manifests
            .iter()
            .map(|m| {
                m["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names, [BUSYBOX_IMAGE, PAUSE_IMAGE]);
        for m in manifests {
            let manifest: serde_json::Value =
                serde_json::from_slice(blob(&files, m["digest"].as_str().unwrap())).unwrap();
            let config: serde_json::Value = serde_json::from_slice(blob(
                &files,
                manifest["config"]["digest"].as_str().unwrap(),
            ))
            .unwrap();
            assert_eq!(config["architecture"], oci_arch());
            let layer = blob(&files, manifest["layers"][0]["digest"].as_str().unwrap());
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(layer)
                .read_to_end(&mut raw)
                .unwrap();
            // containerd checks the uncompressed digest against diff_ids when unpacking.
            assert_eq!(
                config["rootfs"]["diff_ids"][0],
                format!("sha256:{}", sha256_hex(&raw))
            );
        }
    }

    #[test]
    fn layer_has_busybox_and_hard_linked_applets() {
        let layer = busybox_layer(&host_busybox().unwrap()).unwrap();
        let mut a = tar::Archive::new(layer.as_slice());
        let mut links = HashMap::new();
        let mut busybox_size = 0;
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            match e.header().entry_type() {
                tar::EntryType::Link => {
                    let target = e.link_name().unwrap().unwrap();
                    links.insert(path, target.to_string_lossy().into_owned());
                }
                _ if path == "bin/busybox" => busybox_size = e.header().size().unwrap(),
                _ => {}
            }
        }
        assert!(busybox_size > 100_000, "busybox missing or truncated");
        for applet in [
            "sh", "echo", "cat", "sleep", "true", "false", "ls", "ps", "id", "env",
        ] {
            assert_eq!(
                links.get(&format!("bin/{applet}")).map(String::as_str),
                Some("bin/busybox"),
                "{applet}"
            );
        }
    }
}
