//! Writing one archive: a buffered part, one PUT or a multipart upload whose
//! parts go up while the next fills, recorded locally until it completes.

use super::*;

pub(super) fn remove_record(record: &std::path::Path) {
    if let Err(e) = fs::remove_file(record) {
        tracing::warn!(error = %e, record = %record.display(), "cannot remove an upload record");
    }
}

/// A multipart upload in progress.
pub(super) struct Upload {
    pub(super) id: String,
    pub(super) record: PathBuf,
    /// Each sent part's id, by part index, once it is uploaded.
    pub(super) parts: Vec<Option<PartId>>,
    pub(super) in_flight: JoinSet<(usize, object_store::Result<PartId>)>,
}

pub(super) struct S3Pending {
    pub(super) mode: WriteMode,
    pub(super) client: Arc<Client>,
    pub(super) uploads_dir: PathBuf,
    pub(super) key: ArchiveKey,
    pub(super) path: ObjectPath,
    pub(super) known: Option<ArchiveMeta>,
    pub(super) part_size: usize,
    pub(super) concurrency: usize,
    /// The part being filled; sent when it is full and more bytes come.
    pub(super) buf: Vec<u8>,
    pub(super) upload: Option<Upload>,
    /// The first failure: every later write, and the commit, repeat it.
    pub(super) failed: Option<Failure>,
    pub(super) finished: bool,
}

impl S3Pending {
    pub(super) fn location(&self) -> String {
        self.client.location(&self.path)
    }

    /// Sends the full buffer as the next part, starting the multipart upload
    /// with the first one and waiting while `concurrency` parts are in flight.
    pub(super) fn send_part(&mut self) -> Result<(), StoreError> {
        if self.upload.is_none() {
            self.upload = Some(self.start_upload()?);
        }
        let upload = self.upload.as_mut().expect("started above");
        while upload.in_flight.len() >= self.concurrency {
            wait_for_part(&self.client, &self.path, upload)?;
        }
        let index = upload.parts.len();
        upload.parts.push(None);
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        let payload = PutPayload::from(Bytes::from(data));
        let (s3, path, id) = (self.client.s3.clone(), self.path.clone(), upload.id.clone());
        upload.in_flight.spawn_on(
            async move { (index, s3.put_part(&path, &id, index, payload).await) },
            &self.client.runtime,
        );
        Ok(())
    }

    pub(super) fn start_upload(&self) -> Result<Upload, StoreError> {
        let options = PutMultipartOptions {
            attributes: match &self.known {
                Some(meta) => attributes(meta),
                None => key_attributes(self.key),
            },
            ..PutMultipartOptions::default()
        };
        let id = self.client.call(
            "starting a multipart upload of",
            &self.path,
            self.client.s3.create_multipart_opts(&self.path, options),
        )?;
        match record_upload(&self.uploads_dir, self.key, &self.path, &id) {
            Ok(record) => Ok(Upload {
                id,
                record,
                parts: Vec::new(),
                in_flight: JoinSet::new(),
            }),
            Err(e) => {
                let _ = self
                    .client
                    .abort(&self.path, &id, self.client.call_deadline);
                Err(IoError::new(
                    format!("recording the multipart upload of {}", self.location()),
                    e,
                )
                .into())
            }
        }
    }

    pub(super) fn fail(&mut self, e: StoreError) -> io::Error {
        let failure = Failure::of(&e);
        self.failed = Some(failure);
        io::Error::other(e)
    }

    /// Room for `n` more bytes. A small archive's buffer grows by doubling, so
    /// it costs what it holds, never more than a part; once the archive has
    /// gone multipart each part's buffer is allocated whole.
    pub(super) fn reserve(&mut self, n: usize) {
        let needed = self.buf.len() + n;
        if needed > self.buf.capacity() {
            let target = (self.buf.capacity() * 2)
                .max(needed)
                .max(FIRST_BUFFER)
                .min(self.part_size);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    pub(super) fn put_whole(&mut self, meta: &ArchiveMeta) -> Result<(), StoreError> {
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let options = PutOptions {
            mode: match self.mode {
                WriteMode::Create => PutMode::Create,
                WriteMode::Replace => PutMode::Overwrite,
            },
            attributes: attributes(meta),
            ..PutOptions::default()
        };
        self.client.call(
            "writing",
            &self.path,
            self.client
                .s3
                .put_opts(&self.path, PutPayload::from(data), options),
        )?;
        Ok(())
    }

    pub(super) fn complete(&mut self) -> Result<(), StoreError> {
        if !self.buf.is_empty() {
            // The last part may be smaller than S3's 5 MiB minimum.
            self.send_part()?;
        }
        let upload = self.upload.as_mut().expect("a multipart upload");
        while !upload.in_flight.is_empty() {
            wait_for_part(&self.client, &self.path, upload)?;
        }
        let parts: Vec<PartId> = upload.parts.iter().flatten().cloned().collect();
        let id = upload.id.clone();
        self.client.call(
            "completing the multipart upload of",
            &self.path,
            self.client.s3.complete_multipart(&self.path, &id, parts),
        )?;
        Ok(())
    }
}

/// Writes `key`'s upload `id` durably before any part is sent, so a crash
/// cannot leave parts that nobody knows about.
pub(super) fn record_upload(
    uploads_dir: &std::path::Path,
    key: ArchiveKey,
    path: &ObjectPath,
    id: &str,
) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}-{:020}-{}-{}{RECORD_SUFFIX}",
        key.shard_id,
        key.log_id,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let record = uploads_dir.join(name);
    let mut file = File::create_new(&record)?;
    file.write_all(format!("{path}\n{id}\n").as_bytes())?;
    file.sync_all()?;
    sync_dir(uploads_dir)?;
    Ok(record)
}

