//! `index`: the entries of the shared folder that pass a filter, in batches. With `unless`
//! it is conditional, as sync asks every rescan: `unchanged` when the folder is still at
//! that version, otherwise the entries and the folder's current version. The client reads
//! the answer with [`listing::receive`] or [`listing::receive_conditional`].

use crate::protocol::Link;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::listing;
use super::{Handled, ServeContext, refuse};
use crate::protocol::{Connection, ErrorKind};
use crate::share::Entry;
use crate::share::filter::IndexFilter;

/// The request's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Which entries.
    pub filter: IndexFilter,
    /// A conditional request: "unless your folder is still at this version"; the empty
    /// string asks for the version without having one. Absent, the folder is read afresh
    /// and no version comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<String>,
}

impl Index {
    /// Server: lists the folder (afresh, or from the recent snapshot when conditional).
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        let share = &cx.local.share;
        let matcher = match self.filter.compile() {
            Ok(matcher) => matcher,
            Err(e) => {
                let message = e.to_string();
                return refuse(connection, ErrorKind::BadRequest, message, cx.stall()).await;
            }
        };
        let fresh = || -> BoxFuture<'_, _> { Box::pin(share.index()) };
        let keep = |entry: &Entry| matcher.matches(entry);
        listing::answer(connection, share, self.unless, cx.stall(), &fresh, &keep).await
    }
}
