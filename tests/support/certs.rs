//! Certificates for a test, made with the openssl command: a CA of its own
//! and a server certificate it signed (not a CA itself, which rustls would
//! refuse as a server's certificate).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A test CA and the server certificate it issued.
pub struct Issued {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new CA, and a P-256 server certificate from it for `names` (DNS names
/// or IP addresses), in `dir` under `stem`.
pub fn issue(dir: &Path, stem: &str, names: &[&str]) -> Issued {
    std::fs::create_dir_all(dir).expect("create the certificates' directory");
    let p = |suffix: &str| dir.join(format!("{stem}{suffix}"));
    let s = |path: &Path| path.display().to_string();
    let (ca, ca_key, csr, ext) = (p("-ca.pem"), p("-ca.key"), p(".csr"), p(".ext"));
    let issued = Issued {
        ca,
        cert: p(".pem"),
        key: p(".key"),
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_path, ca_key_path) = (s(&issued.ca), s(&ca_key));
    let subject = format!("/CN={stem} test CA");
    args.extend([
        "-keyout",
        &ca_key_path,
        "-out",
        &ca_path,
        "-days",
        "2",
        "-subj",
        &subject,
    ]);
    openssl(&args);
    let (key_path, csr_path, cert_path, ext_path) =
        (s(&issued.key), s(&csr), s(&issued.cert), s(&ext));
    let subject = format!("/CN={}", names[0]);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key_path, "-out", &csr_path, "-subj", &subject]);
    openssl(&args);
    let sans: Vec<String> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(_) => format!("IP:{n}"),
            Err(_) => format!("DNS:{n}"),
        })
        .collect();
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nsubjectAltName={}\n",
            sans.join(",")
        ),
    )
    .expect("write the extensions file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr_path,
        "-CA",
        &ca_path,
        "-CAkey",
        &ca_key_path,
        "-CAcreateserial",
        "-out",
        &cert_path,
        "-days",
        "2",
        "-extfile",
        &ext_path,
    ]);
    issued
}
