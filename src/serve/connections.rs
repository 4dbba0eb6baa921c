//! The HTTP connections: the accept loop, what bounds each connection, and how they end.
//! `axum::serve` neither bounds the time a client takes to send its request's headers nor
//! the number of open connections, and runs each connection as a detached task: a few
//! hundred clients that send half a header and stall hold every file descriptor, and the
//! service answers nobody, `/health` included. So the service serves its router here, with
//! hyper's HTTP/1 server:
//!
//! - A request's headers must arrive within [`ConnectionLimits::header_timeout`] of the
//!   moment the connection waits for them (a new connection, or one kept alive between
//!   requests); then the connection is closed. The body is the request timeout's business.
//! - At most [`ConnectionLimits::max_connections`] are open at once (set below the open-file
//!   limit). One more makes room by closing the oldest connection that is between requests
//!   (waiting for headers, or kept alive); when every open connection is in a request, the
//!   newcomer is answered 503 and closed ([`REFUSALS_AT_ONCE`] such answers at a time; past
//!   them it is closed unanswered).
//! - Every connection is a task of a `JoinSet` that [`serve`] owns. When `stop` is
//!   cancelled, the listener is closed, a connection between requests closes at once, one in
//!   a request answers it and closes, and `serve` returns once all have ended; dropping its
//!   future instead aborts the connections still open.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::lock;

/// Default of `--header-timeout`: long enough for a client on a slow link to send a few
/// kilobytes of headers, short enough that stalled connections do not pile up.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of `--max-connections` (lowered to what the open-file limit leaves).
pub const MAX_CONNECTIONS: u32 = 1024;

/// 503 answers to connections past the limit being sent at once; each holds a descriptor
/// for at most [`REFUSAL_TIME`].
pub const REFUSALS_AT_ONCE: usize = 32;

/// Longest a refused connection is kept to send its 503 and read what the client still
/// sends (closing with unread data would reset the connection before the answer is read).
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Longest a new connection waits for the one closed to make room for it.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// How long accepting pauses after an error such as running out of descriptors (the
/// connection waits in the listen queue meanwhile).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The body of the answer to a connection past the limit, whatever it asked.
const REFUSAL_BODY: &str =
    r#"{"error": "too many connections are open at once; retry in a few seconds"}"#;

/// What bounds the connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// One open connection, as the accept loop sees it.
#[derive(Debug, Default)]
struct OpenConnection {
    /// Requests whose answer is not sent whole yet (from the end of their headers).
    in_request: AtomicUsize,
    /// Cancelled to make room for a new connection.
    evict: CancellationToken,
}

impl OpenConnection {
    fn is_between_requests(&self) -> bool {
        self.in_request.load(Ordering::Acquire) == 0
    }
}

/// The open connections by their number, oldest first.
type OpenConnections = Arc<Mutex<BTreeMap<u64, Arc<OpenConnection>>>>;

/// Serves `router` on `listener` within `limits` until `stop` is cancelled and every
/// connection has ended (see the module doc).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = Arc::new(http);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let open: OpenConnections = Arc::default();
    let mut connections = JoinSet::new();
    let mut next_number: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(ended) = connections.join_next() => note_ended(ended),
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        pause_after(&error).await;
                        continue;
                    }
                };
                let Some(place) = place_for(&places, &open).await else {
                    match Arc::clone(&refusals).try_acquire_owned() {
                        Ok(refusing) => {
                            connections.spawn(refuse(stream, refusing));
                        }
                        // dropped: closed unanswered
                        Err(_) => debug!("a connection past the limit closed unanswered"),
                    }
                    continue;
                };
                next_number += 1;
                let connection = Arc::new(OpenConnection::default());
                lock(&open).insert(next_number, Arc::clone(&connection));
                let registered = Registered {
                    open: Arc::clone(&open),
                    number: next_number,
                    _place: place,
                };
                connections.spawn(serve_connection(
                    stream,
                    router.clone(),
                    Arc::clone(&http),
                    connection,
                    registered,
                    stop.clone(),
                ));
            }
        }
    }
    drop(listener);
    while let Some(ended) = connections.join_next().await {
        note_ended(ended);
    }
}

/// A place among the open connections: a free one, else the one the oldest connection
/// between requests gives up; `None` when every connection is in a request.
async fn place_for(
    places: &Arc<Semaphore>,
    open: &OpenConnections,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(place) = Arc::clone(places).try_acquire_owned() {
        return Some(place);
    }
    let oldest_idle = lock(open)
        .values()
        .find(|connection| connection.is_between_requests() && !connection.evict.is_cancelled())
        .cloned()?;
    oldest_idle.evict.cancel();
    let freed = tokio::time::timeout(EVICTION_WAIT, Arc::clone(places).acquire_owned()).await;
    // the semaphore is never closed: an error can only be the timeout
    freed.ok()?.ok()
}

/// A connection's entry among the open ones and its place, given back when it ends.
struct Registered {
    open: OpenConnections,
    number: u64,
    _place: OwnedSemaphorePermit,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.number);
    }
}

/// Serves one connection until it ends, is evicted between requests, or `stop` asks it to
/// finish.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    http: Arc<http1::Builder>,
    connection: Arc<OpenConnection>,
    registered: Registered,
    stop: CancellationToken,
) {
    let tracked = Arc::clone(&connection);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_request = InRequest::enter(Arc::clone(&tracked));
        let router = router.clone();
        async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| TrackedBody {
                body,
                _in_request: in_request,
            }))
        }
    });
    // boxed, so that dropping it below closes the socket before the place is given back
    let mut served = Box::pin(http.serve_connection(TokioIo::new(stream), service));
    let mut finishing = false;
    loop {
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(error) = ended {
                    // a client that left, a header timeout, a malformed request
                    debug!(error = %error, "connection ended");
                }
                break;
            }
            () = connection.evict.cancelled(), if !finishing => finishing = true,
            () = stop.cancelled(), if !finishing => finishing = true,
        }
        if connection.is_between_requests() {
            break; // closed when `served` is dropped
        }
        served.as_mut().graceful_shutdown();
    }
    drop(served);
    drop(registered);
}

/// Counts a request in its connection until its answer is sent whole (or dropped).
struct InRequest(Arc<OpenConnection>);

impl InRequest {
    fn enter(connection: Arc<OpenConnection>) -> Self {
        connection.in_request.fetch_add(1, Ordering::AcqRel);
        InRequest(connection)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_request.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted while it is sent.
struct TrackedBody {
    body: Body,
    _in_request: InRequest,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Answers 503 to a connection past the limit, then reads what the client still sends
/// until it closes, for at most [`REFUSAL_TIME`].
async fn refuse(mut stream: TcpStream, _refusing: OwnedSemaphorePermit) {
    let answered = tokio::time::timeout(REFUSAL_TIME, async {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
            REFUSAL_BODY.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut discarded = [0_u8; 4096];
        while stream.read(&mut discarded).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
    if let Ok(Err(error)) = answered {
        debug!(error = %error, "a refused connection ended early");
    }
}

/// Waits a moment after an accept error that says the process is short of something
/// (descriptors, memory); errors of one connection (reset before it was accepted) do not.
async fn pause_after(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    warn!(error = %error, "cannot accept a connection; retrying shortly");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

fn note_ended(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        warn!("a connection task panicked (a bug in importer)");
    }
}
