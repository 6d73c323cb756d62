//! The bucket as blocking calls with deadlines, the body of a GET as a `Read`,
//! and the one place an object_store failure is classified.

use super::*;

/// The bucket, the runtime the store's requests run on, and the bounds they keep.
pub(super) struct Client {
    pub(super) s3: Arc<AmazonS3>,
    pub(super) runtime: Handle,
    pub(super) bucket: String,
    /// A safety net over one blocking call: the longest that its attempts and
    /// backoffs together may take. object_store's own timeouts end a call well
    /// before; this only guarantees that nothing waits forever.
    pub(super) call_deadline: Duration,
    /// One attempt (`storage_timeout`): what an abort in a drop may take, so a
    /// worker that gives up on a job is not held by a store that is down
    /// (the record stays, and the next start aborts the upload).
    pub(super) attempt_deadline: Duration,
}

impl Client {
    pub(super) fn location(&self, path: &ObjectPath) -> String {
        format!("s3://{}/{}", self.bucket, path)
    }

    /// Runs `fut` on the store's runtime from a blocking thread, within the call deadline.
    pub(super) fn block_on<T>(
        &self,
        fut: impl Future<Output = T>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        self.block_on_within(self.call_deadline, fut)
    }

    pub(super) fn block_on_within<T>(
        &self,
        deadline: Duration,
        fut: impl Future<Output = T>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        self.runtime
            .block_on(async { tokio::time::timeout(deadline, fut).await })
    }

    /// One request: its error classified and named by `op` and `path`.
    pub(super) fn call<T>(
        &self,
        op: &str,
        path: &ObjectPath,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        match self.block_on(fut) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(classify(op, &self.location(path), e)),
            Err(_) => Err(self.no_answer(op, path)),
        }
    }

    /// Like `call`, with a missing object as `None`.
    pub(super) fn call_found<T>(
        &self,
        op: &str,
        path: &ObjectPath,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>, StoreError> {
        match self.block_on(fut) {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(e @ object_store::Error::NotFound { .. })) if !names_missing_bucket(&e) => {
                Ok(None)
            }
            Ok(Err(e)) => Err(classify(op, &self.location(path), e)),
            Err(_) => Err(self.no_answer(op, path)),
        }
    }

    pub(super) fn no_answer(&self, op: &str, path: &ObjectPath) -> StoreError {
        self.no_answer_within(op, path, self.call_deadline)
    }

    pub(super) fn no_answer_within(
        &self,
        op: &str,
        path: &ObjectPath,
        deadline: Duration,
    ) -> StoreError {
        StoreError::Unavailable(format!(
            "{op} {}: no answer within {deadline:?}",
            self.location(path)
        ))
    }

    /// Aborts a multipart upload; one that is gone already (completed, or
    /// removed by a lifecycle rule) counts as aborted.
    pub(super) fn abort(
        &self,
        path: &ObjectPath,
        id: &str,
        deadline: Duration,
    ) -> Result<(), StoreError> {
        let op = "aborting the multipart upload of";
        let id = id.to_owned();
        match self.block_on_within(deadline, self.s3.abort_multipart(path, &id)) {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(classify(op, &self.location(path), e)),
            Err(_) => Err(self.no_answer_within(op, path, deadline)),
        }
    }
}

/// An object's body as a blocking `Read`, one chunk at a time.
pub(super) struct ObjectReader {
    pub(super) client: Arc<Client>,
    pub(super) location: String,
    pub(super) stream: BoxStream<'static, object_store::Result<Bytes>>,
    pub(super) chunk: Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let next = self.client.block_on(self.stream.next()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    StoreError::Unavailable(format!(
                        "reading {}: no data within {:?}",
                        self.location, self.client.call_deadline
                    )),
                )
            })?;
            match next {
                None => return Ok(0),
                Some(Ok(bytes)) => self.chunk = bytes,
                Some(Err(e)) => {
                    return Err(io::Error::other(classify("reading", &self.location, e)));
                }
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Sorts an object_store failure, after its retries, into what the engine acts
/// on: `Exists` (a create-only write found an object), `Unavailable` (it may
/// pass: timeouts, lost connections, throttling, 5xx), or `Backend` (it will
/// not: permissions, a missing bucket, a bad request).
pub(super) fn classify(op: &str, location: &str, e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    let message = format!("{op} {location}: {e}");
    match &e {
        E::AlreadyExists { .. } | E::Precondition { .. } => StoreError::Exists {
            location: location.to_owned(),
        },
        E::Generic { .. } | E::JoinError { .. } if is_transient(&e) => {
            StoreError::Unavailable(message)
        }
        _ => StoreError::Backend(message),
    }
}

/// Whether a failure is a passing one. object_store does not export its
/// request error, so a status is read from its message ("Server returned
/// non-2xx status code: 503 …"); a transport failure is an `HttpError`.
pub(super) fn is_transient(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if error.downcast_ref::<HttpError>().is_some() {
            return true;
        }
        let text = error.to_string();
        if text.starts_with("Server returned error response") {
            // A 200 whose body says InternalError or SlowDown.
            return true;
        }
        if let Some(status) = text
            .strip_prefix("Server returned non-2xx status code: ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
        {
            return status >= 500 || status == 429 || status == 408;
        }
        cause = error.source();
    }
    false
}

/// A 404 about the bucket, not the object: a configuration error, never "no archive".
pub(super) fn names_missing_bucket(e: &object_store::Error) -> bool {
    e.to_string().contains("NoSuchBucket")
}
