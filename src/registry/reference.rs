//! Image references: `host[:port]/repository[:tag][@sha256:<hex>]`, and their parts that are
//! checked once: [`Tag`], [`Digest`], [`PinnedReference`].

use super::digest::Digest;
use std::fmt;
use std::str::FromStr;

/// The host used when a reference names none: Fly's registry, overridable like flyctl does.
pub const FLY_REGISTRY_HOST: &str = "registry.fly.io";

/// Docker Hub's names for itself in references: `docker.io` is what Docker writes, and what
/// its auth files key credentials by (with `index.docker.io`).
pub fn is_docker_hub(host: &str) -> bool {
    ["docker.io", "index.docker.io", "registry-1.docker.io"]
        .iter()
        .any(|h| host.eq_ignore_ascii_case(h))
}

/// The host the registry API answers on: Docker Hub's is `registry-1.docker.io`, where
/// `docker.io` itself redirects to a web page (containers/image `docker/docker_client.go`,
/// `newDockerClient`; go-containerregistry `pkg/name/registry.go`). Every other host is its own.
pub fn api_host(registry: &str) -> &str {
    if is_docker_hub(registry) {
        "registry-1.docker.io"
    } else {
        registry
    }
}

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
    #[error(
        "image reference {reference:?} has a scheme: write host/repository[:tag] without \
         {scheme}://, e.g. {without} (--plain-http chooses HTTP, and loopback hosts use it anyway)"
    )]
    Scheme {
        reference: String,
        scheme: String,
        without: String,
    },
    #[error(
        "image {reference} is a tag, not a digest; machines must get an immutable reference: pass \
         host/repo@sha256:... (printed by `nixfly push`), or use `nixfly deploy` which pushes and \
         deploys the digest"
    )]
    NotPinned { reference: String },
}

/// A tag: 1-128 letters, digits, '_', '.' and '-', not starting with '.' or '-' (the
/// distribution spec's `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tag {tag:?}: a tag is 1-128 characters of letters, digits, '_', '.' and '-', and does \
     not start with '.' or '-'"
)]
pub struct TagError {
    pub tag: String,
}

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(tag: &str) -> Result<Self, TagError> {
        let mut bytes = tag.bytes();
        let valid = matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
            && tag.len() <= 128
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Tag(tag.to_string()))
        } else {
            Err(TagError { tag: tag.into() })
        }
    }
}

