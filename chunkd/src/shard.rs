//! The on-disk shard file format: a fixed header, the shard's bytes and, in data shards,
//! the chunk's hash tree.
//!
//! Every integer is little-endian. Header (96 bytes), the same in versions 1 to 3:
//!
//! ```text
//! offset  size  field
//!      0     8  magic          b"SFSHARD\0"
//!      8     2  format version u16: 1, 2 or 3
//!     10     1  k              data shards of the chunk's class (1 for replicas)
//!     11     1  m              other shards of the chunk's class: k + m in all
//!     12     1  index          this shard's index; its position (index % 32) < k + m
//!     13     1  kind           version 3: 0 rs, 1 replicas, 2 lrc; before, zero (rs)
//!     14     1  l              version 3, lrc: local groups (m = l + g); else zero
//!     15     1  reserved       zero
//!     16     8  chunk_len      u64, length of the whole chunk
//!     24    32  chunk id       BLAKE3 of the whole chunk
//!     56     8  payload_len    u64, = shard_len(chunk_len)
//!     64    32  checksum       BLAKE3(header bytes 0..64 ‖ payload ‖ tree)
//!     96     …  payload
//!      …     …  tree           version 2 and later, shards holding data (the data shards,
//!                              every replica) only:
//!                              hash_tree::tree_len(chunk_len) bytes
//! ```
//!
//! The checksum covers the header as well as the payload, so a flipped bit anywhere is
//! caught and a chunkd can scrub one shard without fetching its siblings. The tree (see
//! `hash_tree`) lets a reader verify a range of a data shard against the chunk id. Version 1
//! files have no tree and stay readable whole; versions 1 and 2 hold only `rs` shards. A file of any other version is reported as
//! unsupported rather than corrupt: it was most likely written by a newer build.

use shardfs_chunk_api::chunk_id::{ChunkId, ShardId};
use shardfs_chunk_api::codec::{self, Encoding};
use shardfs_chunk_api::hash_tree;

pub const MAGIC: [u8; 8] = *b"SFSHARD\0";
/// The format version this build writes. It reads this one and the earlier ones.
pub const FORMAT_VERSION: u16 = 3;
pub const HEADER_LEN: usize = 96;
/// Header bytes covered by the checksum: everything before the checksum field.
const CHECKSUMMED_LEN: usize = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardFormatError {
    #[error("file of {len} bytes is shorter than the {HEADER_LEN}-byte shard header")]
    TooShort { len: usize },
    #[error("not a shard file (bad magic)")]
    BadMagic,
    #[error(
        "shard file format version {0} is not supported (this build reads 1 to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("header declares no valid storage class (bytes {0:?})")]
    BadClass([u8; 4]),
    #[error("header declares shard index {index} but the encoding has {total} shards")]
    IndexOutOfRange { index: u8, total: usize },
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("file holds shard {found}, expected {expected}")]
    WrongShard { expected: ShardId, found: ShardId },
    #[error("header declares {declared} payload bytes, a {chunk_len}-byte chunk needs {expected}")]
    PayloadLenMismatch { declared: u64, chunk_len: u64, expected: u64 },
    #[error("header declares {declared} bytes after it, file has {actual}")]
    Truncated { declared: u64, actual: u64 },
    #[error("checksum mismatch")]
    ChecksumMismatch,
}

/// A parsed header. `checksum` still has to be checked against the payload and tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u16,
    pub shard: ShardId,
    pub encoding: Encoding,
    pub chunk_len: u64,
    pub payload_len: u64,
    pub checksum: [u8; 32],
}

impl ShardHeader {
    /// The header of a current-format file holding `payload` and `tree`, checksum included.
    /// `tree` must be [`ShardHeader::tree_len`] bytes: the chunk's tree in a data shard of a
    /// chunk of more than one segment, else empty.
    pub fn new(
        shard: ShardId,
        encoding: Encoding,
        chunk_len: u64,
        payload: &[u8],
        tree: &[u8],
    ) -> ShardHeader {
        let mut header = ShardHeader {
            version: FORMAT_VERSION,
            shard,
            encoding,
            chunk_len,
            payload_len: payload.len() as u64,
            checksum: [0; 32],
        };
        header.checksum = header.checksum_of(&[payload, tree]);
        header
    }

