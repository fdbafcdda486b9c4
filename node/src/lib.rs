//! The kOS node: the core that owns the engine and the store, the network task around the
//! libp2p swarm, the control API, and the local development network. `kosd` (`src/main.rs`) is
//! its command line; `kos-bench` (`src/bin/kos-bench.rs`) measures it.

pub mod api;
pub mod core;
pub mod devnet;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod node;
pub mod peers;
pub mod policy;
pub mod views;

/// The kind of an export file's body.
pub const EXPORT_KIND: &str = "kos-export/1";
/// Domain prefix of the statement an export's signature covers.
pub const EXPORT_DOMAIN: &[u8] = b"kos-export/1\0";

/// What an export's signature covers: [`EXPORT_DOMAIN`] followed by the body's exact bytes.
pub fn export_statement(body: &[u8]) -> Vec<u8> {
    let mut m = EXPORT_DOMAIN.to_vec();
    m.extend_from_slice(body);
    m
}