/// A tag reads as the text it was parsed from.
impl std::ops::Deref for Tag {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed image reference. `registry` is `host[:port]` exactly as written (lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

/// Docker's rule: a reference's first path component is a registry host when it contains '.'
/// or ':' or is `localhost`.
fn is_host_component(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

/// Whether `reference` names its registry (Docker's rule), rather than leaving it to a default.
pub fn names_registry(reference: &str) -> bool {
    let rest = reference.trim().split('@').next().unwrap_or_default();
    rest.split_once('/')
        .is_some_and(|(first, _)| is_host_component(first))
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
        if let Some((scheme, without)) = reference.split_once("://") {
            return Err(ReferenceError::Scheme {
                reference: reference.into(),
                scheme: scheme.into(),
                without: without.into(),
            });
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.parse::<Digest>().map_err(|_| ReferenceError::Digest {
                    reference: reference.into(),
                    digest: digest.into(),
                })?;
                (rest, Some(digest))
            }
            None => (reference, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if is_host_component(first) => (first.to_ascii_lowercase(), path),
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
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        // Docker Hub's official images live under `library/` (`docker.io/nginx` is
        // `docker.io/library/nginx`), as Docker and containers/image read it.
        let official;
        let repository = if is_docker_hub(&registry) && !repository.contains('/') {
            official = format!("library/{repository}");
            official.as_str()
        } else {
            repository
        };
        validate_repository(repository).map_err(|why| ReferenceError::Repository {
            reference: reference.into(),
            name: repository.into(),
            why,
        })?;
        let tag = tag
            .map(|tag| {
                tag.parse::<Tag>().map_err(|_| ReferenceError::Tag {
                    reference: reference.into(),
                    tag: tag.into(),
                })
            })
            .transpose()?;
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The tag or digest the manifest is addressed by, if any (digest wins).
    pub fn tag_or_digest(&self) -> Option<&str> {
        self.digest
            .as_ref()
            .map(Digest::as_str)
            .or(self.tag.as_ref().map(Tag::as_str))
    }

    /// This repository's manifest `digest`: the immutable reference a deploy uses.
    pub fn pinned(&self, digest: Digest) -> PinnedReference {
        PinnedReference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            digest,
        }
    }
}

/// `host/repository@sha256:...`: an image by content, what machines get (a tag can move).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedReference {
    pub registry: String,
    pub repository: String,
    pub digest: Digest,
}

impl PinnedReference {
    /// Parse a reference that must carry a digest (a tag beside it is dropped: the digest is
    /// what the registry serves).
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let reference = Reference::parse(text)?;
        match &reference.digest {
            Some(digest) => Ok(reference.pinned(digest.clone())),
            None => Err(ReferenceError::NotPinned {
                reference: text.trim().into(),
            }),
        }
    }
}

impl fmt::Display for PinnedReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest)
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
        assert_eq!(r.tag.as_ref().map(Tag::as_str), Some("v1.2"));
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(r.tag_or_digest(), Some(D));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/team/app:v1.2@{D}"));
        assert_eq!(
            r.pinned(D.parse().unwrap()).to_string(),
            format!("127.0.0.1:5000/team/app@{D}")
        );
    }

    #[test]
    fn a_bare_name_goes_to_the_default_host() {
        let r = parse("myapp:deployment-01").unwrap();
        assert_eq!(r.registry, "registry.fly.io");
        assert_eq!(r.repository, "myapp");
        assert_eq!(r.tag.map(|t| t.to_string()).as_deref(), Some("deployment-01"));
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

    /// Docker Hub's official images are `library/<name>`, and its API is another host.
    #[test]
    fn docker_hub_names_are_read_as_docker_reads_them() {
        let r = parse("docker.io/nginx:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/nginx")
        );
        let r = parse("docker.io/someone/app").unwrap();
        assert_eq!(r.repository, "someone/app");
        let r = parse("index.docker.io/redis").unwrap();
        assert_eq!(r.repository, "library/redis");
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("registry.fly.io"), "registry.fly.io");
        // Elsewhere a one-part name stays as written.
        assert_eq!(parse("quay.io/app").unwrap().repository, "app");
    }

    #[test]
    fn bad_references_are_rejected_with_the_reason() {
        assert_eq!(parse("  "), Err(ReferenceError::Empty));
        let err = parse("https://127.0.0.1:5000/demo:v1").unwrap_err();
        assert_eq!(
            err,
            ReferenceError::Scheme {
                reference: "https://127.0.0.1:5000/demo:v1".into(),
                scheme: "https".into(),
                without: "127.0.0.1:5000/demo:v1".into(),
            }
        );
        assert!(
            err.to_string()
                .contains("without https://, e.g. 127.0.0.1:5000/demo:v1"),
            "{err}"
        );
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

    #[test]
    fn tags_follow_the_distribution_grammar() {
        for good in ["latest", "v1.2.3", "_x", "deployment-01JD", &"a".repeat(128)] {
            assert_eq!(good.parse::<Tag>().unwrap().as_str(), good);
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", &"a".repeat(129)] {
            let err = bad.parse::<Tag>().unwrap_err();
            assert_eq!(err, TagError { tag: bad.into() });
            assert!(
                err.to_string().starts_with(&format!("invalid tag {bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_pinned_reference_needs_a_digest_and_keeps_only_it() {
        let pinned = PinnedReference::parse(&format!("127.0.0.1:5000/app:v1@{D}")).unwrap();
        assert_eq!(pinned.to_string(), format!("127.0.0.1:5000/app@{D}"));
        assert_eq!(pinned.digest.as_str(), D);
        let err = PinnedReference::parse(" 127.0.0.1:5000/app:v1 ").unwrap_err();
        assert_eq!(
            err,
            ReferenceError::NotPinned {
                reference: "127.0.0.1:5000/app:v1".into()
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("is a tag, not a digest")
                && text.contains("nixfly deploy")
                && text.contains("@sha256"),
            "{text}"
        );
        assert!(matches!(
            PinnedReference::parse("127.0.0.1:5000/app@sha256:ABC"),
            Err(ReferenceError::Digest { .. })
        ));
    }
}
