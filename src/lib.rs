//! wal-archiver takes write-ahead-log archiving out of databases.
//!
//! A segment flows one way: a shard streams it over gRPC (`service`, with
//! `api` translating the wire); the `engine` spools it, verifies its size and
//! SHA-256 and puts a job on the shard's FIFO (`queue`); a worker thread
//! streams the spool through a zstd encoder (`archive`) into the archive store
//! (`store`), where it is made durable and recorded ARCHIVED in the jobs
//! database (`store` too). Only then may the shard delete its WAL. `client` is
//! the library shards embed; `config` the one typed configuration; `error`
//! the kinds every layer's errors are classified into; `postgres` maps
//! PostgreSQL's archive file names to log_ids.

pub mod api;
pub mod archive;
#[cfg(feature = "bench")]
pub mod bench;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod postgres;
pub mod queue;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod types;
pub mod walgen;

pub mod proto {
    tonic::include_proto!("walarchiver.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("walarchiver_descriptor");
}
