//! All integration tests in one binary (one link, one harness): each module is one area.

mod support;

mod appconfig_deploy;
mod cli;
mod deploy;
mod docs;
mod fly_double;
mod gzip_readers;
mod layer_cli;
mod network;
mod nix_flake;
mod nix_layer_plan;
mod nix_standin;
mod nix_template;
mod push_arch;
mod push_errors;
mod push_faults;
mod push_fixtures;
mod push_hostile;
mod push_plan;
mod push_reuse;
mod push_sources;
mod registry_client;
mod registry_creds;
mod registry_push;
mod rollout_failures;
mod rollout_fly_parity;
mod rollout_flyctl_oracle;
mod rollout_machine_checks;
mod rollout_preflight;
mod rollout_rolling;
mod rollout_strategies;
mod rollout_tag;
