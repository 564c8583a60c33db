//! `/v1/state`: State Synchronization's relay ([`crate::relay`]) over HTTP — session deltas
//! from the filters on the primaries' path, long polls from the filters in front of the
//! shadows.

use super::services::now_ms;
use super::{Api, ApiError, Identity, parse_json};
use crate::relay::{RelayError, RelayStats, StateRelay};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use shadowmesh_wire::{
    StateLookup, StateLookupAnswer, StatePublish, StatePublishAck, StatePull, StatePullAnswer,
};
use std::time::Duration;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/state", get(stats))
        .route("/v1/state/publish", post(publish))
        .route("/v1/state/pull", post(pull))
        .route("/v1/state/lookup", post(lookup))
}

fn refused(e: RelayError) -> ApiError {
    ApiError::invalid(e.field, e.message)
}

/// Applies a publisher's changes; answers acknowledged versions and gaps. Only a token
/// that speaks for the publisher and fronts the service may publish.
async fn publish(
    State(api): State<Api>,
    axum::Extension(identity): axum::Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Json<StatePublishAck>, ApiError> {
    let message = parse_json::<StatePublish>(&body)?;
    identity.speaks_for("publisher", &message.publisher)?;
    identity.fronts("service", &message.service)?;
    let wait = Duration::from_millis(message.wait_ack_ms.min(api.relay.limits().max_wait_ms));
    let (service, publisher, incarnation) = (
        message.service.clone(),
        message.publisher.clone(),
        message.incarnation,
    );
    let mut wanted = published_versions(&message);
    let mut changes = api.relay.changes();
    changes.borrow_and_update();
    let mut ack = api.relay.publish(message, now_ms()).map_err(refused)?;
    // Event mode: hold the answer until the live subscribers applied what was published.
    wanted.retain(|(s, _)| !ack.resync.contains(s));
    let deadline = tokio::time::Instant::now() + wait;
    let sessions: Vec<String> = wanted.iter().map(|(s, _)| s.clone()).collect();
    while !wanted.is_empty() {
        let acked = api
            .relay
            .acked(&service, &publisher, incarnation, &sessions, now_ms());
        let done = wanted
            .iter()
            .all(|(s, v)| acked.iter().any(|(a, av)| a == s && av >= v));
        if done {
            ack.acked = acked;
            break;
        }
        if !changed_before(&api, &mut changes, deadline).await {
            break;
        }
        changes.borrow_and_update();
    }
    Ok(Json(ack))
}

/// Waits for a change of the relay until `deadline`: whether one came. Shutdown ends the
/// wait (a long poll is answered instead of being cut at the grace period's end).
async fn changed_before(
    api: &Api,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) -> bool {
    tokio::select! {
        changed = tokio::time::timeout_at(deadline, changes.changed()) => matches!(changed, Ok(Ok(()))),
        () = api.closing.cancelled() => false,
    }
}

/// The newest version per session a publish carries.
fn published_versions(m: &StatePublish) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let versions = m
        .deltas
        .iter()
        .map(|d| (&d.session, d.version))
        .chain(m.snapshots.iter().map(|s| (&s.session, s.version)));
    for (session, version) in versions {
        match out.iter_mut().find(|(s, _)| s == session) {
            Some(e) => e.1 = e.1.max(version),
            None => out.push((session.clone(), version)),
        }
    }
    out
}

/// Answers a subscriber with what it has not applied, waiting up to `wait_ms` (bounded by
/// the relay's `max_wait_ms`) for a change when there is none yet. Only a token that
/// speaks for the subscriber and serves the service may pull — and so only such
/// subscribers' cursors count as acknowledgements.
async fn pull(
    State(api): State<Api>,
    axum::Extension(identity): axum::Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Json<StatePullAnswer>, ApiError> {
    let message = parse_json::<StatePull>(&body)?;
    identity.speaks_for("subscriber", &message.subscriber)?;
    identity.serves("service", &message.service)?;
    let wait = Duration::from_millis(message.wait_ms.min(api.relay.limits().max_wait_ms));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look: a change between the look and the wait is seen.
    let mut changes = api.relay.changes();
    loop {
        changes.borrow_and_update();
        if let Some(answer) = api.relay.pull(&message, now_ms()).map_err(refused)? {
            return Ok(Json(answer));
        }
        if !changed_before(&api, &mut changes, deadline).await {
            // Nothing new (or shutting down): the same cursor.
            return Ok(Json(StatePullAnswer {
                epoch: message.epoch,
                cursor: message.cursor,
                ..StatePullAnswer::default()
            }));
        }
    }
}

/// A session's whole state, for an edge that has no record of it (it restarted, or the
/// session is new to it). Only a token that fronts the service may look it up.
async fn lookup(
    State(api): State<Api>,
    axum::Extension(identity): axum::Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Json<StateLookupAnswer>, ApiError> {
    let m = parse_json::<StateLookup>(&body)?;
    identity.fronts("service", &m.service)?;
    let state = api.relay.lookup(&m).map_err(refused)?;
    Ok(Json(StateLookupAnswer { state }))
}

async fn stats(State(api): State<Api>) -> Json<RelayStats> {
    Json(api.relay.stats(now_ms()))
}
