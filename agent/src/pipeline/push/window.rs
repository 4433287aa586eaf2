//! The push window of one resource, as a small state machine.
//!
//! Between calls of [`push_batches`] the pusher remembers one thing, its [`Flow`]:
//! - [`Flow::Probing`] (at start, and after any failure): one batch at a time, whose
//!   committed bound is raised only to its own seq, so that every check of one-at-a-time
//!   sending (a queue gone back in time, a gap) stays as strict as it was; the call ends with
//!   the probe's answer, and its acknowledgement moves the flow to streaming;
//! - [`Flow::Streaming`] (an acknowledgement was accepted since the last failure, so the hub's
//!   mark is known to be below every queued batch): up to [`MAX_IN_FLIGHT`] batches at once,
//!   the bound raised over the window's worth before each leaves.
//!
//! Within one call, the window goes through these [`State`]s:
//! - *opening*: the oldest queued batches are read with the resource's state; a halted
//!   resource opens no window (the call fails with [`PushError::Halted`]);
//! - [`State::Sending`]: batches leave in seq order until the flow's width is in flight or
//!   none is waiting (the bound committed first);
//! - [`State::Awaiting`]: the answer to the oldest batch in flight is awaited (answers are
//!   taken in seq order); none in flight closes the call (drained);
//! - [`State::Acknowledged`]: the batch leaves the queue with its audit entry, the flow is
//!   streaming, the next batches are read when the window ran dry; a probe's call then
//!   closes, a stream's sends again;
//! - [`State::Failed`]: the flow goes back to probing; a gap or a rewound queue halts the
//!   resource; later answers are not awaited (those batches are resent, and answered
//!   `duplicate` where they were applied). A record the hub refused (a `400` naming its
//!   line) closes the window too: the record goes to quarantine, its batch is rewritten
//!   without it (`refused`), and a new window opens at once, probing with that batch;
//! - [`State::Closed`]: the call's result, how many batches were acknowledged or the failure.

use std::collections::VecDeque;

use exchange_protocol::lang::Text;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;

use exchange_protocol::batch::Ack;

use super::client::HubClient;
use super::error::PushError;
use super::flight::InFlight;
use super::{receipt, refused};
use crate::pipeline::queue::{
    Baseline, HaltKind, MAX_IN_FLIGHT, Queue, QueueError, ResourceState, StoredBatch,
};

/// How wide the window of a resource opens: what its pusher remembers between calls to
/// [`push_batches`] (module doc).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// No acknowledgement since the start or the last failure: one batch at a time (a probe).
    #[default]
    Probing,
    /// An acknowledgement was accepted since the last failure: up to [`MAX_IN_FLIGHT`] at once.
    Streaming,
}

impl Flow {
    /// How many batches may be in flight at once.
    fn width(self) -> usize {
        match self {
            Flow::Probing => 1,
            Flow::Streaming => MAX_IN_FLIGHT,
        }
    }

    /// The committed bound batch `seq` needs before it leaves: a probe's `duplicate` may then
    /// name only itself (with its digest); a stream's, the window's worth.
    fn bound_for(self, seq: u64) -> u64 {
        match self {
            Flow::Probing => seq,
            Flow::Streaming => seq + MAX_IN_FLIGHT as u64 - 1,
        }
    }
}

/// Where one call of [`push_batches`] stands (module doc).
enum State {
    /// Batches leave until the window is full or none is waiting.
    Sending,
    /// The answer to the oldest batch in flight is awaited.
    Awaiting,
    /// The oldest batch in flight was acknowledged.
    Acknowledged(StoredBatch, Ack),
    /// An answer was a failure.
    Failed(PushError),
    /// The call is over: how many were acknowledged, or the failure to report.
    Closed(Result<usize, PushError>),
}

/// How one window closed.
enum Closing {
    /// The call's result: how many batches were acknowledged, or the failure to report.
    Over(Result<usize, PushError>),
    /// The hub refused one record ([`PushError::RecordRefused`]) of the oldest batch in
    /// flight, after `acknowledged` batches were acknowledged.
    RecordRefused {
        /// Batches acknowledged before.
        acknowledged: usize,
        /// The refusal.
        refused: PushError,
    },
}

/// A batch with its answer.
type Answered = (StoredBatch, Result<Ack, PushError>);

/// The window's state during one call.
struct Window<'a> {
    /// The hub.
    client: &'a HubClient,
    /// What the requests in flight share.
    flight: &'a InFlight<'a>,
    /// The flow the call opened with: the window's width and how far a bound is raised.
    opened: Flow,
    /// Batches read from the queue that have not left yet, in seq order.
    waiting: VecDeque<StoredBatch>,
    /// The seq of the last batch read from the queue.
    last_read: u64,
    /// Whether the queue may hold batches after `last_read` (the last read was full).
    more: bool,
    /// The batch that completes the stream's baseline, once it is queued.
    baseline_seq: Option<u64>,
    /// The requests in flight, answered in seq order.
    answers: FuturesOrdered<BoxFuture<'a, Answered>>,
    /// Batches acknowledged by this call.
    acknowledged: usize,
}

