//! The scan gateway server: job intake over HTTPS, the SQLite store and spool,
//! the web and data services, health, maintenance, and the admin channel.
//! `main.rs` only parses the command line and calls into here.
//!
//! The modules form layers; no module imports one of a higher layer, and
//! modules of one layer do not import each other in a loop
//! (`tests/tests/architecture.rs` checks both, from this list):
//!
//! 1. **values** — plain values and their rules, no state of the server:
//!    [`names`], [`manifest`], [`role`], [`clock`], [`security`],
//!    [`settings`], [`paths`], [`proxy_protocol`], [`logging`];
//! 2. **storage** — [`store`] (all SQL), [`spool`] (page files) and
//!    [`commit`] (a new job's directory and row made durable together, in
//!    batches);
//! 3. **core** — the server's state and policy: [`license`], [`data`],
//!    [`site`], [`declared`] (the declarative configuration file),
//!    [`changes`] (configuration changes and how they are carried out),
//!    [`metrics`], [`admission`], [`peer_ack`] (the replicated
//!    acknowledgement between intake and pair link), [`ownership`] (whether
//!    a pipeline step may start: the pair's lease, a clean stop's drain),
//!    and [`core`] (the
//!    `Core` value every adapter is given);
//! 4. **adapters** — each talks to one outside party through the core:
//!    [`web`] (devices over HTTPS), [`workers`] (the plugin pipeline),
//!    [`admin`] (admins over a Unix socket), [`pair`] (the other server),
//!    [`tls`], [`rate`], [`systemd`];
//! 5. **root** — [`instance`] wires them together; [`cli`] is the command
//!    line.

// values
pub mod clock;
pub mod logging;
pub mod manifest;
pub mod names;
pub mod paths;
pub mod proxy_protocol;
pub mod role;
pub mod security;
pub mod settings;

// storage
pub mod commit;
pub mod spool;
pub mod store;

// core
pub mod admission;
pub mod changes;
pub mod core;
pub mod data;
pub mod declared;
pub mod license;
pub mod metrics;
pub mod ownership;
pub mod peer_ack;
pub mod site;

// adapters
pub mod admin;
pub mod pair;
pub mod rate;
pub mod systemd;
pub mod tls;
pub mod web;
pub mod workers;

// root
pub mod cli;
pub mod instance;
