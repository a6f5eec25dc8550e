//! How nixfly's HTTP clients (the registry's and the Fly APIs') meet the network: which CAs they
//! trust and which proxy they go through, both from the environment as curl, OpenSSL and Go
//! read it, and what to say when a certificate is not trusted.
//!
//! Trusted: the CAs built into nixfly (webpki-roots: Mozilla's list), and the CAs of
//! `SSL_CERT_FILE` (else, on Linux, the system's bundle, where Go looks for it) and of the
//! directories in `SSL_CERT_DIR`, as Go reads them (`crypto/x509/root_unix.go`). The macOS
//! keychain is not read: loading it takes 0.3 s, and up to seconds on managed Macs
//! (rustls-native-certs issue #30), for every client; there a private CA goes in
//! `SSL_CERT_FILE`.

use std::ffi::OsString;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The CA bundles Go reads on Linux when `SSL_CERT_FILE` is unset, the first that exists
/// (`crypto/x509/root_linux.go`, `certFiles`): flyctl and skopeo trust what these hold, so a
/// CA added to the system (`update-ca-certificates`, NixOS' `security.pki`) is trusted by
/// nixfly too. Go's directories (`/etc/ssl/certs`, ...) hold the same CAs there, one file
/// each, and are not read.
#[cfg(not(target_os = "macos"))]
const SYSTEM_CA_FILES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
#[cfg(target_os = "macos")]
const SYSTEM_CA_FILES: [&str; 0] = [];

/// The CAs the HTTP clients trust beyond the built-in ones, read once per process.
#[derive(Default)]
struct Trust {
    certificates: Vec<reqwest::Certificate>,
    /// Where they came from, for `-v`.
    sources: Vec<String>,
    /// `SSL_CERT_FILE` or an `SSL_CERT_DIR` directory unreadable, or without a certificate.
    problems: Vec<String>,
}

static TRUST: OnceLock<Trust> = OnceLock::new();
static TRUST_REPORTED: AtomicBool = AtomicBool::new(false);

/// `builder`, trusting the CAs of `SSL_CERT_FILE`, `SSL_CERT_DIR` or the system besides the
/// built-in ones. The first client built says what could not be read (a warning) and, with
/// `-v`, where its CAs came from.
pub fn trusting(
    mut builder: reqwest::ClientBuilder,
    reporter: &crate::progress::Reporter,
) -> reqwest::ClientBuilder {
    let trust = TRUST.get_or_init(|| {
        load(
            std::env::var_os("SSL_CERT_FILE"),
            std::env::var_os("SSL_CERT_DIR"),
            &SYSTEM_CA_FILES,
        )
    });
    if !TRUST_REPORTED.swap(true, Ordering::Relaxed) {
        for problem in &trust.problems {
            reporter.warn(problem.clone());
        }
        if reporter.verbose() > 0 && !trust.sources.is_empty() {
            reporter.debug(format!(
                "trusting {} CA certificates from {}, besides the built-in ones",
                trust.certificates.len(),
                trust.sources.join(", ")
            ));
        }
    }
    for certificate in &trust.certificates {
        builder = builder.add_root_certificate(certificate.clone());
    }
    builder
}

/// The CAs of `file` (`SSL_CERT_FILE`; else the first of `system` that can be read) and of
/// every directory in `dirs` (`SSL_CERT_DIR`, separated by `:`), as Go's `loadSystemRoots`
/// takes them. A file in a directory that holds no certificate is passed over, as Go does.
fn load(file: Option<OsString>, dirs: Option<OsString>, system: &[&str]) -> Trust {
    let mut trust = Trust::default();
    match file.filter(|f| !f.is_empty()) {
        Some(file) => {
            let path = Path::new(&file);
            match std::fs::read(path) {
                Ok(bytes) if add_pem(&mut trust, &bytes) > 0 => {
                    trust.sources.push(format!("SSL_CERT_FILE={}", path.display()));
                }
                Ok(_) => trust.problems.push(format!(
                    "SSL_CERT_FILE is {}, which holds no PEM certificate nixfly can use: its CAs \
                     are not trusted",
                    path.display()
                )),
                Err(e) => trust.problems.push(format!(
                    "SSL_CERT_FILE is {}, which cannot be read ({e}): its CAs are not trusted",
                    path.display()
                )),
            }
        }
        None => {
            if let Some((path, bytes)) = system
                .iter()
                .find_map(|path| std::fs::read(path).ok().map(|bytes| (path, bytes)))
                && add_pem(&mut trust, &bytes) > 0
            {
                trust.sources.push(path.to_string());
            }
        }
    }
    for dir in dirs
        .filter(|d| !d.is_empty())
        .iter()
        .flat_map(std::env::split_paths)
    {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                trust.problems.push(format!(
                    "SSL_CERT_DIR names {}, which cannot be read ({e}): its CAs are not trusted",
                    dir.display()
                ));
                continue;
            }
        };
        let mut added = 0;
        for entry in entries.flatten() {
            // Through symbolic links (OpenSSL's hashed names point at the certificates).
            if let Ok(bytes) = std::fs::read(entry.path()) {
                added += add_pem(&mut trust, &bytes);
            }
        }
        if added > 0 {
            trust.sources.push(format!("SSL_CERT_DIR {}", dir.display()));
        } else {
            trust.problems.push(format!(
                "SSL_CERT_DIR names {}, which holds no PEM certificate nixfly can use",
                dir.display()
            ));
        }
    }
    trust
}

