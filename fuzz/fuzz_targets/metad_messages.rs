//! Bodies of metad frames, decoded as each message type metad or a mount reads: requests,
//! responses, pushes and chunkd membership. What decodes must encode and decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_chunk_api::membership::{MembershipRequest, MembershipResponse};
use shardfs_meta_api::proto::{MetaPush, MetaRequest, MetaResponse};
use shardfs_rpc::{decode, encode};

/// Decodes `data` as `T`; if that works, its encoding decodes again.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(message) = decode::<T>(data) {
        decode::<T>(&encode(&message)).expect("a decoded message re-encodes");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<MetaRequest>(data);
    round_trip::<MetaResponse>(data);
    round_trip::<MetaPush>(data);
    round_trip::<MembershipRequest>(data);
    round_trip::<MembershipResponse>(data);
});
