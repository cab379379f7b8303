//! Reading one shard's record, from a volume or from a shard file of a store written before
//! volumes: the header and length checked on open, the checksum on a whole read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::shard::{HEADER_LEN, ShardFormatError, ShardHeader};
use shardfs_chunk_api::chunk_id::ShardId;

/// A record's bytes: `len` bytes at `base` in `file`.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a File,
    pub base: u64,
    pub len: u64,
}

/// What reading a record found. Only I/O failures are errors; damage is an outcome.
pub enum ReadOutcome {
    Valid { header: ShardHeader, payload: Vec<u8> },
    Invalid(ShardFormatError),
}

/// A record's header, checked against the shard it should hold and the record's length.
pub fn open(source: Source, shard: ShardId) -> io::Result<Result<ShardHeader, ShardFormatError>> {
    if source.len < HEADER_LEN as u64 {
        return Ok(Err(ShardFormatError::TooShort { len: source.len as usize }));
    }
    let mut header_bytes = [0u8; HEADER_LEN];
    source.file.read_exact_at(&mut header_bytes, source.base)?;
    let header = match ShardHeader::parse(&header_bytes, shard) {
        Ok(header) => header,
        Err(error) => return Ok(Err(error)),
    };
    let actual = source.len - HEADER_LEN as u64;
    if actual != header.body_len() {
        return Ok(Err(ShardFormatError::Truncated { declared: header.body_len(), actual }));
    }
    Ok(Ok(header))
}

/// Reads a record whole and verifies it.
pub fn read(source: Source, shard: ShardId) -> io::Result<ReadOutcome> {
    let header = match open(source, shard)? {
        Ok(header) => header,
        Err(error) => return Ok(ReadOutcome::Invalid(error)),
    };
    // The body's length is the record's (checked on open), so a damaged length field cannot
    // make us allocate more than the record holds.
    let mut body = vec![0u8; header.body_len() as usize];
    source.file.read_exact_at(&mut body, source.base + HEADER_LEN as u64)?;
    Ok(match header.verify_body(&body) {
        Ok(()) => {
            body.truncate(header.payload_len as usize);
            ReadOutcome::Valid { header, payload: body }
        }
        Err(error) => ReadOutcome::Invalid(error),
    })
}

/// Reads a record's bytes as they are on disk (to copy them elsewhere), verified.
pub fn read_raw(
    source: Source,
    shard: ShardId,
) -> io::Result<(Vec<u8>, Result<ShardHeader, ShardFormatError>)> {
    let mut bytes = vec![0u8; source.len as usize];
    source.file.read_exact_at(&mut bytes, source.base)?;
    let verified = ShardHeader::parse(&bytes, shard)
        .and_then(|header| header.verify_body(&bytes[HEADER_LEN..]).map(|()| header));
    Ok((bytes, verified))
}

/// Bytes `[offset, offset + len)` of the payload, and the tree if `with_tree`. Not verified:
/// the caller checks them against the tree, and the tree against the chunk id.
pub fn read_range(
    source: Source,
    header: &ShardHeader,
    offset: u64,
    len: u32,
    with_tree: bool,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let read_at = |at: u64, len: u64| -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; len as usize];
        source.file.read_exact_at(&mut bytes, source.base + HEADER_LEN as u64 + at)?;
        Ok(bytes)
    };
    let data = read_at(offset, u64::from(len))?;
    let tree = if with_tree { read_at(header.payload_len, header.tree_len())? } else { Vec::new() };
    Ok((data, tree))
}
