//! Everything about talking to Fly.io: token discovery and auth headers, the Machines API
//! client, the platform API (release records) and the types they exchange.

pub mod appconfig;
pub mod token;

pub use token::FlyToken;
