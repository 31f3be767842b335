//! The control socket: how a script or another terminal asks the box running on a folder
//! how it is doing (`boxsync status`), without a shell and without the network.
//!
//! The running box (`serve`, or a box with a shell: whichever holds the folder's lock,
//! [`crate::share::owner`]) listens on the Unix socket `.boxsync/control.sock`, owner-only
//! (mode 0600, in the owner-only `.boxsync/`), and answers only processes of its own user
//! (their uid, as the kernel tells it: `SO_PEERCRED`). One request per connection, one line
//! of JSON each way, then the box closes it:
//!
//! ```text
//! -> {"request":"status","width":80,"colour":false}
//! <- {"status":{"box":{...},"sync":{...}},"text":"box ... serving ...\nauto-sync on ..."}
//! <- {"error":"..."}                  (a request not understood)
//! ```
//!
//! A request is at most [`MAX_REQUEST`] bytes and must arrive within [`DEADLINE`]; the
//! answer must be written within it too; at most [`MAX_CLIENTS`] are served at once. The
//! socket is removed when the box shuts down cleanly; one left by a box that was killed is
//! replaced at the next start (the lock says no box runs). The wire form of each request
//! lives in [`Request`], its handling in [`answer`], the client's call in [`ask`].

use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::local::LocalBox;
use crate::share::STATE_DIR;
use crate::shell::render::{self, Format, Layout};
use crate::shell::session::Outcome;
use crate::sync::SyncHandle;

/// The socket's file name in the state folder.
pub const SOCKET_FILE: &str = "control.sock";

/// How long either side waits for the other: a box that has not answered by then is
/// reported as not answering; a client that has not sent its request by then is dropped.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Most bytes of a request line (its newline included).
pub const MAX_REQUEST: u64 = 4096;

/// Most bytes of an answer a client reads (a status with many conflicts is long; nothing
/// is that long).
const MAX_ANSWER: u64 = 16 << 20;

/// Most clients served at once; more are turned away at once.
pub const MAX_CLIENTS: usize = 8;

/// What a client asks. `status` for now; each new request is a variant here, its handling
/// an arm of [`answer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The box, its peers, sync's state and the transfers in flight: as JSON, and as text
    /// laid out `width` columns wide (none: no limit), coloured or not.
    Status {
        /// The client's terminal width, if it has one.
        #[serde(default)]
        width: Option<usize>,
        /// Whether the text may carry ANSI colours.
        #[serde(default)]
        colour: bool,
    },
}

/// The answer to `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// `{"box": {"id", "folder", "pid"}, "sync": <as sync status --json> | null}`.
    pub status: Value,
    /// The same for people, as the shell's `sync status` shows it (escaped).
    pub text: String,
}

/// An answer on the wire: the request's, or why it was refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Answer {
    /// `status`'s.
    Status(StatusAnswer),
    /// A request not understood.
    Error {
        /// Why, in a sentence.
        error: String,
    },
}

/// Why the control socket could not be opened, or a box not asked.
#[derive(Debug, Error)]
pub enum ControlError {
    /// No box runs on the folder.
    #[error("no box is running on {}", .0.display())]
    NotRunning(PathBuf),
    /// A box holds the folder's lock but does not listen on the socket.
    #[error(
        "a box is running on {}{} but does not answer on {SOCKET_FILE} (a -c script, or a box that could not open the socket: see its log)",
        .folder.display(),
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    NoSocket {
        /// The folder.
        folder: PathBuf,
        /// The process that holds the lock, if its lock file says.
        pid: Option<u32>,
    },
    /// The box did not answer in time.
    #[error("the box running on {} did not answer within {}s", .0.display(), DEADLINE.as_secs())]
    Silent(PathBuf),
    /// The box's answer is not one this program reads.
    #[error("the box running on {} gave an answer this program does not understand: {reason}", .folder.display())]
    BadAnswer {
        /// The folder.
        folder: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The box refused the request.
    #[error("the box running on {} refused the request: {message}", .folder.display())]
    Refused {
        /// The folder.
        folder: PathBuf,
        /// Its reason.
        message: String,
    },
    /// Talking to the socket failed.
    #[error("cannot talk to the box running on {} through {SOCKET_FILE}: {cause}", .folder.display())]
    Io {
        /// The folder.
        folder: PathBuf,
        /// The system's error.
        cause: std::io::Error,
    },
    /// The socket could not be opened for listening.
    #[error("cannot listen on {}: {cause}", .path.display())]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// The system's error.
        cause: std::io::Error,
    },
}

/// What the box answers from: itself and its sync engine (none with `--sync 0`).
#[derive(Clone)]
pub struct BoxState {
    /// The box.
    pub local: Arc<LocalBox>,
    /// Its sync engine, when sync runs.
    pub sync: Option<SyncHandle>,
}

/// The box's end of the socket, listening. Dropping it removes the socket file (if it is
/// still the one bound).
pub struct ControlSocket {
    /// The listener.
    listener: UnixListener,
    /// The socket file.
    path: PathBuf,
    /// The socket file's device and inode, so that only this one is removed.
    file: (u64, u64),
}

