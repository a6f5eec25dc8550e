//! Fly Machines run linux/amd64 (x86_64): an image built for another architecture pushes fine
//! and then fails at exec on every machine. Its config says which it is, so a push refuses it
//! as soon as the config is known, unless `--allow-arch` says the user knows better.

use serde_json::Value;

/// What Fly Machines run, in the OCI config's words.
pub const FLY_ARCHITECTURE: &str = "amd64";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{source_name} is built for {os}/{architecture}, but Fly Machines run linux/amd64 (x86_64): \
     its programs would fail to start on every machine. Build the image for x86_64-linux: in a \
     flake, take the image from the x86_64-linux package set (e.g. \
     `packages.x86_64-linux.image`, or `pkgs.pkgsCross.gnu64` on an arm64 machine), with an \
     x86_64 remote builder or binfmt emulation if this machine is not x86_64. Pass --allow-arch \
     to push it anyway"
)]
pub struct ForeignArchitecture {
    pub source_name: String,
    pub os: String,
    pub architecture: String,
}

/// Refuse a config whose `architecture` (or `os`) is not what Fly runs. A config that names no
/// architecture is let through: nothing says it is wrong.
pub fn check(config: &[u8], source_name: &str) -> Result<(), ForeignArchitecture> {
    let Ok(config) = serde_json::from_slice::<Value>(config) else {
        // Unreadable configs are the image readers' to report.
        return Ok(());
    };
    let field = |name: &str| config.get(name).and_then(Value::as_str).unwrap_or_default();
    let (architecture, os) = (field("architecture"), field("os"));
    let foreign_arch = !architecture.is_empty() && architecture != FLY_ARCHITECTURE;
    let foreign_os = !os.is_empty() && os != "linux";
    if foreign_arch || foreign_os {
        return Err(ForeignArchitecture {
            source_name: source_name.to_string(),
            os: if os.is_empty() { "linux" } else { os }.to_string(),
            architecture: if architecture.is_empty() {
                FLY_ARCHITECTURE
            } else {
                architecture
            }
            .to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_linux_amd64_passes() {
        let config = |arch: &str, os: &str| format!(r#"{{"architecture":"{arch}","os":"{os}"}}"#);
        assert_eq!(check(config("amd64", "linux").as_bytes(), "img"), Ok(()));
        assert_eq!(check(br#"{"rootfs":{}}"#, "img"), Ok(()));
        let err = check(config("arm64", "linux").as_bytes(), "./result").unwrap_err();
        assert_eq!(err.architecture, "arm64");
        let text = err.to_string();
        for needle in ["./result", "linux/arm64", "x86_64-linux", "--allow-arch"] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(check(config("amd64", "windows").as_bytes(), "img").is_err());
    }
}
