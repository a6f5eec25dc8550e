//! nixfly's engine: push Nix-built container images to an OCI registry and roll them out on Fly
//! Machines. The `nixfly` binary (`main.rs`) only parses the command line and reports; everything
//! else lives here, in one-way layers:
//!
//! - `cli` turns raw arguments, environment, fly.toml and the mkFlyDeploy settings file into one
//!   validated plan per command, then runs it;
//! - `push` (over `image`, `layer`, `blob`, `cache`, `registry`) streams an image to a registry;
//! - `rollout` (over `fly`) rolls a pushed image out on an app's Machines;
//! - `progress` and `error` are used by every layer.

pub mod blob;
pub mod cache;
pub mod cli;
pub mod error;
pub mod fly;
pub mod image;
pub mod layer;
pub mod net;
pub mod progress;
pub mod push;
pub mod registry;
pub mod retry;
pub mod rollout;
pub mod scratch;
pub mod settings;
pub mod signals;
