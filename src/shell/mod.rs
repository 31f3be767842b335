//! The shell: command parsing ([`command`], [`timestamp`]), execution against a peer
//! ([`session`]), rendering ([`render`], [`help`]) and the loops that read commands from a
//! person ([`repl`]) or a script.

pub mod command;
pub mod help;
pub mod render;
pub mod repl;
pub mod session;
pub mod timestamp;

pub use render::Format;
pub use session::{Outcome, Session};