/// Pushes the queued batches of a resource in seq order — one at a time, or up to
/// [`MAX_IN_FLIGHT`] at once while [`Flow`] allows — and removes each from the queue only
/// after its own acknowledgement, in seq order, calling `acked` after each removal. Returns
/// how many were acknowledged (0: nothing queued). A failure after some were acknowledged is
/// left for the next call to meet again (it sends the first unacknowledged batch alone). A
/// record the hub refuses is quarantined and the rest of its batch sent again at once
/// (`refused`): each refusal removes a record, so this ends.
pub async fn push_batches(
    client: &HubClient,
    queue: &Queue,
    resource: &str,
    flow: &mut Flow,
    acked: &(dyn Fn() + Sync),
) -> Result<usize, PushError> {
    let mut acknowledged = 0;
    loop {
        match push_window(client, queue, resource, flow, acked).await {
            Closing::Over(result) => return result.map(|n| acknowledged + n),
            Closing::RecordRefused {
                acknowledged: n,
                refused,
            } => {
                acknowledged += n;
                refused::quarantine(queue, refused).await?;
            }
        }
    }
}

/// One window of [`push_batches`], from opening to closing (module doc).
async fn push_window(
    client: &HubClient,
    queue: &Queue,
    resource: &str,
    flow: &mut Flow,
    acked: &(dyn Fn() + Sync),
) -> Closing {
    let (first, state) = match read_after(queue, resource, 0).await {
        Ok(read) => read,
        Err(e) => return Closing::Over(Err(e)),
    };
    if let Some(halt) = state.halt {
        return Closing::Over(Err(PushError::Halted {
            resource: resource.to_owned(),
            reason: halt.reason,
        }));
    }
    let stream = state.stream_or(client.stream()).to_owned();
    let flight = InFlight::new(queue, resource, stream, state.sent_through);
    let mut window = Window::open(client, &flight, *flow, first, &state);
    let mut step = State::Sending;
    loop {
        step = match step {
            State::Sending => match window.send_waiting().await {
                Ok(()) => State::Awaiting,
                Err(e) => State::Closed(Err(e)),
            },
            State::Awaiting => window.await_oldest().await,
            State::Acknowledged(b, ack) => window
                .acknowledge(b, ack, flow, acked)
                .await
                .unwrap_or_else(|e| State::Closed(Err(e))),
            State::Failed(refused @ PushError::RecordRefused { .. }) => {
                *flow = Flow::Probing;
                return Closing::RecordRefused {
                    acknowledged: window.acknowledged,
                    refused,
                };
            }
            State::Failed(e) => {
                State::Closed(fail(window.flight, window.acknowledged, e, flow).await)
            }
            State::Closed(result) => return Closing::Over(result),
        };
    }
}

