//! OCI distribution client: references, auth, blobs and manifests.
//!
//! One `RegistryClient` per registry host; every call names the repository. Uploads hash what
//! they send and recover from cut connections and registry errors on their own.

pub mod auth;
pub mod blob;
pub mod client;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod reference;

pub use client::RegistryClient;
pub use digest::Digest;
pub use reference::Reference;
