//! Content digests, checked once where they enter (a reference, a file, a registry header) and
//! computed in one place. nixfly makes and verifies sha256 only, so that is all it accepts.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// `sha256:<64 lowercase hex digits>`: a blob, layer (diff_id) or manifest digest. Checked
/// with oci-spec's `Sha256Digest`; kept as the text (two words rather than oci-spec's seven,
/// since digests sit in every error and result) and turned into oci-spec's `Digest` for
/// descriptors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest(Box<str>);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {text:?}: expected sha256: followed by 64 lowercase hex digits")]
pub struct DigestError {
    pub text: String,
}

impl Digest {
    /// The digest of some bytes.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest of everything a hasher was fed.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())).into())
    }

    /// The 64 hex digits, without `sha256:` (blob file names in OCI layouts and archives).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// oci-spec's form, for its descriptors.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        let sha256: oci_spec::image::Sha256Digest = self.hex().parse().expect("checked when made");
        sha256.into()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, DigestError> {
        let error = || DigestError { text: text.into() };
        let hex = text.strip_prefix("sha256:").ok_or_else(error)?;
        // oci-spec checks the length and that the digits are lowercase hex.
        hex.parse::<oci_spec::image::Sha256Digest>()
            .map_err(|_| error())?;
        Ok(Digest(text.into()))
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;

    fn try_from(text: String) -> Result<Self, DigestError> {
        text.parse()
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_sha256_digest_parses_and_prints_as_written() {
        let text = format!("sha256:{HEX}");
        let digest: Digest = text.parse().unwrap();
        assert_eq!(digest.to_string(), text);
        assert_eq!(digest.hex(), HEX);
        assert_eq!(digest.to_oci().to_string(), text);
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
    }

    #[test]
    fn the_computed_digest_is_sha256sums() {
        // `printf abc | sha256sum`
        assert_eq!(
            Digest::sha256_of(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn anything_but_sha256_and_64_lowercase_hex_digits_is_refused_by_name() {
        for bad in [
            String::new(),
            HEX.to_string(),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha512:{HEX}{HEX}"),
            format!("sha256:{}g", &HEX[1..]),
            format!(" sha256:{HEX}"),
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid digest {bad:?}: expected sha256: followed by 64 lowercase hex digits")
            );
        }
        let err = serde_json::from_str::<Digest>("\"sha256:abc\"").unwrap_err();
        assert!(err.to_string().contains("invalid digest \"sha256:abc\""), "{err}");
    }
}
