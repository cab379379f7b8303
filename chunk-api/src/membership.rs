//! Messages a chunkd sends to metad (service `Membership`): registration, heartbeats and
//! reports of corrupt shards. They live here, in chunkd, because chunkd must be able to
//! send them without depending on metad; metad implements the receiving side.

use serde::{Deserialize, Serialize};

use crate::chunk_id::ShardId;
use crate::proto::ChunkdStat;

#[derive(Debug, Serialize, Deserialize)]
pub enum MembershipRequest {
    /// Sent at start-up and whenever metad does not know this chunkd.
    Register {
        /// Stable identity, kept in the chunkd's data directory.
        id: String,
        /// Address clients use to reach this chunkd.
        addr: String,
        zone: Option<String>,
        stat: ChunkdStat,
    },
    Heartbeat {
        id: String,
        stat: ChunkdStat,
    },
    /// A shard failed verification and was quarantined.
    ReportCorrupt {
        id: String,
        shard: ShardId,
    },
}

pub type MembershipResponse = Result<MembershipReply, MembershipError>;

#[derive(Debug, Serialize, Deserialize)]
pub enum MembershipReply {
    Ok,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    /// metad has no record of this chunkd: it must register again.
    #[error("chunkd {0} is not registered")]
    UnknownChunkd(String),
    #[error("membership request rejected: {0}")]
    Rejected(String),
    /// This metad replica is not its group's leader; the leader's address, if it knows it.
    #[error("this metad replica is not the leader{}", .0.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader(Option<String>),
}
