//! `mode: watch`: one connection, one Watch stream, every prefix on it.
//!
//! A session (one connection to one member) goes:
//! 1. connect, check the member has a leader, authenticate;
//! 2. snapshot every prefix that needs one (paged Range at revision R; delivered as `Full`);
//! 3. open the Watch stream and create one watcher per prefix from its resume point (R + 1 after a
//!    snapshot, last event + 1 after a break), **one create at a time**: etcd answers creates in order,
//!    but a failed create comes back with id -1 and the first id (0) is absent on the wire, so waiting
//!    for each `created` before sending the next is what makes the id -> prefix mapping certain;
//! 4. read responses: reassemble fragments, turn events into deltas, handle cancels (compaction ->
//!    re-list and re-create on the same stream; refused token -> new session with a fresh token;
//!    no leader -> next member).
//!
//! Any break ends the session; the next one resumes every prefix from its own resume point, so nothing
//! is missed and nothing is delivered twice. Between sessions the source waits with jittered backoff,
//! moving to the next endpoint when the member was unavailable.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use kvsync_etcd_grpc::pb::etcdserverpb::{
    watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use kvsync_etcd_grpc::pb::mvccpb::Event;
use kvsync_etcd_grpc::Client;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::auth::{is_permission_denied_reason, is_token_refused_reason, Credentials};
use super::compaction::{compacted, list_and_deliver, Listed};
use super::endpoints::{connect, Endpoints};
use super::resume::{apply_events, Phase, PrefixState};
use super::{delay_after, report, EtcdConfig, Failure, CALL_TIMEOUT};
use crate::retry::Backoff;
use crate::snapshot::{Change, Update};
use crate::source::{SourceError, UpdateSink};