/// Add the PEM certificates of `bytes` rustls takes as trust anchors; returns how many. One
/// it refuses (a system store carries a few old CAs it cannot parse) is passed over, as
/// reqwest passes over those of a native store, rather than failing every client.
fn add_pem(trust: &mut Trust, bytes: &[u8]) -> usize {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut added = 0;
    for der in CertificateDer::pem_slice_iter(bytes).flatten() {
        if rustls::RootCertStore::empty().add(der.clone()).is_err() {
            continue;
        }
        if let Ok(certificate) = reqwest::Certificate::from_der(&der) {
            trust.certificates.push(certificate);
            added += 1;
        }
    }
    added
}

/// `builder` for a client of `host` (`host[:port]`): a loopback host is never sent through a
/// proxy, as Go's proxy rules never send one (`golang.org/x/net/http/httpproxy`, `useProxy`:
/// localhost and loopback IPs go direct), so a local registry or API is reached the way flyctl
/// and skopeo reach it while `HTTP_PROXY` is set; reqwest alone would send it to the proxy.
pub fn for_host(builder: reqwest::ClientBuilder, host: &str) -> reqwest::ClientBuilder {
    if crate::registry::client::is_loopback(host) {
        builder.no_proxy()
    } else {
        builder
    }
}

/// The variables the HTTP clients read: `SSL_CERT_FILE` and `SSL_CERT_DIR` (the CAs trusted
/// instead of the system's, besides the ones built into nixfly) and, through reqwest, the
/// proxies, with curl's rules.
pub const ENVIRONMENT: [&str; 10] = [
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `NAME=value` for each of `ENVIRONMENT` that is set, for `-v`: a proxy URL's user and
/// password are left out.
pub fn environment_in_use() -> Vec<String> {
    ENVIRONMENT
        .iter()
        .filter_map(|name| {
            let value = std::env::var(name).ok().filter(|v| !v.is_empty())?;
            Some(format!("{name}={}", shown(&value)))
        })
        .collect()
}

/// A variable's value as `-v` shows it: a URL without its user and password.
fn shown(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            format!("{url} (its credentials not shown)")
        }
        // Anything else with an `@` could still hide a password (`user:pass@host` without a
        // scheme parses as a URL of scheme `user`).
        _ if value.contains('@') => "(set; not shown)".to_string(),
        // A URL without credentials, a NO_PROXY list, a path, `host:port`.
        _ => value.to_string(),
    }
}

/// Whether a failed connection failed on the server's certificate: rustls says so as
/// "invalid peer certificate" (its `Error::InvalidCertificate`, `rustls/src/error.rs`)
/// somewhere in the error's sources.
pub fn is_certificate_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.to_string().contains("invalid peer certificate") {
            return true;
        }
        cause = error.source();
    }
    false
}

