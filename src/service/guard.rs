//! One tower layer in front of every service: caps on calls in flight
//! (RESOURCE_EXHAUSTED past them), a deadline for unary calls only (a deadline
//! on the whole handler would kill long uploads and watches), and a count of
//! every refusal by gRPC code.
//!
//! Each class of call has its own cap, so one cannot crowd out another:
//! unary calls `max_concurrent_requests`, watches `max_concurrent_watches`;
//! pushes and restores are bounded by the engine (`max_concurrent_uploads`,
//! `max_concurrent_restores`) and cut when idle. Health and reflection are
//! behind no cap at all: a liveness probe must answer whatever clients do.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower::{Layer, Service};

use super::status::{code_name, refusal as status_of};
use crate::error::ErrorKind;
use crate::telemetry;

/// How the guard treats a call, by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Health, reflection: never refused, never cut.
    Open,
    /// Bounded by the engine, cut when idle (Archive, Restore).
    Stream,
    /// A watch: counted for as long as its stream is open.
    Watch,
    /// Counted while it runs; `timed` ones get the unary deadline.
    Unary { timed: bool },
}

fn classify(path: &str) -> Class {
    const SERVICE: &str = "/walarchiver.v1.WalArchiver/";
    match path.strip_prefix(SERVICE) {
        Some("Archive" | "Restore") => Class::Stream,
        Some("WatchJob") => Class::Watch,
        // Verify reads every archive: legitimately long.
        Some("Verify") => Class::Unary { timed: false },
        Some(_) => Class::Unary { timed: true },
        None => Class::Open,
    }
}

/// A cap on calls of one class.
#[derive(Clone)]
struct Cap {
    slots: Arc<Semaphore>,
    limit: usize,
    key: &'static str,
}

impl Cap {
    fn new(limit: usize, key: &'static str) -> Cap {
        Cap {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            key,
        }
    }

    fn take(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            status_of(
                ErrorKind::ResourceExhausted,
                format!(
                    "{} calls of this kind are in flight already ({}); retry later",
                    self.limit, self.key
                ),
            )
        })
    }
}

#[derive(Clone)]
pub struct GuardLayer {
    unary: Cap,
    watches: Cap,
    unary_timeout: Duration,
}

impl GuardLayer {
    pub fn new(max_unary: usize, max_watches: usize, unary_timeout: Duration) -> Self {
        GuardLayer {
            unary: Cap::new(max_unary, "max_concurrent_requests"),
            watches: Cap::new(max_watches, "max_concurrent_watches"),
            unary_timeout,
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Guard<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let class = classify(request.uri().path());
        let permit = match class {
            Class::Open | Class::Stream => Ok(None),
            Class::Watch => self.layer.watches.take().map(Some),
            Class::Unary { .. } => self.layer.unary.take().map(Some),
        };
        let timeout = self.layer.unary_timeout;
        Box::pin(async move {
            let permit = match permit {
                Ok(permit) => permit,
                Err(refused) => return Ok(refusal(refused)),
            };
            let response = if class == (Class::Unary { timed: true }) {
                match tokio::time::timeout(timeout, inner.call(request)).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(refusal(status_of(
                            ErrorKind::DeadlineExceeded,
                            format!(
                                "no answer within unary_timeout_ms ({} ms)",
                                timeout.as_millis()
                            ),
                        )));
                    }
                }
            } else {
                inner.call(request).await?
            };
            count_refusal(&response);
            // A watch holds its slot until its stream ends.
            let response = match (class, permit) {
                (Class::Watch, Some(permit)) => response.map(|body| {
                    tonic::body::Body::new(Holding {
                        body,
                        _permit: permit,
                    })
                }),
                _ => response,
            };
            Ok(response)
        })
    }
}

/// A response body that keeps a permit until the body is done.
struct Holding {
    body: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn refusal(status: Status) -> http::Response<tonic::body::Body> {
    let response = status.into_http();
    count_refusal(&response);
    response
}

/// Errors a handler returns travel in the response headers (a trailers-only
/// response); errors in the middle of a stream are counted where they happen.
fn count_refusal<T>(response: &http::Response<T>) {
    let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let code = tonic::Code::from_bytes(code.as_bytes());
    if code != tonic::Code::Ok {
        metrics::counter!(telemetry::REFUSALS, "code" => code_name(code)).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn grpc_code(response: &http::Response<tonic::body::Body>) -> Option<tonic::Code> {
        let value = response.headers().get("grpc-status")?;
        Some(tonic::Code::from_bytes(value.as_bytes()))
    }

    #[tokio::test]
    async fn slow_unary_calls_get_deadline_exceeded_but_streams_do_not() {
        let slow = tower::service_fn(|_request: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut guard = GuardLayer::new(8, 8, Duration::from_millis(20)).layer(slow);
        let unary = guard
            .call(request("/walarchiver.v1.WalArchiver/GetShard"))
            .await
            .unwrap();
        assert_eq!(grpc_code(&unary), Some(tonic::Code::DeadlineExceeded));
        let stream = guard
            .call(request("/walarchiver.v1.WalArchiver/Restore"))
            .await
            .unwrap();
        assert_eq!(
            grpc_code(&stream),
            None,
            "a stream is not cut by the unary deadline"
        );
    }
}
