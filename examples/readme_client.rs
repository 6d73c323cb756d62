// Run a server (`wal-archiver serve`), then `cargo run --example readme_client`.
use wal_archiver::client::{Client, PushOptions};
use wal_archiver::types::ContentKind;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect("http://127.0.0.1:50051").await?;
    let options = PushOptions {
        kind: ContentKind::JsonLines,
        ..PushOptions::default()
    };
    let pushed = client
        .push_file(1, 42, "wal/wal-00042.log".as_ref(), &options)
        .await?; // QUEUED: durable
    let archived = client.wait(pushed.job.id).await?; // ARCHIVED
    let may_delete_up_to = client.shard(1).await?.archived_watermark;
    println!(
        "job {} is {}; WAL up to {may_delete_up_to:?} may be deleted",
        archived.id, archived.state
    );
    Ok(())
}
