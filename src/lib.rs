//! boxsync keeps a folder identical on two or more machines ("boxes") and lets a person
//! work with a peer's folder from an interactive shell.
//!
//! # Layout
//! From the lowest layer up: each module uses only those listed before it.
//! - [`text`]: text from a peer or the disk made safe to show and to log: control and bidi
//!   characters escaped (unambiguously), log copies bounded, JSON kept terminal-safe.
//! - [`time`]: instants on the wire and on screen (RFC 3339 UTC, nanoseconds).
//! - [`units`]: sizes, rates and durations as people read them.
//! - [`parse`]: values people type (rates, peer addresses), checked one way everywhere.
//! - [`share`]: the shared folder: safe relative paths, what the box keeps to itself
//!   (`share::ignore`, `.boxsyncignore`), the index and its filters, hashes
//!   and their cache, files as block lists (`share::blocks`, BLAKE3 chaining values), the
//!   index database (`share::index`, SQLite) and the folder's change numbers
//!   (`share::numbering`), per-file locks, the trash (of a file written in bursts, only
//!   the latest intermediate version: `share::bursts`) and atomic installation of
//!   downloads, the parts kept to resume downloads (`share::resume`), the budget of
//!   answers waiting for slow clients, the one box allowed per folder (`share::owner`, a
//!   lock on `.boxsync/box.lock`), what a read leaves out and why (`share::unshared`:
//!   symlinks, special files), where the state lives (`share::state`: in the folder, or
//!   under `$XDG_STATE_HOME` for a read-only one).
//! - [`types`]: the shared nouns: a box's ID (the hash of its key, with check characters)
//!   and where to reach one, one version of a file, a transport.
//! - [`discovery`]: local discovery: boxes announce their ID and port by broadcast, so
//!   that a peer named by ID alone can be found on the local network (only proposed: the
//!   handshake still proves the ID).
//! - [`identity`]: this box's key pair, kept owner-only in `.boxsync/`, and its ID.
//! - [`trust`]: the boxes this box talks to: kept in `.boxsync/trusted.json`, or for this
//!   run only; read again when the file changes.
//! - [`invite`]: one-step pairing: one-time secrets kept in `.boxsync/invites/`, and the
//!   line `boxsync invite` prints.
//! - [`protocol`]: the TCP wire protocol below the requests: the TLS 1.3 channel with both
//!   sides' keys pinned, frames, the framed connection, the greeting and the answers, the
//!   handshake, and the session that carries many streams in both directions over one
//!   connection (`protocol::mux`).
//! - [`net`]: socket options (TCP congestion control).
//! - [`links`]: the sessions this box holds with its peers, one per peer whoever dialed
//!   (the tie rule when both dial at once), and where each peer was last reached.
//! - [`history`]: the persistent log of requests made and served.
//! - [`local`]: this box: its identity, trust, shared folder and log.
//! - [`transfer`]: moving file bytes and landing them verified, over TCP and UDP, once a
//!   request is sent; a download made from the peer's block list fetches only the blocks
//!   no local file has (`transfer::delta`); UDP's protocol is a pure state machine pair (`transfer::udp::proto`)
//!   that thin tokio drivers run, every datagram sealed with keys from the TLS session
//!   (`transfer::udp::seal`).
//! - [`requests`]: one module per request: its wire form, the server's handling and the
//!   client's reading of the answer; sync's notices are noted there for sync to take (the
//!   `installed` ones in an inbox on disk until sync has recorded them).
//! - [`server`]: accept loop, per-connection handler (dispatching to [`requests`]),
//!   shutdown.
//! - [`peer`]: the typed async client for one peer box: connection pool, retries, log.
//! - [`sync`]: auto-sync: a pure planner (each side classified against the last agreed
//!   state, one match over the rules, for the paths changed since the last plan), rounds
//!   that carry the plan out, the backoff of files that do not fit (`sync::backoff`),
//!   watching.
//! - [`config`]: a box's settings kept in `.boxsync/config.toml` (listen address, peers and
//!   trust, sync period, rate cap, trash days...), in the flags' own texts, checked when
//!   read; the command line's flags merged over them; written back atomically.
//! - [`shell`]: command parsing, execution, background jobs and rendering (listings
//!   written as they arrive, in bounded memory), the current remote folder of `cd` and the
//!   patterns that pick files (`shell::remote`), several files downloaded a few at a time
//!   (`shell::many`), and the interactive loop with completion, history, progress bars, a
//!   prompt and the question before a very long listing.
//! - [`control`]: the control socket (`.boxsync/control.sock`, owner-only) through which
//!   `boxsync status` asks the box running on a folder for its peers, sync's state and the
//!   transfers in flight.
//! - [`demo`]: sample folders for `boxsync demo`.
//!
//! The binary (`src/main.rs`, with `src/cli.rs` turning the command line into a validated
//! configuration) starts the server, sync and the shell.
//!
//! The library never prints: the shell and the CLI (`src/main.rs`) render.

pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod history;
pub mod identity;
pub mod invite;
pub mod links;
pub mod local;
pub mod net;
pub mod parse;
pub mod peer;
pub mod protocol;
pub mod requests;
pub mod server;
pub mod share;
pub mod shell;
pub mod sync;
pub mod text;
pub mod time;
pub mod transfer;
pub mod trust;
pub mod types;
pub mod units;