impl<'a> Window<'a> {
    /// The window over the first batches read, none in flight.
    fn open(
        client: &'a HubClient,
        flight: &'a InFlight<'a>,
        opened: Flow,
        first: Vec<StoredBatch>,
        state: &ResourceState,
    ) -> Window<'a> {
        let waiting: VecDeque<StoredBatch> = first.into();
        Window {
            client,
            flight,
            opened,
            last_read: waiting.back().map_or(0, |b| b.seq),
            more: waiting.len() == MAX_IN_FLIGHT,
            waiting,
            baseline_seq: baseline_seq(state),
            answers: FuturesOrdered::new(),
            acknowledged: 0,
        }
    }

    /// [`State::Sending`]: lets waiting batches leave until the window is full, each after
    /// the committed bound covers it.
    async fn send_waiting(&mut self) -> Result<(), PushError> {
        while self.answers.len() < self.opened.width()
            && let Some(b) = self.waiting.pop_front()
        {
            if b.seq > self.flight.sent_through() {
                let raised = raise_sent_through(self.flight, self.opened.bound_for(b.seq)).await?;
                self.flight.raised_to(raised);
            }
            self.flight.leaving(b.seq);
            let baseline = self.baseline_seq == Some(b.seq);
            self.answers.push_back(self.request(b, baseline));
        }
        Ok(())
    }

    /// One batch's request, counted in the push metrics when answered.
    fn request(&self, b: StoredBatch, baseline: bool) -> BoxFuture<'a, Answered> {
        let (client, flight) = (self.client, self.flight);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let answer = client.send(flight, baseline, &b).await;
            crate::metrics::global().push_answered(
                started.elapsed(),
                answer.as_ref().err().map(PushError::kind),
            );
            (b, answer)
        })
    }

    /// [`State::Awaiting`]: the oldest batch's answer, or the call closes when none is in
    /// flight.
    async fn await_oldest(&mut self) -> State {
        match self.answers.next().await {
            None => State::Closed(Ok(self.acknowledged)),
            Some((b, Ok(ack))) => State::Acknowledged(b, ack),
            Some((_, Err(e))) => State::Failed(e),
        }
    }

    /// [`State::Acknowledged`]: the batch leaves the queue (the ack also raises the committed
    /// bound over the window after it), the flow streams, and the window is kept full.
    async fn acknowledge(
        &mut self,
        b: StoredBatch,
        ack: Ack,
        flow: &mut Flow,
        acked: &(dyn Fn() + Sync),
    ) -> Result<State, PushError> {
        let bound = receipt::record(self.flight, &b, &ack).await?;
        self.flight.raised_to(bound);
        self.flight.acknowledged(b.seq);
        tracing::debug!(resource = self.flight.resource, seq = ack.seq, status = ?ack.status, "Batch acknowledged.");
        *flow = Flow::Streaming;
        self.acknowledged += 1;
        acked();
        self.refill().await?;
        Ok(match self.opened {
            // A probe: the next call opens the window.
            Flow::Probing => State::Closed(Ok(self.acknowledged)),
            Flow::Streaming => State::Sending,
        })
    }

    /// Reads the next batches after the last one read when none is waiting and the window
    /// has room.
    async fn refill(&mut self) -> Result<(), PushError> {
        if !(self.more && self.waiting.is_empty() && self.answers.len() < MAX_IN_FLIGHT) {
            return Ok(());
        }
        // The state again: a batch enqueued since may be the one completing the baseline.
        let (next, state) =
            read_after(self.flight.queue, self.flight.resource, self.last_read).await?;
        self.baseline_seq = baseline_seq(&state);
        self.more = !next.is_empty();
        self.last_read = next.last().map_or(self.last_read, |b| b.seq);
        self.waiting.extend(next);
        Ok(())
    }
}

/// [`State::Failed`]: the flow probes again; a gap or a rewound queue halts the resource. An
/// overtaken batch after progress (`acknowledged` batches) is no failure (the oldest is resent
/// alone next); any other error is reported even after acknowledgements, so status shows it
/// and the retry backs off.
async fn fail(
    flight: &InFlight<'_>,
    acknowledged: usize,
    e: PushError,
    flow: &mut Flow,
) -> Result<usize, PushError> {
    *flow = Flow::Probing;
    halt_on(flight, &e).await?;
    if acknowledged > 0 && matches!(e, PushError::Overtaken { .. }) {
        Ok(acknowledged)
    } else {
        Err(e)
    }
}

/// Halts the resource when `e` is a gap at the hub or a rewound queue (both need an
/// operator); any other error leaves it running.
pub(super) async fn halt_on(flight: &InFlight<'_>, e: &PushError) -> Result<(), PushError> {
    let kind = match e {
        PushError::Gap { .. } => Some(HaltKind::HubGap),
        PushError::Rewound { .. } => Some(HaltKind::QueueRewound),
        _ => None,
    };
    if let Some(kind) = kind {
        let (q, code, reason) = (
            flight.queue.clone(),
            flight.resource.to_owned(),
            Text::render(|| e.to_string()),
        );
        tokio::task::spawn_blocking(move || q.halt(&code, kind, &reason))
            .await
            .expect("queue task panicked")?;
        tracing::error!(resource = flight.resource, error = %e, "Resource stopped.");
    }
    Ok(())
}

/// The batch that completes the stream's baseline, once it is queued.
pub(super) fn baseline_seq(state: &ResourceState) -> Option<u64> {
    match state.baseline {
        Baseline::Complete { seq } => Some(seq),
        Baseline::Reading { .. } => None,
    }
}

/// Up to [`MAX_IN_FLIGHT`] queued batches after seq `after`, with the resource's state.
pub(super) async fn read_after(
    queue: &Queue,
    resource: &str,
    after: u64,
) -> Result<(Vec<StoredBatch>, ResourceState), PushError> {
    let (q, code) = (queue.clone(), resource.to_owned());
    Ok(tokio::task::spawn_blocking(move || {
        Ok::<_, QueueError>((q.oldest(&code, after, MAX_IN_FLIGHT)?, q.state(&code)?))
    })
    .await
    .expect("queue task panicked")?)
}

/// Raises the queue's committed bound of the batches that may have left to `to` (capped at
/// the last batch committed); returns the bound now stored.
pub(super) async fn raise_sent_through(flight: &InFlight<'_>, to: u64) -> Result<u64, PushError> {
    let (q, code) = (flight.queue.clone(), flight.resource.to_owned());
    Ok(
        tokio::task::spawn_blocking(move || q.raise_sent_through(&code, to))
            .await
            .expect("queue task panicked")?,
    )
}
