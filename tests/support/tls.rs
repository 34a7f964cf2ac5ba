//! Certificates for the TLS tests, made by the `openssl` command line: a CA, a server
//! certificate for `localhost` (not for 127.0.0.1, so the server-name check can be shown), a
//! client certificate, and a second CA that signed none of them.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed for the TLS tests ({e}); install it with `sudo apt-get install -y openssl`")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make the certificates in a fresh directory.
pub fn make() -> Certs {
    let dir = std::env::temp_dir().join(format!(
        "layercache-tls-{}-{}",
        std::process::id(),
        super::redis::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("create the certificate directory");
    let days = ["-days", "2"];
    for ca in ["ca", "other-ca"] {
        openssl(&dir, &["genrsa", "-out", &format!("{ca}.key"), "2048"]);
        let mut args = vec!["req", "-x509", "-new", "-key"];
        let key = format!("{ca}.key");
        let crt = format!("{ca}.crt");
        let subject = format!("/CN=layercache test {ca}");
        args.extend([
            key.as_str(),
            "-sha256",
            "-out",
            crt.as_str(),
            "-subj",
            subject.as_str(),
        ]);
        args.extend(days);
        openssl(&dir, &args);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
        .expect("write client.ext");
    // Cluster nodes announce 127.0.0.1: their certificate names it, and serves both ends of
    // the TLS cluster bus.
    std::fs::write(
        dir.join("node.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("write node.ext");
    for (name, ext) in [
        ("server", "server.ext"),
        ("client", "client.ext"),
        ("node", "node.ext"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let subject = format!("/CN={}", if name == "client" { "svc" } else { "localhost" });
        openssl(&dir, &["genrsa", "-out", &key, "2048"]);
        openssl(
            &dir,
            &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subject],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-sha256",
                "-extfile",
                ext,
                "-days",
                "2",
            ],
        );
    }
    Certs { dir }
}
