//! Certificates of one node, made fresh per run with `openssl`: a CA and the client and
//! serving pairs of every component, plus the service-account signing key. ECDSA P-256
//! keys: RSA keys took seconds each on this 2-core machine kind; every component accepts EC.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::namespace::NODE_IP;
use crate::error::{Error, IoContext, Result};

/// The service network's first address: the API server's `kubernetes` Service.
pub const SERVICE_IP: &str = "198.18.128.1";
/// The node's name (`--hostname-override`), also in its serving certificate.
pub const NODE_NAME: &str = "sturdy-node";

/// Paths of one key pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
}

/// The node's PKI, all below one 0700 directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// A certificate to issue: file stem, subject, and whether it serves (SANs) or is a client.
struct Leaf<'a> {
    name: &'a str,
    subject: &'a str,
    sans: &'a [String],
}

impl Pki {
    /// Issues every certificate into `dir` (created 0700).
    pub fn create(dir: &Path) -> Result<Pki> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("creating {}", dir.display()))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        let ca = pki.pair("ca");
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &s(&ca.key),
            "-out",
            &s(&ca.cert),
            "-days",
            "30",
            "-subj",
            "/CN=sturdy-test-node-ca",
        ])?;
        let apiserver_sans: Vec<String> = [
            "IP:127.0.0.1".to_string(),
            format!("IP:{NODE_IP}"),
            format!("IP:{SERVICE_IP}"),
            "DNS:localhost".into(),
            "DNS:kubernetes".into(),
            "DNS:kubernetes.default".into(),
            "DNS:kubernetes.default.svc".into(),
            "DNS:kubernetes.default.svc.cluster.local".into(),
        ]
        .into();
        let kubelet_sans = vec![format!("IP:{NODE_IP}"), format!("DNS:{NODE_NAME}")];
        let node_subject = format!("/O=system:nodes/CN=system:node:{NODE_NAME}");
        let leaves = [
            Leaf {
                name: "apiserver",
                subject: "/CN=kube-apiserver",
                sans: &apiserver_sans,
            },
            Leaf {
                name: "apiserver-kubelet-client",
                subject: "/O=system:masters/CN=kube-apiserver-kubelet-client",
                sans: &[],
            },
            Leaf {
                name: "admin",
                subject: "/O=system:masters/CN=sturdy-admin",
                sans: &[],
            },
            Leaf {
                name: "kcm",
                subject: "/CN=system:kube-controller-manager",
                sans: &[],
            },
            Leaf {
                name: "scheduler",
                subject: "/CN=system:kube-scheduler",
                sans: &[],
            },
            Leaf {
                name: "kubelet-client",
                subject: &node_subject,
                sans: &[],
            },
            Leaf {
                name: "kubelet-serving",
                subject: "/CN=sturdy-node-serving",
                sans: &kubelet_sans,
            },
        ];
        for leaf in &leaves {
            pki.issue(leaf)?;
        }
        let sa = pki.dir.join("sa.key");
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &s(&sa),
        ])?;
        openssl(&["ec", "-in", &s(&sa), "-pubout", "-out", &s(&pki.sa_pub())])?;
        for entry in std::fs::read_dir(&pki.dir).ctx(|| "listing pki".into())? {
            let path = entry.ctx(|| "listing pki".into())?.path();
            let mode = if path.extension().is_some_and(|e| e == "key") {
                0o600
            } else {
                0o644
            };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .ctx(|| format!("chmod {}", path.display()))?;
        }
        Ok(pki)
    }

    fn issue(&self, leaf: &Leaf<'_>) -> Result<()> {
        let pair = self.pair(leaf.name);
        let csr = self.dir.join(format!("{}.csr", leaf.name));
        openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &s(&pair.key),
            "-out",
            &s(&csr),
            "-subj",
            leaf.subject,
        ])?;
        let mut ext = String::from(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
        );
        if leaf.sans.is_empty() {
            ext.push_str("extendedKeyUsage=clientAuth\n");
        } else {
            ext.push_str("extendedKeyUsage=serverAuth,clientAuth\n");
            ext.push_str(&format!("subjectAltName={}\n", leaf.sans.join(",")));
        }
        let ext_file = self.dir.join(format!("{}.ext", leaf.name));
        std::fs::write(&ext_file, ext).ctx(|| format!("writing {}", ext_file.display()))?;
        let ca = self.ca();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca.cert),
            "-CAkey",
            &s(&ca.key),
            "-CAcreateserial",
            "-out",
            &s(&pair.cert),
            "-days",
            "30",
            "-extfile",
            &s(&ext_file),
        ])?;
        for f in [csr, ext_file] {
            std::fs::remove_file(&f).ctx(|| format!("removing {}", f.display()))?;
        }
        Ok(())
    }

    /// The pair named `name` (`ca`, `apiserver`, `admin`, `kcm`, `scheduler`,
    /// `kubelet-client`, `kubelet-serving`, `apiserver-kubelet-client`).
    pub fn pair(&self, name: &str) -> Pair {
        Pair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    /// The CA.
    pub fn ca(&self) -> Pair {
        self.pair("ca")
    }

    /// Service-account signing key and its public half.
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    /// Public half of [`Pki::sa_key`].
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ctx(|| "running openssl (is it installed?)".into())?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("openssl {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}
