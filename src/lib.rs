//! tokenfs: a read-only FUSE filesystem that serves short-lived credentials as files.
//!
//! Data flows one way: upstream → [`source`] → [`cell`] → [`fs`] → kernel.
//! [`issuer`] stands apart: an embedded Keycloak-compatible realm for `--dev`,
//! reached only over HTTP. [`daemon`] (the `mount` command) wires them together.

pub mod cell;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod fs;
pub mod harden;
pub mod issuer;
pub mod secret_file;
pub mod source;
pub mod status;
