//! Routing each shard to the replica that serves it, by the same rule the
//! replicas are configured with (`shard_partition` or `owned_shards`), so a
//! database's flush path needs one list of endpoints, not a map to maintain.

use super::{Client, ClientError, Connection};
use crate::types::{Ownership, ShardId};

pub struct Router {
    routes: Vec<(Ownership, Client)>,
}

impl Router {
    /// Replicas configured `shard_partition = "i/n"`, given in index order:
    /// shard s goes to `connections[s % n]`.
    pub async fn partitioned(connections: &[Connection]) -> Result<Router, ClientError> {
        let count = connections.len() as u32;
        let mut routes = Vec::with_capacity(connections.len());
        for (index, connection) in connections.iter().enumerate() {
            let ownership = Ownership::Partition {
                index: index as u32,
                count,
            };
            routes.push((ownership, Client::connect_with(connection).await?));
        }
        Ok(Router { routes })
    }

    /// Replicas with the shards each owns (`owned_shards`).
    pub async fn with_rules(rules: Vec<(Ownership, Connection)>) -> Result<Router, ClientError> {
        let mut routes = Vec::with_capacity(rules.len());
        for (ownership, connection) in rules {
            routes.push((ownership, Client::connect_with(&connection).await?));
        }
        Ok(Router { routes })
    }

    /// The client of the replica that serves `shard`.
    pub fn client(&self, shard: ShardId) -> Result<&Client, ClientError> {
        self.routes
            .iter()
            .find(|(ownership, _)| ownership.owns(shard))
            .map(|(_, client)| client)
            .ok_or_else(|| ClientError::Invalid(format!("no replica serves shard {shard}")))
    }
}
