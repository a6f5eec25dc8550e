//! Everything about talking to Fly.io: token discovery and auth headers, fly.toml, the Machines
//! API client, the platform API (release records) and the types they exchange.

pub mod api;
pub mod appconfig;
pub mod macaroon;
pub mod platform;
pub mod token;
pub mod types;

pub use token::FlyToken;
