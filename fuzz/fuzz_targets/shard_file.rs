//! Shard files as a chunkd reads them back from disk: the first 33 bytes name the shard
//! the file should hold (chunk id, index), the rest is the file. A file that decodes holds
//! that shard, and one of the current format re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_chunkd::shard::{FORMAT_VERSION, decode_file, encode_file};
use shardfs_chunk_api::{ChunkId, ShardId};

fuzz_target!(|data: &[u8]| {
    let Some((id, file)) = data.split_first_chunk::<33>() else {
        return;
    };
    let chunk = ChunkId(id[..32].try_into().expect("32 bytes"));
    let expected = ShardId { chunk, index: id[32] };
    if let Ok(shard) = decode_file(file, expected)
        && shard.version == FORMAT_VERSION
    {
        let again =
            encode_file(expected, shard.encoding, shard.chunk_len, shard.payload, shard.tree);
        assert_eq!(again, file, "a decoded shard file re-encodes to itself");
    }
});
