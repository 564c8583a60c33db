//! State Synchronization (SSM) in the filter: the application's state-change header, the
//! per-session table in Envoy's shared data, and the messages to and from the relay.
//!
//! **The contract** (language-agnostic; `filter-wasm/README.md`):
//!
//! * The service marks changes of a session's critical state in a response header,
//!   `x-shadowmesh-state: set cart=sku-1%3A2; set writes=3; del coupon` — operations
//!   separated by `;`, values percent-encoded. The filter on the primary's path strips it,
//!   gives the session its next version and emits the delta. Keys outside the allowlist,
//!   values or sessions over their caps are dropped and counted, and the session stays on
//!   the primary from then on (a shadow could not have its state).
//! * In front of a shadow, the filter adds the session's current state to each request:
//!   `x-shadowmesh-session-state: v=7; cart=sku-1%3A2; writes=3` — so the shadow needs no
//!   database of its own. Any value a client sent in that header is removed first.
//!
//! **The table.** Sessions live in [`BUCKETS`] index keys per service (small: version,
//! what was sent, what the shadows acknowledged) and one state slot each (the state and the
//! operations not sent yet). Slots are reused, so the number of shared-data keys is bounded
//! however many sessions come and go; a bucket that is full forgets its oldest session whose
//! state every shadow has (that state lives on there), never one whose state is unreplicated.
//!
//! | module | what |
//! |---|---|
//! | `contract.rs` | the two headers: parsing an application's changes, handing a session its state |
//! | `worker.rs` | what one worker keeps between callbacks: its [`CaptureQueue`], the sessions it saw plain |
//! | `table.rs` | the [`SessionTable`] in shared data: capture, flush, replication, the subscriber's side |

mod contract;
mod table;
#[cfg(test)]
mod test_support;
mod worker;

pub use crate::config::{StateRole, StateSyncConfig, SyncMode};
pub use contract::{
    DropReason, SESSION_STATE_HEADER, STATE_CHANGE_HEADER, decode_state, encode_state,
    parse_changes, percent_decode, percent_encode_into,
};
pub use table::{
    Capture, Flushed, Outbound, REORDER_WINDOW_NS, SessionEntry, SessionSlot, SessionTable,
    StateWrite, Watched, bucket_of,
};
pub use worker::{CaptureQueue, QueuedWrite, SeenSessions};

/// Index buckets per service.
pub const BUCKETS: u64 = crate::config::STATE_BUCKETS;
