//! One tower layer in front of every service: a cap on requests in flight
//! (RESOURCE_EXHAUSTED past it), a deadline for unary calls only (a deadline on
//! the whole handler would kill long uploads and watches), and a count of
//! every refusal by gRPC code.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

use super::status::{code_name, refusal as status_of};
use crate::error::ErrorKind;
use crate::telemetry;

/// Calls that stream, or may legitimately run long, get no deadline.
const UNTIMED: [&str; 6] = [
    "/walarchiver.v1.WalArchiver/Archive",
    "/walarchiver.v1.WalArchiver/WatchJob",
    "/walarchiver.v1.WalArchiver/Restore",
    "/walarchiver.v1.WalArchiver/Verify",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

#[derive(Clone)]
pub struct GuardLayer {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    unary_timeout: Duration,
}

impl GuardLayer {
    pub fn new(max_in_flight: usize, unary_timeout: Duration) -> Self {
        GuardLayer {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
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
        let timed = !UNTIMED.contains(&request.uri().path());
        let permit = self.layer.in_flight.clone().try_acquire_owned();
        let (max, timeout) = (self.layer.max_in_flight, self.layer.unary_timeout);
        Box::pin(async move {
            let Ok(_permit) = permit else {
                return Ok(refusal(status_of(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "{max} requests are in flight already (max_concurrent_requests); retry later"
                    ),
                )));
            };
            let response = if timed {
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
            Ok(response)
        })
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
        let mut guard = GuardLayer::new(8, Duration::from_millis(20)).layer(slow);
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