/// A failure remembered by a pending upload, to repeat with its kind.
#[derive(Clone)]
pub(super) enum Failure {
    Unavailable(String),
    Backend(String),
}

impl Failure {
    pub(super) fn of(e: &StoreError) -> Failure {
        match e {
            StoreError::Unavailable(message) => Failure::Unavailable(message.clone()),
            other => Failure::Backend(other.to_string()),
        }
    }

    pub(super) fn error(&self) -> StoreError {
        match self {
            Failure::Unavailable(message) => StoreError::Unavailable(message.clone()),
            Failure::Backend(message) => StoreError::Backend(message.clone()),
        }
    }
}

/// Waits for one part in flight to finish.
pub(super) fn wait_for_part(
    client: &Client,
    path: &ObjectPath,
    upload: &mut Upload,
) -> Result<(), StoreError> {
    let joined = client
        .block_on(upload.in_flight.join_next())
        .map_err(|_| client.no_answer("uploading a part of", path))?;
    match joined {
        None => Ok(()),
        Some(Ok((index, Ok(part)))) => {
            upload.parts[index] = Some(part);
            Ok(())
        }
        Some(Ok((index, Err(e)))) => Err(classify(
            &format!("uploading part {} of", index + 1),
            &client.location(path),
            e,
        )),
        Some(Err(e)) => Err(StoreError::Backend(format!(
            "uploading a part of {}: {e}",
            client.location(path)
        ))),
    }
}

impl Write for S3Pending {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failed {
            return Err(io::Error::other(failure.error()));
        }
        if self.finished {
            return Err(io::Error::other("archive already committed"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.len() >= self.part_size
                && let Err(e) = self.send_part()
            {
                return Err(self.fail(e));
            }
            let n = rest.len().min(self.part_size - self.buf.len());
            self.reserve(n);
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.failed {
            Some(failure) => Err(io::Error::other(failure.error())),
            None => Ok(()),
        }
    }
}

impl PendingArchive for S3Pending {
    fn commit(mut self: Box<Self>, meta: &ArchiveMeta) -> Result<(), StoreError> {
        if let Some(failure) = &self.failed {
            return Err(failure.error());
        }
        if self.upload.is_none() {
            self.put_whole(meta)?;
            self.finished = true;
            return Ok(());
        }
        // On failure, dropping `self` aborts the upload.
        self.complete()?;
        self.finished = true;
        if let Some(upload) = self.upload.take() {
            remove_record(&upload.record);
        }
        Ok(())
    }
}

impl Drop for S3Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        upload.in_flight.abort_all();
        let (client, path) = (self.client.clone(), self.path.clone());
        let abort = move || match client.abort(&path, &upload.id, client.attempt_deadline) {
            Ok(()) => remove_record(&upload.record),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot abort a multipart upload; it is tried again at the next start"
            ),
        };
        // Blocking is fine on a worker thread; inside the runtime it would stall
        // (or panic), so the abort is handed to a blocking thread there.
        match Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(abort)),
            Err(_) => abort(),
        }
    }
}

pub(super) fn attributes(meta: &ArchiveMeta) -> Attributes {
    let mut attributes = key_attributes(meta.key);
    for (name, value) in [
        (META_SIZE, meta.size.to_string()),
        (META_SHA256, meta.sha256.to_hex()),
    ] {
        attributes.insert(Attribute::Metadata(name.into()), value.into());
    }
    attributes
}

/// What a multipart upload started before its segment was complete can say
/// about it: whose it is, not yet its size and digest (`stat` then reads them
/// from the archive).
fn key_attributes(key: ArchiveKey) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, CONTENT_TYPE.into());
    for (name, value) in [
        (META_SHARD_ID, key.shard_id.to_string()),
        (META_LOG_ID, key.log_id.to_string()),
    ] {
        attributes.insert(Attribute::Metadata(name.into()), value.into());
    }
    attributes
}
