//! The shell: command parsing ([`command`], [`timestamp`]), execution against a peer
//! ([`session`], with background [`jobs`], the current remote folder and patterns of
//! [`remote`], several files at once in [`many`]), rendering ([`render`], [`table`],
//! [`help`], [`prompt`], and [`listing`] for listings shown while they arrive) and the loops
//! that read commands from a person ([`repl`], with [`helper`], [`complete`], [`names`],
//! [`screen`], [`terminal`], and [`watchstate`] saying above the prompt what changed by
//! itself) or a script.
//!
//! This module is the renderer: the only part of the library that writes to the terminal.

pub mod command;
pub mod complete;
pub mod help;
pub mod helper;
pub mod jobs;
pub mod listing;
pub mod many;
pub mod names;
pub mod output;
pub mod prompt;
pub mod remote;
pub mod render;
pub mod repl;
pub mod screen;
pub mod session;
pub mod table;
pub mod terminal;
pub mod timestamp;
pub mod watchstate;

pub use render::Format;
pub use session::{Outcome, Session};
