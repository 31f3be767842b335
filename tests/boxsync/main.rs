//! boxsync's integration tests, in one binary: real boxes on 127.0.0.1:0 in temporary
//! folders, the real binary, and the shell through a pseudo-terminal.

mod attacks;
mod batch;
mod cli;
mod commands;
mod config;
mod crash;
mod delta;
mod discovery;
mod escapes;
mod failures;
mod folder;
mod multi;
mod relay;
mod shell;
mod snapshots;
mod stalls;
mod status;
mod sync;
mod trust;
mod udp;
mod util;