impl ControlSocket {
    /// Listens on `.boxsync/control.sock` of the state folder `state`, replacing a socket
    /// left there by a box that was killed: call it only while holding the folder's lock
    /// (no other box runs). Must be called within the tokio runtime.
    pub fn bind(state: &Path) -> Result<ControlSocket, ControlError> {
        let path = state.join(SOCKET_FILE);
        let bind_error = |cause| ControlError::Bind {
            path: path.clone(),
            cause,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
                std::fs::remove_file(&path).map_err(bind_error)?;
            }
            Ok(_) => {
                return Err(bind_error(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "something that is not a socket is there",
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_error(e)),
        }
        let listener = UnixListener::bind(&path).map_err(bind_error)?;
        // The state folder is owner-only already: nobody else could reach the socket
        // between the bind and this.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        let meta = std::fs::symlink_metadata(&path).map_err(bind_error)?;
        Ok(ControlSocket {
            listener,
            file: (meta.dev(), meta.ino()),
            path,
        })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers clients until `shutdown` completes, then removes the socket file.
    pub async fn run(self, state: BoxState, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        // Out of file descriptors and the like: let them free up.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&clients).try_acquire_owned() else {
                tracing::debug!("control socket: too many clients at once; one turned away");
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                serve_client(stream, &state).await;
                drop(permit);
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a client whose process runs as `client` may talk to a box running as `own`:
/// only the same user.
fn allowed(client: u32, own: u32) -> bool {
    client == own
}

/// One client: its user checked, one request read and answered within [`DEADLINE`].
async fn serve_client(stream: UnixStream, state: &BoxState) {
    let own = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if allowed(cred.uid(), own) => {}
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "control socket: a process of another user connected; refused"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot tell who connected; refused");
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let read = tokio::time::timeout(DEADLINE, reader.read_until(b'\n', &mut line)).await;
    let answer = match read {
        Err(_) => {
            tracing::debug!("control socket: no request within the deadline");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "control socket: reading the request failed");
            return;
        }
        Ok(Ok(_)) if !line.ends_with(b"\n") => Answer::Error {
            error: format!("a request is one line of JSON of at most {MAX_REQUEST} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) => answer(request, state),
            Err(e) => Answer::Error {
                error: format!("request not understood ({e}); this box answers: status"),
            },
        },
    };
    let Ok(mut text) = crate::text::json(&answer) else {
        return;
    };
    text.push('\n');
    let written = tokio::time::timeout(DEADLINE, async {
        write.write_all(text.as_bytes()).await?;
        write.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("control socket: the client did not take its answer");
    }
}

/// Answers one request.
fn answer(request: Request, state: &BoxState) -> Answer {
    match request {
        Request::Status { width, colour } => {
            Answer::Status(status(state, Layout { width, colour }))
        }
    }
}

/// `status`: the box, and sync's status as `sync status` gives it (JSON and text).
fn status(state: &BoxState, layout: Layout) -> StatusAnswer {
    let local = &state.local;
    let folder = local.share.root().display().to_string();
    let pid = std::process::id();
    let sync = state.sync.as_ref().map(SyncHandle::status);
    let mut text = format!(
        "box {} serving {} (pid {pid})",
        local.id,
        crate::text::escape(&folder)
    );
    match &sync {
        Some(sync) => {
            text.push('\n');
            text.push_str(&render::outcome_with(
                &Outcome::Sync(sync.clone()),
                Format::Human,
                layout,
            ));
        }
        None => text.push_str("\nauto-sync is off on this box (it was started with --sync 0)"),
    }
    let status = json!({
        "box": { "id": local.id, "folder": folder, "pid": pid },
        "sync": sync.map(|s| serde_json::to_value(s).unwrap_or(Value::Null)),
    });
    StatusAnswer { status, text }
}

/// Asks the box running on the shared folder `folder` for `request`'s answer, within
/// [`DEADLINE`] in all.
pub async fn ask(folder: &Path, request: &Request) -> Result<StatusAnswer, ControlError> {
    let state = folder.join(STATE_DIR);
    let path = state.join(SOCKET_FILE);
    let io = |cause| ControlError::Io {
        folder: folder.to_path_buf(),
        cause,
    };
    let exchange = async {
        let mut stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(match crate::share::owner::holder(&state) {
                    Some(pid) => ControlError::NoSocket {
                        folder: folder.to_path_buf(),
                        pid,
                    },
                    None => ControlError::NotRunning(folder.to_path_buf()),
                });
            }
            Err(e) => return Err(io(e)),
        };
        let mut line = serde_json::to_string(request).map_err(|e| io(e.into()))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        Ok(answer)
    };
    let answer = tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| ControlError::Silent(folder.to_path_buf()))??;
    let bad = |reason: String| ControlError::BadAnswer {
        folder: folder.to_path_buf(),
        reason,
    };
    if answer.is_empty() {
        return Err(bad("it closed the connection without a word".to_string()));
    }
    match serde_json::from_slice::<Answer>(&answer) {
        Ok(Answer::Status(status)) => Ok(status),
        Ok(Answer::Error { error }) => Err(ControlError::Refused {
            folder: folder.to_path_buf(),
            message: error,
        }),
        Err(e) => Err(bad(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request's wire form: a tag and its fields; an unknown request or field is
    /// refused rather than taken for `status`.
    #[test]
    fn request_wire_form() {
        let request = Request::Status {
            width: Some(80),
            colour: false,
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(line, r#"{"request":"status","width":80,"colour":false}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"status"}"#).unwrap(),
            Request::Status {
                width: None,
                colour: false
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"shutdown"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"request":"status","x":1}"#).is_err());
    }

    /// Only the box's own user is answered.
    #[test]
    fn only_the_owner_is_allowed() {
        assert!(allowed(1000, 1000));
        assert!(!allowed(1001, 1000));
        assert!(!allowed(0, 1000));
    }
}
