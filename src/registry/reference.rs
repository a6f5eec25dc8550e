//! Image references: `host[:port]/repository[:tag][@sha256:<hex>]`.

use std::fmt;

/// The host used when a reference names none: Fly's registry, overridable like flyctl does.
pub const FLY_REGISTRY_HOST: &str = "registry.fly.io";

/// `FLY_REGISTRY_HOST`, or registry.fly.io.
pub fn default_registry_host() -> String {
    std::env::var("FLY_REGISTRY_HOST")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| FLY_REGISTRY_HOST.to_string())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference is empty; expected host/repository[:tag], e.g. registry.fly.io/myapp:v1")]
    Empty,
    #[error(
        "invalid repository name {name:?} in image reference {reference:?}: {why}; names are lowercase \
         letters and digits separated by '.', '_', '-' or '/', e.g. registry.fly.io/myapp"
    )]
    Repository {
        reference: String,
        name: String,
        why: &'static str,
    },
    #[error(
        "invalid tag {tag:?} in image reference {reference:?}: a tag is 1-128 characters of letters, \
         digits, '_', '.' and '-', and does not start with '.' or '-'"
    )]
    Tag { reference: String, tag: String },
    #[error(
        "invalid digest {digest:?} in image reference {reference:?}: expected sha256: followed by 64 \
         lowercase hex digits"
    )]
    Digest { reference: String, digest: String },
    #[error("invalid registry host {host:?} in image reference {reference:?}")]
    Host { reference: String, host: String },
}

/// A parsed image reference. `registry` is `host[:port]` exactly as written (lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parse with the default host (`FLY_REGISTRY_HOST` or registry.fly.io) for references
    /// that name none.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        Self::parse_with_default_host(text, &default_registry_host())
    }

    /// Parse; the first path component is a host when it contains '.' or ':' or is
    /// `localhost` (Docker's rule), otherwise `default_host` is used.
    pub fn parse_with_default_host(text: &str, default_host: &str) -> Result<Self, ReferenceError> {
        let reference = text.trim();
        if reference.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                if !is_sha256_digest(digest) {
                    return Err(ReferenceError::Digest {
                        reference: reference.into(),
                        digest: digest.into(),
                    });
                }
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_ascii_lowercase(), path)
            }
            _ => (default_host.to_ascii_lowercase(), rest),
        };
        if !is_valid_host(&registry) {
            return Err(ReferenceError::Host {
                reference: reference.into(),
                host: registry,
            });
        }
        // A ':' after the last '/' starts the tag; earlier ones belong to the host.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        validate_repository(repository).map_err(|why| ReferenceError::Repository {
            reference: reference.into(),
            name: repository.into(),
            why,
        })?;
        if let Some(tag) = &tag
            && !is_valid_tag(tag)
        {
            return Err(ReferenceError::Tag {
                reference: reference.into(),
                tag: tag.clone(),
            });
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The tag or digest the manifest is addressed by, if any (digest wins).
    pub fn tag_or_digest(&self) -> Option<&str> {
        self.digest.as_deref().or(self.tag.as_deref())
    }

    /// `host/repository@digest`: the immutable reference a deploy uses.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}/{}@{}", self.registry, self.repository, digest)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

pub fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

pub fn is_valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((name, port)) if !port.contains(']') => (name, Some(port)),
        _ => (host, None),
    };
    let name_ok = !name.is_empty()
        && (name.starts_with('[') && name.ends_with(']')
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    name_ok && port_ok
}

/// The distribution grammar: components of `[a-z0-9]+` joined by `.`, `_`, `__` or `-`+,
/// separated by `/`.
fn validate_repository(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > 255 {
        return Err("the name is longer than 255 characters");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return Err("it has an empty path component");
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("it contains uppercase letters");
        }
        if !component
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("it contains a character other than a-z, 0-9, '.', '_', '-' and '/'");
        }
        let first = component.as_bytes()[0];
        let last = component.as_bytes()[component.len() - 1];
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err("a path component starts or ends with a separator");
        }
        if component.contains("..")
            || component.contains("___")
            || component.contains("._")
            || component.contains("_.")
        {
            return Err("it has two separators in a row");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(text: &str) -> Result<Reference, ReferenceError> {
        Reference::parse_with_default_host(text, "registry.fly.io")
    }

    #[test]
    fn full_references_split_into_host_repository_tag_and_digest() {
        let r = parse(&format!("127.0.0.1:5000/team/app:v1.2@{D}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.tag_or_digest(), Some(D));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/team/app:v1.2@{D}"));
        assert_eq!(r.with_digest(D), format!("127.0.0.1:5000/team/app@{D}"));
    }

    #[test]
    fn a_bare_name_goes_to_the_default_host() {
        let r = parse("myapp:deployment-01").unwrap();
        assert_eq!(r.registry, "registry.fly.io");
        assert_eq!(r.repository, "myapp");
        assert_eq!(r.tag.as_deref(), Some("deployment-01"));
        let r = parse("localhost/app").unwrap();
        assert_eq!((r.registry.as_str(), r.tag), ("localhost", None));
        let r = parse("library/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("registry.fly.io", "library/app")
        );
        let r = parse("Registry.Example.com:443/app").unwrap();
        assert_eq!(r.registry, "registry.example.com:443");
    }

    #[test]
    fn bad_references_are_rejected_with_the_reason() {
        assert_eq!(parse("  "), Err(ReferenceError::Empty));
        let err = parse("registry.fly.io/MyApp").unwrap_err().to_string();
        assert!(err.contains("uppercase") && err.contains("MyApp"), "{err}");
        assert!(matches!(parse("host.io/app:-x"), Err(ReferenceError::Tag { .. })));
        assert!(matches!(
            parse("host.io/app@sha256:abc"),
            Err(ReferenceError::Digest { .. })
        ));
        assert!(matches!(
            parse("host.io:99999/app"),
            Err(ReferenceError::Host { .. })
        ));
        assert!(matches!(
            parse("host.io/app//x"),
            Err(ReferenceError::Repository { .. })
        ));
        assert!(matches!(
            parse("host.io/-app"),
            Err(ReferenceError::Repository { .. })
        ));
        assert!(matches!(
            parse("host.io/"),
            Err(ReferenceError::Repository { .. })
        ));
    }
}
