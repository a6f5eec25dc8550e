//! How nixfly's HTTP clients (the registry's and the Fly APIs') meet the network: which CAs they
//! trust and which proxy they go through, both from the environment as curl, OpenSSL and Go
//! read it, and what to say when a certificate is not trusted.

/// The variables the HTTP clients read through their libraries: rustls-native-certs
/// (`SSL_CERT_FILE`, `SSL_CERT_DIR`: the CAs trusted instead of the system's store, beside the
/// ones built into nixfly) and reqwest (the proxies, with curl's rules).
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

/// How to make a certificate from a private CA trusted: nixfly trusts the CAs built into it
/// and the system's (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace the system's, as for OpenSSL
/// and Go).
pub fn trust_hint() -> String {
    let named = ["SSL_CERT_FILE", "SSL_CERT_DIR"].into_iter().find_map(|name| {
        let path = std::env::var_os(name).filter(|path| !path.is_empty())?;
        Some((name, path))
    });
    match named {
        Some((name, path)) => format!(
            "{name} is {}: check that it holds, in PEM, the CA that signs it",
            std::path::Path::new(&path).display()
        ),
        None => {
            "add that CA to the system's store, or point SSL_CERT_FILE at a PEM file holding it".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

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
}
