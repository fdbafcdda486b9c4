//! The kOS node: the core that owns the engine and the store, the network task around the
//! libp2p swarm, the control API, and the local development network. `kosd` (`src/main.rs`) is
//! its command line; `kos-bench` (`src/bin/kos-bench.rs`) measures it.

pub mod api;
pub mod core;
pub mod dashboard;
pub mod devnet;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod node;
pub mod peers;
pub mod policy;
pub mod progress;
pub mod vectors;
pub mod views;

/// Name of the node's own key in the vault.
pub const NODE_KEY: &str = "node";