/// How to make a certificate from a private CA trusted (see the module comment).
pub fn trust_hint() -> String {
    let named = ["SSL_CERT_FILE", "SSL_CERT_DIR"].into_iter().find_map(|name| {
        let path = std::env::var_os(name).filter(|path| !path.is_empty())?;
        Some((name, path))
    });
    match named {
        Some((name, path)) => format!(
            "{name} is {}: check that it holds, in PEM, the CA that signs it",
            Path::new(&path).display()
        ),
        None if cfg!(target_os = "macos") => {
            "point SSL_CERT_FILE at a PEM file holding that CA (nixfly does not read the keychain)"
                .to_string()
        }
        None => "add that CA to the system's bundle (update-ca-certificates; on NixOS \
             security.pki.certificateFiles), or point SSL_CERT_FILE at a PEM file holding it"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{load, shown};
    use std::ffi::OsString;

    /// A CA certificate (P-256, made with openssl for this test; it signs nothing).
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBmjCCAT+gAwIBAgIUEYNND5JMSmY3t0DNM4UiGes/geQwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwObml4Zmx5IHVuaXQgQ0EwIBcNMjYxMjAzMjEzNDE0WhgPMjEy
NjExMDkyMTM0MTRaMBkxFzAVBgNVBAMMDm5peGZseSB1bml0IENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEUZe1mSgFAWXAXBCR6wUFEIzHKi0N8BzUyU2DZr7x
K0PA6pmOoJTuuZeIdvwjcNiTaqg1ouoBdWN4wyC+1PTQ6KNjMGEwHQYDVR0OBBYE
FDAjG5s0JxSDkWRnP1wvo3AdJOn/MB8GA1UdIwQYMBaAFDAjG5s0JxSDkWRnP1wv
o3AdJOn/MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgIEMAoGCCqGSM49
BAMCA0kAMEYCIQCLWBBb28GRa1cdZy7v60qpqyS2Z26XM4Uhr0466TVj1gIhAIwi
aH6EIdUBMML42OeF1hC4s2Z520pdHt26d7mx7T8h
-----END CERTIFICATE-----
";

    #[test]
    fn a_proxy_password_is_never_shown() {
        assert_eq!(
            shown("http://user:secret-42@proxy.corp:3128"),
            "http://proxy.corp:3128/ (its credentials not shown)"
        );
        assert_eq!(
            shown("socks5://token-only@proxy.corp"),
            "socks5://proxy.corp (its credentials not shown)"
        );
        assert_eq!(shown("user:secret-42@proxy.corp:3128"), "(set; not shown)");
        assert_eq!(shown("http://proxy.corp:3128"), "http://proxy.corp:3128");
        assert_eq!(shown("localhost,.corp,10.0.0.0/8"), "localhost,.corp,10.0.0.0/8");
        assert_eq!(shown("/etc/ssl/corp.pem"), "/etc/ssl/corp.pem");
    }

    fn os(path: &std::path::Path) -> Option<OsString> {
        Some(path.as_os_str().to_owned())
    }

    /// A PEM block rustls cannot take as a CA: its DER is not a certificate.
    const NOT_A_CERTIFICATE: &str =
        "-----BEGIN CERTIFICATE-----\naGVsbG8sIG5vdCBhIGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n";

    #[test]
    fn ssl_cert_file_replaces_the_system_bundle_and_what_it_cannot_use_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("corp.pem");
        std::fs::write(&bundle, format!("junk before\n{NOT_A_CERTIFICATE}{CA}")).unwrap();
        let system = dir.path().join("system.pem");
        std::fs::write(&system, format!("{CA}{CA}")).unwrap();
        let system = system.to_str().unwrap();

        let trust = load(os(&bundle), None, &[system]);
        assert_eq!(trust.certificates.len(), 1, "{:?}", trust.problems);
        assert_eq!(trust.sources, [format!("SSL_CERT_FILE={}", bundle.display())]);
        assert!(trust.problems.is_empty(), "{:?}", trust.problems);

        // Unset or empty: the first system bundle that can be read.
        for unset in [None, Some(OsString::new())] {
            let trust = load(unset, None, &["/nonexistent/ca.pem", system]);
            assert_eq!(trust.certificates.len(), 2);
            assert_eq!(trust.sources, [system]);
        }

        let missing = dir.path().join("missing.pem");
        let trust = load(os(&missing), None, &[system]);
        assert!(trust.certificates.is_empty());
        assert_eq!(trust.problems.len(), 1);
        assert!(
            trust.problems[0].starts_with(&format!(
                "SSL_CERT_FILE is {}, which cannot be read",
                missing.display()
            )),
            "{:?}",
            trust.problems
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, NOT_A_CERTIFICATE).unwrap();
        let trust = load(os(&empty), None, &[system]);
        assert!(trust.certificates.is_empty());
        assert!(
            trust.problems[0].contains("holds no PEM certificate"),
            "{:?}",
            trust.problems
        );
    }

    #[test]
    fn ssl_cert_dir_adds_every_certificate_of_its_directories() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::write(certs.join("corp.crt"), CA).unwrap();
        std::fs::write(certs.join("README"), "not a certificate").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(certs.join("corp.crt"), certs.join("abcd1234.0")).unwrap();
        let missing = dir.path().join("missing");
        let dirs = std::env::join_paths([&certs, &missing]).unwrap();

        let trust = load(None, Some(dirs), &[]);
        assert_eq!(trust.certificates.len(), if cfg!(unix) { 2 } else { 1 });
        assert_eq!(trust.sources, [format!("SSL_CERT_DIR {}", certs.display())]);
        assert_eq!(trust.problems.len(), 1, "{:?}", trust.problems);
        assert!(
            trust.problems[0].starts_with(&format!(
                "SSL_CERT_DIR names {}, which cannot be read",
                missing.display()
            )),
            "{:?}",
            trust.problems
        );
    }
}
