//! `nixfly registry`: hidden low-level commands that drive the registry client one call at a
//! time. Tests use them to exercise the client through the real binary; they also help when
//! a registry misbehaves (`-vv` shows every request).

use super::registry::RegistryOptions;
use crate::progress::Reporter;
use crate::registry::blob::Resend;
use crate::registry::client::UploadMode;
use crate::registry::manifest::MediaType;
use crate::registry::{Digest, Reference, RegistryClient};
use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

#[derive(Args, Debug)]
pub struct RegistryCommand {
    #[command(flatten)]
    pub registry: RegistryOptions,
    /// How blob data is uploaded.
    #[arg(long, value_enum, default_value_t = UploadMode::Stream, value_name = "MODE")]
    pub upload_mode: UploadMode,
    /// Bytes of a streamed upload kept for resending after a failure.
    #[arg(long, value_name = "BYTES")]
    pub upload_window: Option<u64>,
    /// PATCH size in chunked mode.
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Print the size of a blob, or `absent`.
    Exists {
        /// The repository, `host/repo`.
        reference: String,
        /// The blob's digest, `sha256:<hex>`.
        digest: Digest,
    },
    /// Stream a file up as a blob through the resumable upload; prints `digest size`.
    PushBlob {
        /// The repository, `host/repo`.
        reference: String,
        /// The file whose bytes are the blob.
        file: PathBuf,
        /// The digest the data must have.
        #[arg(long)]
        expected: Option<Digest>,
    },
    /// Upload a small file as a blob in one PUT; prints `digest size`.
    PushBytes {
        /// The repository, `host/repo`.
        reference: String,
        /// The file whose bytes are the blob.
        file: PathBuf,
    },
    /// Mount a blob from another repository; prints `mounted` or `not mounted`.
    Mount {
        /// The repository to mount into, `host/repo`.
        reference: String,
        /// The blob's digest, `sha256:<hex>`.
        digest: Digest,
        /// The repository of the same registry that has the blob.
        #[arg(long)]
        from: String,
    },
    /// Store a manifest under the reference's tag (or digest); prints its digest.
    PutManifest {
        /// Where to store it, `host/repo:tag` or `host/repo@sha256:<hex>`.
        reference: String,
        /// The manifest's bytes, stored as they are.
        file: PathBuf,
        /// Its media type (the Content-Type sent).
        #[arg(long)]
        media_type: String,
    },
    /// Print the digest and media type of a manifest, or `absent`.
    GetManifest {
        /// The manifest, `host/repo:tag` or `host/repo@sha256:<hex>`.
        reference: String,
    },
}

fn client(
    command: &RegistryCommand,
    reference: &str,
    reporter: &Reporter,
) -> anyhow::Result<(RegistryClient, Reference)> {
    let reference = Reference::parse(reference)?;
    let mut options = command
        .registry
        .client_options(&reference.registry, || Ok(crate::fly::FlyToken::discover(None)?))?;
    options.upload_mode = command.upload_mode;
    if let Some(window) = command.upload_window {
        options.upload_window = window;
    }
    if let Some(size) = command.chunk_size {
        options.chunk_size = size;
    }
    let client = RegistryClient::new(&reference.registry, options, reporter.clone())?;
    Ok((client, reference))
}

pub async fn run(command: RegistryCommand, reporter: Reporter) -> anyhow::Result<()> {
    match &command.action {
        Action::Exists { reference, digest } => {
            let (client, r) = client(&command, reference, &reporter)?;
            match client.blob_exists(&r.repository, digest).await? {
                Some(size) => reporter.result(&size.to_string()),
                None => reporter.result("absent"),
            }
        }
        Action::PushBlob {
            reference,
            file,
            expected,
        } => {
            let (client, r) = client(&command, reference, &reporter)?;
            let mut input = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let reader = tokio::spawn(async move {
                loop {
                    let mut buf = vec![0u8; 256 << 10];
                    match input.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                                break;
                            }
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            break;
                        }
                    }
                }
            });
            let pushed = client
                .push_blob_stream(&r.repository, rx, expected.as_ref(), Resend::Window)
                .await;
            reader.abort();
            let pushed = pushed?;
            reporter.result(&format!("{} {}", pushed.digest, pushed.size));
        }
        Action::PushBytes { reference, file } => {
            let (client, r) = client(&command, reference, &reporter)?;
            let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let pushed = client.push_blob_bytes(&r.repository, Bytes::from(data)).await?;
            reporter.result(&format!("{} {}", pushed.digest, pushed.size));
        }
        Action::Mount {
            reference,
            digest,
            from,
        } => {
            let (client, r) = client(&command, reference, &reporter)?;
            let mounted = client.mount_blob(&r.repository, digest, from).await?;
            reporter.result(if mounted { "mounted" } else { "not mounted" });
        }
        Action::PutManifest {
            reference,
            file,
            media_type,
        } => {
            let (client, r) = client(&command, reference, &reporter)?;
            let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let target = r
                .tag_or_digest()
                .context("the reference needs a :tag or @digest to store a manifest under")?;
            let media_type = MediaType::from(media_type.as_str());
            let digest = client
                .put_manifest(&r.repository, target, &media_type, Bytes::from(data))
                .await?;
            reporter.result(&r.pinned(digest).to_string());
        }
        Action::GetManifest { reference } => {
            let (client, r) = client(&command, reference, &reporter)?;
            let target = r.tag_or_digest().unwrap_or("latest");
            match client.get_manifest(&r.repository, target).await? {
                Some(m) => reporter.result(&format!("{} {}", m.digest, m.media_type)),
                None => reporter.result("absent"),
            }
        }
    }
    Ok(())
}