    /// Bytes of hash tree the file holds after the payload.
    pub fn tree_len(&self) -> u64 {
        tree_len(self.version, self.shard.index, self.encoding, self.chunk_len)
    }

    /// Bytes after the header: payload and tree.
    pub fn body_len(&self) -> u64 {
        self.payload_len + self.tree_len()
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..CHECKSUMMED_LEN].copy_from_slice(&self.checksummed_bytes());
        bytes[64..96].copy_from_slice(&self.checksum);
        bytes
    }

    fn checksummed_bytes(&self) -> [u8; CHECKSUMMED_LEN] {
        let mut bytes = [0u8; CHECKSUMMED_LEN];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..10].copy_from_slice(&self.version.to_le_bytes());
        let [kind, k, m, l] = self.encoding.to_parts();
        (bytes[10], bytes[11], bytes[12], bytes[13], bytes[14]) = (k, m, self.shard.index, kind, l);
        // 15 reserved, zero.
        bytes[16..24].copy_from_slice(&self.chunk_len.to_le_bytes());
        bytes[24..56].copy_from_slice(&self.shard.chunk.0);
        bytes[56..64].copy_from_slice(&self.payload_len.to_le_bytes());
        bytes
    }

    fn checksum_of(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.checksummed_bytes());
        for part in parts {
            hasher.update(part);
        }
        *hasher.finalize().as_bytes()
    }

    /// Parses and checks the first `HEADER_LEN` bytes of `bytes` (which may continue with
    /// the payload), which must hold `expected`. Everything but the checksum is verified here.
    pub fn parse(bytes: &[u8], expected: ShardId) -> Result<ShardHeader, ShardFormatError> {
        let header = ShardHeader::parse_any(bytes)?;
        if header.shard != expected {
            return Err(ShardFormatError::WrongShard { expected, found: header.shard });
        }
        Ok(header)
    }

    /// [`ShardHeader::parse`] for a header of any shard, as found when scanning a volume.
    pub fn parse_any(bytes: &[u8]) -> Result<ShardHeader, ShardFormatError> {
        let Some(bytes) = bytes.get(..HEADER_LEN) else {
            return Err(ShardFormatError::TooShort { len: bytes.len() });
        };
        if bytes[0..8] != MAGIC {
            return Err(ShardFormatError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(ShardFormatError::UnsupportedVersion(version));
        }
        let reserved = if version >= 3 { 15 } else { 13 };
        if bytes[reserved..16].iter().any(|&b| b != 0) {
            return Err(ShardFormatError::ReservedNotZero);
        }
        let parts = [bytes[13], bytes[10], bytes[11], bytes[14]];
        let encoding = Encoding::from_parts(parts)
            .and_then(Encoding::validate)
            .map_err(|_| ShardFormatError::BadClass(parts))?;
        let index = bytes[12];
        if !valid_index(index, encoding) {
            return Err(ShardFormatError::IndexOutOfRange { index, total: encoding.total() });
        }
        let chunk_len = read_u64(&bytes[16..24]);
        let mut chunk = [0u8; 32];
        chunk.copy_from_slice(&bytes[24..56]);
        let found = ShardId { chunk: ChunkId(chunk), index };
        let payload_len = read_u64(&bytes[56..64]);
        let expected_len = expected_payload_len(encoding, chunk_len);
        if expected_len != Some(payload_len) {
            return Err(ShardFormatError::PayloadLenMismatch {
                declared: payload_len,
                chunk_len,
                expected: expected_len.unwrap_or(u64::MAX),
            });
        }
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&bytes[64..96]);
        Ok(ShardHeader { version, shard: found, encoding, chunk_len, payload_len, checksum })
    }

    /// Checks `body` (the bytes after the header: payload, then tree) against the declared
    /// length and the checksum.
    pub fn verify_body(&self, body: &[u8]) -> Result<(), ShardFormatError> {
        if body.len() as u64 != self.body_len() {
            return Err(ShardFormatError::Truncated {
                declared: self.body_len(),
                actual: body.len() as u64,
            });
        }
        if self.checksum_of(&[body]) != self.checksum {
            return Err(ShardFormatError::ChecksumMismatch);
        }
        Ok(())
    }
}

