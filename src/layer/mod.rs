//! Layers made from Nix store paths: the reproducible tar (`store_tar`) that a layer plan
//! records digests of at build time and regenerates at push time.

#[cfg(test)]
pub mod fixture;
pub mod plan;
pub mod store_tar;
mod thread_reader;
