//! Bodies of chunkd frames: requests a chunkd reads and responses a client reads. What
//! decodes must encode and decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_chunk_api::proto::{ChunkdCall, ChunkdResponse};
use shardfs_rpc::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = decode::<ChunkdCall>(data) {
        decode::<ChunkdCall>(&encode(&call)).expect("a decoded call re-encodes");
    }
    if let Ok(response) = decode::<ChunkdResponse>(data) {
        let again: ChunkdResponse = decode(&encode(&response)).expect("re-encodes");
        drop(again);
    }
});