/// Bytes of hash tree in a file of format `version` holding shard `index` of a chunk of
/// `chunk_len` bytes: only shards holding data have one, from version 2 on.
pub fn tree_len(version: u16, index: u8, encoding: Encoding, chunk_len: u64) -> u64 {
    if version >= 2 && encoding.holds_data(codec::position(index)) {
        hash_tree::tree_len(chunk_len)
    } else {
        0
    }
}

/// Whether `index` names a shard of a chunk of `encoding`: in either set of slots, at a
/// position the class has.
pub fn valid_index(index: u8, encoding: Encoding) -> bool {
    usize::from(index) < 2 * codec::MAX_SHARDS && codec::position(index) < encoding.total()
}

/// The payload length a shard of a `chunk_len`-byte chunk must have; `None` if `chunk_len`
/// does not even fit in memory.
pub fn expected_payload_len(encoding: Encoding, chunk_len: u64) -> Option<u64> {
    let chunk_len = usize::try_from(chunk_len).ok()?;
    Some(encoding.shard_len(chunk_len) as u64)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_le_bytes(array)
}

/// The whole current-format file for a shard. The store writes `ShardHeader::to_bytes`,
/// the payload and the tree separately instead, to avoid copying the payload.
pub fn encode_file(
    shard: ShardId,
    encoding: Encoding,
    chunk_len: u64,
    payload: &[u8],
    tree: &[u8],
) -> Vec<u8> {
    let header = ShardHeader::new(shard, encoding, chunk_len, payload, tree);
    let mut file = Vec::with_capacity(HEADER_LEN + payload.len() + tree.len());
    file.extend_from_slice(&header.to_bytes());
    file.extend_from_slice(payload);
    file.extend_from_slice(tree);
    file
}

/// A verified shard file, borrowing its payload and tree from the file's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedShard<'a> {
    pub version: u16,
    pub encoding: Encoding,
    pub chunk_len: u64,
    pub payload: &'a [u8],
    pub tree: &'a [u8],
}

