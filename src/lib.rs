//! boxsync keeps a folder identical on two or more machines ("boxes") and lets a person
//! work with a peer's folder from an interactive shell.
//!
//! # Layout
//! - [`time`]: instants on the wire and on screen (RFC 3339 UTC, nanoseconds).
//! - [`share`]: the shared folder: safe relative paths, the index and its filters, hashes
//!   and their cache, per-file locks, the trash and atomic installation of downloads.
//! - [`protocol`]: the TCP wire protocol: frames, the framed connection, typed messages,
//!   the handshake.
//! - [`demo`]: sample folders for `boxsync demo`.
//! - [`history`]: the persistent log of requests made and served.
//! - [`local`]: this box: its id, shared folder and log.
//! - [`net`]: socket options (TCP congestion control).
//! - [`server`]: accept loop, per-connection handler, shutdown.
//! - [`transfer`]: moving file bytes and landing them verified (TCP).
//! - [`peer`]: the typed async client for one peer box.
//! - [`sync`]: auto-sync: planning from the last agreed state, acting safely, watching.
//! - [`shell`]: command parsing, execution, background jobs and rendering, and the
//!   interactive loop with completion, history, progress bars and a prompt.
//!
//! The library never prints: the shell and the CLI (`src/main.rs`) render.

pub mod demo;
pub mod history;
pub mod local;
pub mod net;
pub mod peer;
pub mod protocol;
pub mod server;
pub mod share;
pub mod shell;
pub mod sync;
pub mod time;
pub mod transfer;
