//! wal-archiver takes write-ahead-log archiving out of databases.
//!
//! A segment flows one way: a shard streams it over gRPC (`service`), the
//! engine spools it, verifies its size and SHA-256 and puts a job on the
//! shard's FIFO (`queue`); a worker thread streams the spool through a zstd
//! encoder into an archive file (`archive`), which is made durable in the
//! archive store and recorded ARCHIVED in the jobs database (`store`). Only
//! then may the shard delete its WAL. `client` is the library shards embed.

pub mod api;
pub mod archive;
pub mod bench;
pub mod client;
pub mod config;
pub mod queue;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod types;
pub mod walgen;

pub mod proto {
    tonic::include_proto!("walarchiver.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("walarchiver_descriptor");
}
