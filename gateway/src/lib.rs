//! The scan gateway server: job intake over HTTPS, the SQLite store and spool,
//! the web and data services, health, maintenance, and the admin channel.
//! `main.rs` only parses the command line and calls into here.
//!
//! Module map:
//! - [`settings`]: the configuration file and environment, validated once;
//! - [`instance`]: the running instance, its start-up and shutdown;
//! - [`role`]: license activation, role (primary/secondary) and epoch;
//! - [`site`]: the shared configuration in use (workflows, users, limits);
//! - [`data`]: the data service lifecycle (store + spool + probes);
//! - [`store`]: SQLite, migrations, and all SQL;
//! - [`spool`]: durable page files;
//! - [`web`]: the router, device API, job intake, health, listeners;
//! - [`workers`]: the pipeline worker pool;
//! - [`admin`]: admin operations and the local admin channel;
//! - [`security`], [`tls`], [`proxy_protocol`], [`metrics`], [`error`]:
//!   the supporting pieces their names say.

pub mod admin;
pub mod cli;
pub mod data;
pub mod error;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod proxy_protocol;
pub mod rate;
pub mod role;
pub mod security;
pub mod settings;
pub mod site;
pub mod spool;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod web;
pub mod workers;
