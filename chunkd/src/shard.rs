//! The on-disk shard file format: a fixed header followed by the shard's bytes.
//!
//! Every integer is little-endian. Version 1 header (96 bytes):
//!
//! ```text
//! offset  size  field
//!      0     8  magic          b"SFSHARD\0"
//!      8     2  format version u16 = 1
//!     10     1  k              data shards of the chunk's encoding
//!     11     1  m              parity shards of the chunk's encoding
//!     12     1  index          this shard's index, < k + m
//!     13     3  reserved       zero
//!     16     8  chunk_len      u64, length of the whole chunk
//!     24    32  chunk id       BLAKE3 of the whole chunk
//!     56     8  payload_len    u64, bytes after the header; = shard_len(chunk_len)
//!     64    32  checksum       BLAKE3(header bytes 0..64 ‖ payload)
//!     96     …  payload
//! ```
//!
//! The checksum covers the header as well as the payload, so a flipped bit anywhere is
//! caught and a chunkd can scrub one shard without fetching its siblings. A file whose
//! version is not 1 is reported as unsupported rather than corrupt: it was most likely
//! written by a newer build.

use crate::chunk_id::{ChunkId, ShardId};
use crate::codec::Encoding;

pub const MAGIC: [u8; 8] = *b"SFSHARD\0";
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 96;
/// Header bytes covered by the checksum: everything before the checksum field.
const CHECKSUMMED_LEN: usize = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardFormatError {
    #[error("file of {len} bytes is shorter than the {HEADER_LEN}-byte shard header")]
    TooShort { len: usize },
    #[error("not a shard file (bad magic)")]
    BadMagic,
    #[error("shard file format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("header declares invalid encoding {k}+{m}")]
    BadEncoding { k: u8, m: u8 },
    #[error("header declares shard index {index} but the encoding has {total} shards")]
    IndexOutOfRange { index: u8, total: usize },
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("file holds shard {found}, expected {expected}")]
    WrongShard { expected: ShardId, found: ShardId },
    #[error("header declares {declared} payload bytes, a {chunk_len}-byte chunk needs {expected}")]
    PayloadLenMismatch { declared: u64, chunk_len: u64, expected: u64 },
    #[error("header declares {declared} payload bytes, file has {actual}")]
    Truncated { declared: u64, actual: u64 },
    #[error("checksum mismatch")]
    ChecksumMismatch,
}

/// A parsed header. `checksum` still has to be checked against the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub shard: ShardId,
    pub encoding: Encoding,
    pub chunk_len: u64,
    pub payload_len: u64,
    pub checksum: [u8; 32],
}

impl ShardHeader {
    /// The header for `payload`, checksum included.
    pub fn new(shard: ShardId, encoding: Encoding, chunk_len: u64, payload: &[u8]) -> ShardHeader {
        let mut header = ShardHeader {
            shard,
            encoding,
            chunk_len,
            payload_len: payload.len() as u64,
            checksum: [0; 32],
        };
        header.checksum = header.checksum_of(payload);
        header
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
        bytes[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[10] = self.encoding.k;
        bytes[11] = self.encoding.m;
        bytes[12] = self.shard.index;
        // 13..16 reserved, zero.
        bytes[16..24].copy_from_slice(&self.chunk_len.to_le_bytes());
        bytes[24..56].copy_from_slice(&self.shard.chunk.0);
        bytes[56..64].copy_from_slice(&self.payload_len.to_le_bytes());
        bytes
    }

    fn checksum_of(&self, payload: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.checksummed_bytes());
        hasher.update(payload);
        *hasher.finalize().as_bytes()
    }