/// Parses and fully verifies a shard file that should hold `expected`.
pub fn decode_file(bytes: &[u8], expected: ShardId) -> Result<DecodedShard<'_>, ShardFormatError> {
    let header = ShardHeader::parse(bytes, expected)?;
    let body = &bytes[HEADER_LEN..];
    header.verify_body(body)?;
    let (payload, tree) = body.split_at(header.payload_len as usize);
    let (version, encoding, chunk_len) = (header.version, header.encoding, header.chunk_len);
    Ok(DecodedShard { version, encoding, chunk_len, payload, tree })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (ShardId, Encoding, Vec<u8>) {
        let chunk = b"hello shard world".to_vec();
        let shard = ShardId { chunk: ChunkId::of(&chunk), index: 5 };
        let encoding = Encoding::rs(4, 2).unwrap();
        let payload = shardfs_chunk_api::codec::encode(encoding, &chunk).swap_remove(5);
        (shard, encoding, payload)
    }

    #[test]
    fn round_trip() {
        let (shard, encoding, payload) = sample();
        let file = encode_file(shard, encoding, 17, &payload, &[]);
        assert_eq!(file.len(), HEADER_LEN + payload.len());
        let decoded = decode_file(&file, shard).unwrap();
        let tree = &[][..];
        assert_eq!(
            decoded,
            DecodedShard { version: 3, encoding, chunk_len: 17, payload: &payload, tree }
        );
    }

    /// A data shard of a chunk of several segments: its file carries the chunk's tree.
    fn data_shard_with_tree() -> (ShardId, Encoding, u64, Vec<u8>, Vec<u8>) {
        let chunk: Vec<u8> = (0..3 * hash_tree::SEGMENT_LEN + 5).map(|i| (i % 253) as u8).collect();
        let (id, tree) = hash_tree::build(&chunk);
        let encoding = Encoding::rs(2, 1).unwrap();
        let payload = shardfs_chunk_api::codec::encode(encoding, &chunk).swap_remove(1);
        (ShardId { chunk: id, index: 1 }, encoding, chunk.len() as u64, payload, tree)
    }

    #[test]
    fn data_shards_carry_the_tree_and_parity_shards_do_not() {
        let (shard, encoding, chunk_len, payload, tree) = data_shard_with_tree();
        assert_eq!(tree.len(), 4 * hash_tree::ENTRY_LEN);
        let file = encode_file(shard, encoding, chunk_len, &payload, &tree);
        assert_eq!(file.len(), HEADER_LEN + payload.len() + tree.len());
        let decoded = decode_file(&file, shard).unwrap();
        assert_eq!((decoded.payload, decoded.tree), (&payload[..], &tree[..]));
        // A flipped bit in the tree is caught like one in the payload.
        let mut flipped = file.clone();
        flipped[HEADER_LEN + payload.len() + 3] ^= 1;
        assert_eq!(decode_file(&flipped, shard), Err(ShardFormatError::ChecksumMismatch));
        // Without its tree the file is short.
        let cut = &file[..HEADER_LEN + payload.len()];
        assert!(matches!(decode_file(cut, shard), Err(ShardFormatError::Truncated { .. })));
        // The parity shard of the same chunk has none.
        let parity = ShardId { index: 2, ..shard };
        let file = encode_file(parity, encoding, chunk_len, &payload, &[]);
        assert_eq!(decode_file(&file, parity).unwrap().tree, &[][..]);
    }

    /// A version 3 data shard with its tree, checksum pinned like version 1's below.
    #[test]
    fn version_3_files_stay_readable() {
        let (shard, encoding, chunk_len, payload, tree) = data_shard_with_tree();
        let file = encode_file(shard, encoding, chunk_len, &payload, &tree);
        assert_eq!(&file[8..10], &[3, 0]);
        assert_eq!(hex::encode(&file[64..96]), V3_CHECKSUM);
        assert_eq!(hex::encode(blake3::hash(&file).as_bytes()), V3_FILE_HASH);
    }

    const V3_CHECKSUM: &str = "cc0f01e24c7b4d852fdc1ca254172b278212a33ad228a932060bf6b2dd2ab973";
    const V3_FILE_HASH: &str = "1dfddf95bc649a81e04b13381c5e6a4eac30d9a3cb2d1595d07d895e176a2e63";

    /// The same shard as version 2 wrote it (the version field and so the checksum differ),
    /// pinned by the hashes version 2 builds gave, still reads.
    #[test]
    fn version_2_files_stay_readable() {
        let (shard, encoding, chunk_len, payload, tree) = data_shard_with_tree();
        let mut file = encode_file(shard, encoding, chunk_len, &payload, &tree);
        file[8..10].copy_from_slice(&[2, 0]);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&file[..64]);
        hasher.update(&file[HEADER_LEN..]);
        file[64..96].copy_from_slice(hasher.finalize().as_bytes());
        assert_eq!(hex::encode(&file[64..96]), V2_CHECKSUM);
        assert_eq!(hex::encode(blake3::hash(&file).as_bytes()), V2_FILE_HASH);
        let decoded = decode_file(&file, shard).unwrap();
        assert_eq!((decoded.version, decoded.encoding, decoded.tree), (2, encoding, &tree[..]));
    }

    /// Every class survives the header: replicas carry the tree in every copy, lrc only in
    /// its data shards; a second-slot index is a shard of the same position.
    #[test]
    fn every_class_round_trips_through_the_header() {
        let chunk: Vec<u8> = (0..40_000).map(|i| (i % 251) as u8).collect();
        let (id, tree) = hash_tree::build(&chunk);
        for (class, index, has_tree) in [
            ("replicas(3)", 2, true),
            ("lrc(6,2,2)", 5, true),
            ("lrc(6,2,2)", 7, false),
            ("rs(4,2)", 33, true),
            ("rs(4,2)", 36, false),
        ] {
            let encoding: Encoding = class.parse().unwrap();
            let position = codec::position(index);
            let payload = codec::encode(encoding, &chunk).swap_remove(position);
            let shard = ShardId { chunk: id, index };
            let tree = if has_tree { &tree[..] } else { &[][..] };
            assert_eq!(tree_len(FORMAT_VERSION, index, encoding, 40_000), tree.len() as u64);
            let file = encode_file(shard, encoding, 40_000, &payload, tree);
            let decoded = decode_file(&file, shard).unwrap();
            assert_eq!(
                (decoded.encoding, decoded.payload, decoded.tree),
                (encoding, &payload[..], tree)
            );
        }
        let encoding = Encoding::lrc(6, 2, 2).unwrap();
        for index in [10, 31, 42, 64, 200] {
            assert!(!valid_index(index, encoding), "{index}");
        }
        assert!(valid_index(41, encoding));
    }

    const V2_CHECKSUM: &str = "211b53c5e0b8bf928d392f56a282f59296e5fbd26f8b96fce50bea14d50a6f53";
    const V2_FILE_HASH: &str = "249ed06380f8981dda6a5a189e54997b705fb52f48582dc1b6032d7d7c0bf069";

    /// A version 1 file built byte by byte from the table in the module doc, with its
    /// checksum pinned: if this fails, files already on disk would no longer be readable.
    #[test]
    fn version_1_files_stay_readable() {
        let chunk_id = ChunkId([0xab; 32]);
        let payload = [1u8, 2, 3];
        let mut file = Vec::new();
        file.extend_from_slice(b"SFSHARD\0");
        file.extend_from_slice(&[1, 0]); // version
        file.extend_from_slice(&[2, 1, 1, 0, 0, 0]); // k, m, index, reserved
        file.extend_from_slice(&5u64.to_le_bytes()); // chunk_len: 5 bytes → 3-byte shards
        file.extend_from_slice(&chunk_id.0);
        file.extend_from_slice(&3u64.to_le_bytes());
        let checksum = hex::decode(V1_CHECKSUM).unwrap();
        file.extend_from_slice(&checksum);
        file.extend_from_slice(&payload);
        let shard = ShardId { chunk: chunk_id, index: 1 };
        let decoded = decode_file(&file, shard).unwrap();
        assert_eq!((decoded.version, decoded.encoding), (1, Encoding::Rs { k: 2, m: 1 }));
        assert_eq!((decoded.chunk_len, decoded.payload, decoded.tree), (5, &payload[..], &[][..]));
    }

    const V1_CHECKSUM: &str = "e86928cfa43f070e37e3f7198134efefd2102b4134fa49899b4eb0fd019475c1";

    #[test]
    fn specific_errors() {
        let (shard, encoding, payload) = sample();
        let file = encode_file(shard, encoding, 17, &payload, &[]);
        let other = ShardId { index: 4, ..shard };
        assert!(matches!(decode_file(&file, other), Err(ShardFormatError::WrongShard { .. })));

        let mut v4 = file.clone();
        v4[8] = 4;
        assert_eq!(decode_file(&v4, shard), Err(ShardFormatError::UnsupportedVersion(4)));

        let mut bad_class = file.clone();
        bad_class[13] = 7;
        assert_eq!(decode_file(&bad_class, shard), Err(ShardFormatError::BadClass([7, 4, 2, 0])));
        let mut reserved = file.clone();
        reserved[15] = 1;
        assert_eq!(decode_file(&reserved, shard), Err(ShardFormatError::ReservedNotZero));

        let mut bad_index = file.clone();
        bad_index[12] = 6;
        assert!(matches!(
            decode_file(&bad_index, ShardId { index: 6, ..shard }),
            Err(ShardFormatError::IndexOutOfRange { index: 6, total: 6 })
        ));

        let truncated = &file[..file.len() - 1];
        assert!(matches!(decode_file(truncated, shard), Err(ShardFormatError::Truncated { .. })));

        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode_file(&flipped, shard), Err(ShardFormatError::ChecksumMismatch));
    }

    /// Decoding must reject, never panic on, arbitrary input.
    #[test]
    fn garbage_never_panics() {
        let (shard, encoding, payload) = sample();
        let file = encode_file(shard, encoding, 17, &payload, &[]);
        for cut in 0..file.len() {
            assert!(decode_file(&file[..cut], shard).is_err(), "cut at {cut}");
        }
        for bit in 0..file.len() * 8 {
            let mut flipped = file.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_file(&flipped, shard).is_err(), "bit {bit}");
        }
        let mut state = 0x1234_5678_9abc_def1u64;
        for len in [0, 1, 95, 96, 97, 200, 4096] {
            for _ in 0..50 {
                let mut garbage: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                assert!(decode_file(&garbage, shard).is_err());
                // Also garbage behind a valid magic and version, to get past the first checks.
                if garbage.len() >= HEADER_LEN {
                    garbage[..10].copy_from_slice(&file[..10]);
                    assert!(decode_file(&garbage, shard).is_err());
                }
            }
        }
        // Huge declared lengths must not overflow.
        let mut huge = file;
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        huge[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_file(&huge, shard).is_err());
    }
}