/// Runs the watch-mode source until cancelled (or until the configured attempts are used up).
pub(crate) async fn run(
    config: EtcdConfig,
    prefixes: Vec<String>,
    sink: UpdateSink,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let credentials = Credentials::from_config(&config.username, &config.password_file);
    let mut states: Vec<PrefixState> = prefixes.into_iter().map(PrefixState::new).collect();
    let mut endpoints = Endpoints::new(config.endpoints.clone());
    let mut backoff = config.backoff.clone();
    let mut token_retries = 0u32;
    let mut sessions = 0u64;
    loop {
        if sessions > 0 {
            sink.stats().reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        sessions += 1;
        let mut session = Session {
            config: &config,
            credentials: &credentials,
            states: &mut states,
            backoff: &mut backoff,
            sink: &sink,
        };
        let failure = tokio::select! {
            // Shutdown: dropping the session closes the stream and the connection.
            _ = cancel.cancelled() => return Ok(()),
            f = session.run(&endpoints) => f,
        };
        if let Failure::Closed = failure {
            return Ok(());
        }
        report(&sink, &failure);
        if let Failure::Unavailable(_) = failure {
            endpoints.advance();
        }
        let Some(delay) = delay_after(&failure, &mut backoff, &mut token_retries) else {
            return Err(SourceError::GaveUp { attempts: backoff.failures(), last: failure.message().to_string() });
        };
        debug!(source = sink.name(), ?delay, next = endpoints.current(), "reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's worth of work.
struct Session<'a> {
    config: &'a EtcdConfig,
    credentials: &'a Option<Credentials>,
    /// Per-prefix state, kept across sessions.
    states: &'a mut Vec<PrefixState>,
    backoff: &'a mut Backoff,
    sink: &'a UpdateSink,
}

/// The Watch stream's bookkeeping for one session.
struct Watchers {
    /// Requests to the server (the stream's sending half).
    tx: mpsc::Sender<WatchRequest>,
    /// Prefixes (indexes into `states`) waiting for their create to be sent.
    queue: VecDeque<usize>,
    /// The prefix whose create was sent and not yet answered.
    awaiting: Option<usize>,
    /// Server watch id -> prefix index.
    by_id: HashMap<i64, usize>,
    /// Events of a fragmented response, by watch id, until the last fragment.
    fragments: HashMap<i64, Vec<Event>>,
    /// Whether every prefix has been watched once in this session (the backoff is then reset).
    established: bool,
    /// When the create in flight (`awaiting`) must have been answered.
    create_deadline: Option<Instant>,
}

impl Session<'_> {
    /// Runs until something breaks; returns why.
    async fn run(&mut self, endpoints: &Endpoints) -> Failure {
        let mut client = match connect(self.config, endpoints, self.credentials, self.sink).await {
            Ok(c) => c,
            Err(f) => return f,
        };
        // Snapshots first (the resume point of a prefix that has one is kept). While every prefix is
        // denied there is nothing to watch: wait for the next retry instead of opening an idle stream.
        loop {
            for i in 0..self.states.len() {
                if let Err(f) = self.list_if_due(&mut client, i).await {
                    return f;
                }
            }
            if self.states.is_empty() || self.states.iter().any(|s| s.next().is_some()) {
                break;
            }
            tokio::time::sleep_until(self.next_denied_retry().into()).await;
        }
        let (tx, rx) = mpsc::channel(16);
        let mut w = Watchers {
            tx,
            queue: (0..self.states.len()).filter(|&i| self.states[i].next().is_some()).collect(),
            awaiting: None,
            by_id: HashMap::new(),
            fragments: HashMap::new(),
            established: false,
            create_deadline: None,
        };
        // The first create goes in before the stream opens: the server sends its response headers
        // only with its first message, and tonic waits for them before returning the stream.
        if let Err(f) = self.send_next_create(&mut w).await {
            return f;
        }
        self.sink.stats().request();
        let mut stream = match tokio::time::timeout(CALL_TIMEOUT, client.watch(ReceiverStream::new(rx))).await {
            Ok(Ok(s)) => s,
            Ok(Err(s)) => return Failure::from_status("Watch", client.endpoint(), &s),
            Err(_) => {
                return Failure::Unavailable(format!(
                    "etcd at {}: the Watch stream did not open within {CALL_TIMEOUT:?}",
                    client.endpoint()
                ))
            }
        };
        if w.awaiting.is_none() {
            self.mark_established(&mut w);
        }
        info!(source = self.sink.name(), endpoint = client.endpoint(), "watch stream open");
        loop {
            // When a denied prefix may be tried again (far in the future when there is none).
            let retry_at = self.next_denied_retry();
            // When the create in flight must have been answered.
            let create_deadline = w.create_deadline;
            tokio::select! {
                // A create went unanswered: the member is not serving this stream.
                _ = tokio::time::sleep_until(create_deadline.unwrap_or(retry_at).into()), if create_deadline.is_some() => {
                    return Failure::Unavailable(format!(
                        "etcd at {}: a watch create was not answered within {CALL_TIMEOUT:?}",
                        client.endpoint()
                    ));
                }
                // A response on the stream (or its end).
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            return Failure::Unavailable(format!("etcd at {}: the watch stream ended", client.endpoint()))
                        }
                        Err(s) => return Failure::from_status("Watch stream", client.endpoint(), &s),
                    };
                    if let Err(f) = self.on_response(&mut client, &mut w, resp).await {
                        return f;
                    }
                }
                // A prefix refused with permission denied is due for another try.
                _ = tokio::time::sleep_until(retry_at.into()), if self.any_denied() => {
                    for i in 0..self.states.len() {
                        if let Err(f) = self.list_if_due(&mut client, i).await {
                            return f;
                        }
                        if matches!(self.states[i].phase, Phase::Listed { .. })
                            && !w.by_id.values().any(|&j| j == i)
                            && w.awaiting != Some(i)
                            && !w.queue.contains(&i)
                        {
                            w.queue.push_back(i);
                        }
                    }
                    if let Err(f) = self.send_next_create(&mut w).await {
                        return f;
                    }
                }
            }
        }
    }

    fn any_denied(&self) -> bool {
        self.states.iter().any(|s| matches!(s.phase, Phase::Denied { .. }))
    }

    fn next_denied_retry(&self) -> Instant {
        self.states
            .iter()
            .filter_map(|s| match s.phase {
                Phase::Denied { retry_at, .. } => Some(retry_at),
                _ => None,
            })
            .min()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600))
    }

    /// Lists prefix `i` if it needs a snapshot (or was denied and is due for a retry).
    async fn list_if_due(&mut self, client: &mut Client, i: usize) -> Result<(), Failure> {
        let due = match self.states[i].phase {
            Phase::NeedsList { .. } => true,
            Phase::Denied { retry_at, .. } => retry_at <= Instant::now(),
            Phase::Listed { .. } => false,
        };
        if !due {
            return Ok(());
        }
        let max = self.config.max_value_bytes;
        list_and_deliver(client, self.credentials, &mut self.states[i], max, self.backoff, self.sink).await?;
        Ok(())
    }

    /// Sends the create for the next queued prefix, if any and if none is awaiting its answer.
    async fn send_next_create(&mut self, w: &mut Watchers) -> Result<(), Failure> {
        if w.awaiting.is_some() {
            // One create at a time; the queue moves on when this one is answered.
            return Ok(());
        }
        while let Some(i) = w.queue.pop_front() {
            let state = &self.states[i];
            let Some(start) = state.next() else { continue };
            let create = WatchCreateRequest {
                key: state.key.clone().into(),
                range_end: state.range_end.clone().into(),
                start_revision: start,
                // Large catch-ups are split by the server instead of exceeding message limits.
                fragment: true,
                ..WatchCreateRequest::default()
            };
            let req = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
            w.tx.send(req).await.map_err(|_| Failure::Unavailable("the watch stream closed".into()))?;
            w.awaiting = Some(i);
            w.create_deadline = Some(Instant::now() + CALL_TIMEOUT);
            return Ok(());
        }
        Ok(())
    }

    fn mark_established(&mut self, w: &mut Watchers) {
        if !w.established {
            w.established = true;
            self.backoff.reset();
            self.sink.stats().ok(self.sink.stats().last_version.load(std::sync::atomic::Ordering::Relaxed));
        }
    }

    async fn on_response(&mut self, client: &mut Client, w: &mut Watchers, resp: WatchResponse) -> Result<(), Failure> {
        let id = resp.watch_id;
        if resp.created {
            // The answer to the create in flight (creates are answered in order, one at a time).
            w.create_deadline = None;
            let Some(i) = w.awaiting.take() else {
                return Err(Failure::Other("etcd sent a `created` response for no pending create".into()));
            };
            if resp.canceled {
                self.create_refused(client, w, i, &resp).await?;
            } else {
                w.by_id.insert(id, i);
                debug!(source = self.sink.name(), prefix = self.states[i].prefix, id, "watcher created");
            }
            self.send_next_create(w).await?;
            if w.awaiting.is_none() && w.queue.is_empty() {
                self.mark_established(w);
            }
            return Ok(());
        }
        if resp.canceled {
            let Some(i) = w.by_id.remove(&id) else { return Ok(()) };
            w.fragments.remove(&id);
            if resp.compact_revision > 0 {
                return self.recover_compaction(client, w, i, resp.compact_revision).await;
            }
            return Err(self.cancel_failure(client, i, &resp.cancel_reason));
        }
        let Some(&i) = w.by_id.get(&id) else {
            // Events for a watcher we no longer know (in flight after a cancel): nothing to do.
            return Ok(());
        };
        if resp.fragment {
            w.fragments.entry(id).or_default().extend(resp.events);
            return Ok(());
        }
        let mut events = w.fragments.remove(&id).unwrap_or_default();
        events.extend(resp.events);
        if events.is_empty() {
            // A progress notification: the resume point stays where the last event put it.
            return Ok(());
        }
        let state = &mut self.states[i];
        if let Some((delta, version)) = apply_events(state, events, self.config.max_value_bytes, self.sink) {
            if !delta.is_empty() {
                self.sink.stats().changed();
                let update = Update { prefix: state.prefix.clone(), version, change: Change::Delta(delta) };
                self.sink.send(update).await.map_err(|_| Failure::Closed)?;
            }
        }
        Ok(())
    }

    /// A create came back created+canceled: compaction, refused token, permission, or something else.
    async fn create_refused(
        &mut self,
        client: &mut Client,
        w: &mut Watchers,
        i: usize,
        resp: &WatchResponse,
    ) -> Result<(), Failure> {
        if resp.compact_revision > 0 {
            return self.recover_compaction(client, w, i, resp.compact_revision).await;
        }
        let reason = &resp.cancel_reason;
        if is_permission_denied_reason(reason) {
            let f = Failure::Persistent(format!(
                "etcd at {}: watching prefix `{}`: {reason}; grant the user's role read access to it",
                client.endpoint(),
                self.states[i].prefix
            ));
            report(self.sink, &f);
            // Tried again at the backoff maximum with a fresh listing (a Full reconciles whatever
            // changed meanwhile); the other prefixes go on.
            self.states[i].phase = Phase::Denied { resync: false, retry_at: Instant::now() + self.backoff.slowest() };
            return Ok(());
        }
        Err(self.cancel_failure(client, i, reason))
    }

    fn cancel_failure(&self, client: &Client, i: usize, reason: &str) -> Failure {
        let msg = format!(
            "etcd at {}: the watch on prefix `{}` was canceled: {}",
            client.endpoint(),
            self.states[i].prefix,
            if reason.is_empty() { "no reason given" } else { reason }
        );
        if is_token_refused_reason(reason) {
            Failure::TokenRefused(msg)
        } else if reason.contains("no leader") {
            Failure::Unavailable(msg)
        } else {
            Failure::Other(msg)
        }
    }

    /// The resume point of prefix `i` was compacted: re-list it, deliver a resync, watch again.
    async fn recover_compaction(
        &mut self,
        client: &mut Client,
        w: &mut Watchers,
        i: usize,
        compact_revision: i64,
    ) -> Result<(), Failure> {
        compacted(&mut self.states[i], compact_revision, self.sink);
        let max = self.config.max_value_bytes;
        match list_and_deliver(client, self.credentials, &mut self.states[i], max, self.backoff, self.sink).await? {
            Listed::Yes => {
                w.queue.push_back(i);
                self.send_next_create(w).await?;
            }
            Listed::Denied => {}
        }
        Ok(())
    }
}