    /// Parses and checks the first `HEADER_LEN` bytes of `bytes` (which may continue with
    /// the payload). Everything but the checksum is verified here.
    pub fn parse(bytes: &[u8], expected: ShardId) -> Result<ShardHeader, ShardFormatError> {
        let Some(bytes) = bytes.get(..HEADER_LEN) else {
            return Err(ShardFormatError::TooShort { len: bytes.len() });
        };
        if bytes[0..8] != MAGIC {
            return Err(ShardFormatError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(ShardFormatError::UnsupportedVersion(version));
        }
        let (k, m, index) = (bytes[10], bytes[11], bytes[12]);
        let encoding =
            Encoding { k, m }.validate().map_err(|_| ShardFormatError::BadEncoding { k, m })?;
        if usize::from(index) >= encoding.total() {
            return Err(ShardFormatError::IndexOutOfRange { index, total: encoding.total() });
        }
        if bytes[13..16] != [0, 0, 0] {
            return Err(ShardFormatError::ReservedNotZero);
        }
        let chunk_len = read_u64(&bytes[16..24]);
        let mut chunk = [0u8; 32];
        chunk.copy_from_slice(&bytes[24..56]);
        let found = ShardId { chunk: ChunkId(chunk), index };
        if found != expected {
            return Err(ShardFormatError::WrongShard { expected, found });
        }
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
        Ok(ShardHeader { shard: found, encoding, chunk_len, payload_len, checksum })
    }

    /// Checks `payload` (the bytes after the header) against the declared length and checksum.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), ShardFormatError> {
        if payload.len() as u64 != self.payload_len {
            return Err(ShardFormatError::Truncated {
                declared: self.payload_len,
                actual: payload.len() as u64,
            });
        }
        if self.checksum_of(payload) != self.checksum {
            return Err(ShardFormatError::ChecksumMismatch);
        }
        Ok(())
    }
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

/// The whole file for a shard. The store writes `ShardHeader::to_bytes` and the payload
/// separately instead, to avoid copying the payload.
pub fn encode_file(shard: ShardId, encoding: Encoding, chunk_len: u64, payload: &[u8]) -> Vec<u8> {
    let header = ShardHeader::new(shard, encoding, chunk_len, payload);
    let mut file = Vec::with_capacity(HEADER_LEN + payload.len());
    file.extend_from_slice(&header.to_bytes());
    file.extend_from_slice(payload);
    file
}

/// A verified shard file, borrowing its payload from the file's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedShard<'a> {
    pub encoding: Encoding,
    pub chunk_len: u64,
    pub payload: &'a [u8],
}

/// Parses and fully verifies a shard file that should hold `expected`.
pub fn decode_file(bytes: &[u8], expected: ShardId) -> Result<DecodedShard<'_>, ShardFormatError> {
    let header = ShardHeader::parse(bytes, expected)?;
    let payload = &bytes[HEADER_LEN..];
    header.verify_payload(payload)?;
    Ok(DecodedShard { encoding: header.encoding, chunk_len: header.chunk_len, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (ShardId, Encoding, Vec<u8>) {
        let chunk = b"hello shard world".to_vec();
        let shard = ShardId { chunk: ChunkId::of(&chunk), index: 5 };
        let encoding = Encoding::new(4, 2).unwrap();
        let payload = crate::codec::encode(encoding, &chunk).swap_remove(5);
        (shard, encoding, payload)
    }

    #[test]
    fn round_trip() {
        let (shard, encoding, payload) = sample();
        let file = encode_file(shard, encoding, 17, &payload);
        assert_eq!(file.len(), HEADER_LEN + payload.len());
        let decoded = decode_file(&file, shard).unwrap();
        assert_eq!(decoded, DecodedShard { encoding, chunk_len: 17, payload: &payload });
    }

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
        assert_eq!(decoded.encoding, Encoding { k: 2, m: 1 });
        assert_eq!((decoded.chunk_len, decoded.payload), (5, &payload[..]));
        assert_eq!(encode_file(shard, Encoding { k: 2, m: 1 }, 5, &payload), file);
    }

    const V1_CHECKSUM: &str = "e86928cfa43f070e37e3f7198134efefd2102b4134fa49899b4eb0fd019475c1";

    #[test]
    fn specific_errors() {
        let (shard, encoding, payload) = sample();
        let file = encode_file(shard, encoding, 17, &payload);
        let other = ShardId { index: 4, ..shard };
        assert!(matches!(decode_file(&file, other), Err(ShardFormatError::WrongShard { .. })));

        let mut v2 = file.clone();
        v2[8] = 2;
        assert_eq!(decode_file(&v2, shard), Err(ShardFormatError::UnsupportedVersion(2)));

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
        let file = encode_file(shard, encoding, 17, &payload);
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
        let mut huge = file.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        huge[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_file(&huge, shard).is_err());
    }
}
