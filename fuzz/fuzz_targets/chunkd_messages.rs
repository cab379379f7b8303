//! Bodies of chunkd frames: requests a chunkd reads and responses a client reads. What
//! decodes must encode and decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_chunkd::proto::{ChunkdRequest, ChunkdResponse};
use shardfs_rpc::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode::<ChunkdRequest>(data) {
        decode::<ChunkdRequest>(&encode(&request)).expect("a decoded request re-encodes");
    }
    if let Ok(response) = decode::<ChunkdResponse>(data) {
        let again: ChunkdResponse = decode(&encode(&response)).expect("re-encodes");
        drop(again);
    }
});
