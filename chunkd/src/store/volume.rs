//! Volume files: shards appended one after another to a few large files, each with a
//! checkpointed index and a log of deletions beside it.
//!
//! ```text
//! volumes/v<8 digits>.dat   records: shard files (format in `shard`) back to back
//! volumes/v<8 digits>.idx   index of the records in the first `covered` bytes of the .dat
//! volumes/v<8 digits>.del   deletions: offsets of records that are no longer live
//! ```
//!
//! A record is exactly what a file-per-shard store keeps in one file: the 96-byte header
//! (magic, shard id, lengths, checksum over all of it), the payload and the tree. The .dat
//! file is the authority; the .idx only saves re-reading it at start-up, and the .del marks
//! what is dead. The layout of each is in docs/shard-format.md.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::shard::{FORMAT_VERSION, HEADER_LEN, MAGIC, ShardFormatError, ShardHeader};
use shardfs_chunk_api::chunk_id::ShardId;

pub const VOLUMES_DIR: &str = "volumes";

/// One volume's data file, open for reading and appending. Shared by the index entries that
/// point into it, so a reader keeps it readable even after compaction unlinks it.
#[derive(Debug)]
pub struct VolumeFile {
    pub number: u32,
    pub file: File,
    pub path: PathBuf,
}

/// A record of a volume: where a shard is, and its header (whose checksum covers the
/// encoding, the lengths, the payload and the tree, so equal checksums mean equal records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub len: u64,
    pub header: ShardHeader,
}

pub fn data_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("v{number:08}.dat"))
}

fn idx_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("v{number:08}.idx"))
}

pub fn del_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("v{number:08}.del"))
}

/// The volume numbers in `dir`, ascending, from the names of its .dat files.
pub fn numbers(dir: &Path) -> io::Result<Vec<u32>> {
    let mut numbers = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(numbers),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let parsed = name.to_str().and_then(|name| {
            let digits = name.strip_prefix('v')?.strip_suffix(".dat")?;
            (digits.len() == 8 && digits.bytes().all(|c| c.is_ascii_digit()))
                .then(|| digits.parse::<u32>().ok())?
        });
        numbers.extend(parsed);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Removes index files and deletion logs whose volume is gone (a removal a crash cut
/// short); returns how many.
pub fn remove_orphans(dir: &Path, numbers: &[u32]) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let orphan = name.to_str().is_some_and(|name| {
            let Some(rest) = name.strip_prefix('v') else { return false };
            let Some(digits) = rest.strip_suffix(".idx").or_else(|| rest.strip_suffix(".del"))
            else {
                return false;
            };
            digits.parse::<u32>().is_ok_and(|number| !numbers.contains(&number))
        });
        if orphan {
            fs::remove_file(dir.join(name))?;
            removed += 1;
        }
    }
    if removed > 0 {
        super::durable::sync_dir(dir)?;
    }
    Ok(removed)
}

/// Opens volume `number`'s data file for reading and writing.
pub fn open(dir: &Path, number: u32, create: bool) -> io::Result<VolumeFile> {
    let path = data_path(dir, number);
    let file = OpenOptions::new().read(true).write(true).create_new(create).open(&path)?;
    Ok(VolumeFile { number, file, path })
}

/// Opens (creating if missing) volume `number`'s deletion log, and returns it with the
/// offset the next entry goes to: after the last whole entry, over any torn one.
pub fn open_del(dir: &Path, number: u32) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(del_path(dir, number))?;
    let len = file.metadata()?.len();
    Ok((file, len - len % DEL_ENTRY_LEN))
}

/// What a volume holds, as found at start-up.
pub struct Scanned {
    /// Live records (not in the deletion log), in offset order.
    pub records: Vec<Record>,
    /// End of the last whole record: where the next one goes.
    pub end: u64,
    /// Length of the file: more than `end` after a write a crash cut short.
    pub file_len: u64,
    /// Whether the index file covers every record up to `end`.
    pub indexed: bool,
    /// Records whose header parsed but whose body failed verification. Not live.
    pub damaged: Vec<(ShardId, u64, ShardFormatError)>,
}

/// Reads volume `number`: the records its index covers, then every record after that,
/// verified whole if `verify`. Reading stops at the first header that does not parse or a
/// record that runs past the end of the file: that is where a write was cut short (appends
/// happen in order, and each group is synced before the next starts).
pub fn scan(dir: &Path, volume: &VolumeFile, verify: bool) -> io::Result<Scanned> {
    let file_len = volume.file.metadata()?.len();
    let (mut records, start) = match read_idx(dir, volume.number, file_len) {
        Some((records, covered)) => (records, covered),
        None => (Vec::new(), 0),
    };
    let mut damaged = Vec::new();
    let mut at = start;
    while at + HEADER_LEN as u64 <= file_len {
        match record_at(volume, at, file_len, verify)? {
            RecordAt::Valid(header, len) => {
                records.push(Record { offset: at, len, header });
                at += len;
            }
            RecordAt::Damaged(header, len, error) => {
                damaged.push((header.shard, at, error));
                at += len;
            }
            // A write cut short, or damage: if a whole record follows, it was damage.
            RecordAt::Unreadable(error) => match next_record(volume, at + 1, file_len)? {
                Some(next) => {
                    warn!(
                        volume = volume.number,
                        offset = at,
                        bytes = next - at,
                        "skipped damaged bytes in a volume ({error})"
                    );
                    at = next;
                }
                None => break,
            },
        }
    }
    let dead = read_del(dir, volume.number)?;
    records.retain(|record| !dead.contains(&record.offset));
    records.sort_unstable_by_key(|record| record.offset);
    Ok(Scanned { records, end: at, file_len, indexed: at == start, damaged })
}

/// What is at an offset of a volume.
enum RecordAt {
    /// A record, verified whole (or not asked to be), and its length.
    Valid(ShardHeader, u64),
    /// A record whose header parses but whose body fails verification.
    Damaged(ShardHeader, u64, ShardFormatError),
    /// No record: a header that does not parse, or one running past the end of the file.
    Unreadable(ShardFormatError),
}

/// Reads what is at `at`. A record of a format newer than this build's is an error: a
/// newer chunkd wrote it, and nothing must be cut or skipped on its account.
fn record_at(volume: &VolumeFile, at: u64, file_len: u64, verify: bool) -> io::Result<RecordAt> {
    let file = &volume.file;
    let mut header_bytes = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header_bytes, at)?;
    let header = match ShardHeader::parse_any(&header_bytes) {
        Ok(header) => header,
        Err(ShardFormatError::UnsupportedVersion(version)) if version > FORMAT_VERSION => {
            return Err(io::Error::other(format!(
                "{} holds a record of format version {version} at offset {at}: a newer \
                 shardfs-chunkd wrote it (this one reads 1 to {FORMAT_VERSION})",
                volume.path.display()
            )));
        }
        Err(error) => return Ok(RecordAt::Unreadable(error)),
    };
    let len = HEADER_LEN as u64 + header.body_len();
    if file_len - at < len {
        let actual = file_len - at - HEADER_LEN as u64;
        return Ok(RecordAt::Unreadable(ShardFormatError::Truncated {
            declared: header.body_len(),
            actual,
        }));
    }
    if !verify {
        return Ok(RecordAt::Valid(header, len));
    }
    let mut body = vec![0u8; header.body_len() as usize];
    file.read_exact_at(&mut body, at + HEADER_LEN as u64)?;
    Ok(match header.verify_body(&body) {
        Ok(()) => RecordAt::Valid(header, len),
        Err(error) => RecordAt::Damaged(header, len, error),
    })
}

/// The offset of the first whole, verified record at or after `from`, if any.
fn next_record(volume: &VolumeFile, from: u64, file_len: u64) -> io::Result<Option<u64>> {
    let file = &volume.file;
    const BLOCK: u64 = 1 << 20;
    let mut block = vec![0u8; BLOCK as usize];
    let mut start = from;
    while start + HEADER_LEN as u64 <= file_len {
        let len = BLOCK.min(file_len - start) as usize;
        file.read_exact_at(&mut block[..len], start)?;
        let hits = block[..len].windows(MAGIC.len()).enumerate().filter(|(_, w)| *w == MAGIC);
        for (hit, _) in hits {
            let candidate = start + hit as u64;
            if candidate + HEADER_LEN as u64 > file_len {
                break;
            }
            if let RecordAt::Valid(..) = record_at(volume, candidate, file_len, true)? {
                return Ok(Some(candidate));
            }
        }
        // The next block overlaps this one by less than a magic, so none is missed.
        start += (len - (MAGIC.len() - 1)).max(1) as u64;
    }
    Ok(None)
}

const IDX_MAGIC: [u8; 8] = *b"SFVIDX1\0";
/// Magic, volume number, reserved, covered length, entry count.
const IDX_HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
/// Offset, length, and the record's header as the .dat holds it.
const IDX_ENTRY_LEN: usize = 8 + 8 + HEADER_LEN;

/// Writes volume `number`'s index: `records` are its live records in `[0, covered)`. The
/// file is replaced atomically, so a crash leaves the old index or the new one.
pub fn write_idx(
    dir: &Path,
    tmp_dir: &Path,
    number: u32,
    covered: u64,
    records: &[Record],
) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(IDX_HEADER_LEN + records.len() * IDX_ENTRY_LEN + 32);
    bytes.extend_from_slice(&IDX_MAGIC);
    bytes.extend_from_slice(&number.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&covered.to_le_bytes());
    bytes.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for record in records {
        bytes.extend_from_slice(&record.offset.to_le_bytes());
        bytes.extend_from_slice(&record.len.to_le_bytes());
        bytes.extend_from_slice(&record.header.to_bytes());
    }
    let checksum = *blake3::hash(&bytes).as_bytes();
    super::durable::write_durable(tmp_dir, &idx_path(dir, number), &[&bytes, &checksum])
}

/// Volume `number`'s index and the length it covers, if it has a valid one that fits in
/// `file_len` bytes; else `None`, and the volume is read whole.
fn read_idx(dir: &Path, number: u32, file_len: u64) -> Option<(Vec<Record>, u64)> {
    let path = idx_path(dir, number);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!("cannot read {}, reading the volume whole instead: {e}", path.display());
            return None;
        }
    };
    let parsed = parse_idx(&bytes, number, file_len);
    if parsed.is_none() {
        warn!("{} is not a valid index; reading the volume whole instead", path.display());
    }
    parsed
}

fn parse_idx(bytes: &[u8], number: u32, file_len: u64) -> Option<(Vec<Record>, u64)> {
    let (body, checksum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != checksum || body.get(..8)? != IDX_MAGIC {
        return None;
    }
    let u64_at = |at: usize| Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?));
    let stored_number = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    let covered = u64_at(16)?;
    let count = usize::try_from(u64_at(24)?).ok()?;
    if stored_number != number
        || covered > file_len
        || body.len() != IDX_HEADER_LEN.checked_add(count.checked_mul(IDX_ENTRY_LEN)?)?
    {
        return None;
    }
    let mut records = Vec::with_capacity(count);
    for entry in body[IDX_HEADER_LEN..].chunks_exact(IDX_ENTRY_LEN) {
        let offset = u64::from_le_bytes(entry[..8].try_into().ok()?);
        let len = u64::from_le_bytes(entry[8..16].try_into().ok()?);
        let header = ShardHeader::parse_any(&entry[16..]).ok()?;
        if offset.checked_add(len)? > covered || len != HEADER_LEN as u64 + header.body_len() {
            return None;
        }
        records.push(Record { offset, len, header });
    }
    Some((records, covered))
}

/// Offset of the dead record, then the first 8 bytes of a check over the volume number and
/// the offset, so a torn or stray entry is never taken for a deletion.
const DEL_ENTRY_LEN: u64 = 16;

fn del_check(number: u32, offset: u64) -> [u8; 8] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shardfs volume deletion");
    hasher.update(&number.to_le_bytes());
    hasher.update(&offset.to_le_bytes());
    hasher.finalize().as_bytes()[..8].try_into().expect("8 of 32 bytes")
}

/// The entries that mark `offsets` of volume `number` dead.
pub fn del_entries(number: u32, offsets: &[u64]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(offsets.len() * DEL_ENTRY_LEN as usize);
    for &offset in offsets {
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&del_check(number, offset));
    }
    bytes
}

/// Offsets of the records volume `number`'s deletion log marks dead.
fn read_del(dir: &Path, number: u32) -> io::Result<HashSet<u64>> {
    let bytes = match fs::read(del_path(dir, number)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .chunks_exact(DEL_ENTRY_LEN as usize)
        .filter_map(|entry| {
            let offset = u64::from_le_bytes(entry[..8].try_into().ok()?);
            (entry[8..] == del_check(number, offset)).then_some(offset)
        })
        .collect())
}

/// Removes volume `number`'s files, data first: its deletion log must not go while its
/// records could still be read at the next start.
pub fn remove(dir: &Path, number: u32) -> io::Result<()> {
    for path in [data_path(dir, number), idx_path(dir, number), del_path(dir, number)] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    super::durable::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardfs_chunk_api::chunk_id::ChunkId;

    fn record(seed: u8, offset: u64) -> Record {
        let shard = ShardId { chunk: ChunkId([seed; 32]), index: seed % 3 };
        let encoding = shardfs_chunk_api::codec::Encoding::rs(2, 1).unwrap();
        let payload = vec![seed; 4 + usize::from(seed)];
        let chunk_len = 2 * payload.len() as u64;
        let header = ShardHeader::new(shard, encoding, chunk_len, &payload, &[]);
        Record { offset, len: (HEADER_LEN + payload.len()) as u64, header }
    }

    #[test]
    fn an_index_round_trips_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let records = vec![record(1, 0), record(2, 101), record(3, 203)];
        write_idx(dir.path(), &tmp, 7, 306, &records).unwrap();
        assert_eq!(read_idx(dir.path(), 7, 306), Some((records.clone(), 306)));
        // Not for another volume, nor for a data file shorter than what it covers.
        fs::copy(idx_path(dir.path(), 7), idx_path(dir.path(), 8)).unwrap();
        assert_eq!(read_idx(dir.path(), 8, 306), None);
        assert_eq!(read_idx(dir.path(), 7, 305), None);
        let mut bytes = fs::read(idx_path(dir.path(), 7)).unwrap();
        for at in [0, 20, IDX_HEADER_LEN + 40, bytes.len() - 1] {
            bytes[at] ^= 1;
            assert_eq!(parse_idx(&bytes, 7, 306), None, "flipped byte {at}");
            bytes[at] ^= 1;
        }
        for cut in 0..bytes.len() {
            assert_eq!(parse_idx(&bytes[..cut], 7, 306), None, "cut at {cut}");
        }
    }

    #[test]
    fn deletion_entries_are_checked_and_torn_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (file, at) = open_del(dir.path(), 3).unwrap();
        assert_eq!(at, 0);
        let mut bytes = del_entries(3, &[0, 4096, 77]);
        // A torn entry, and one meant for another volume.
        bytes.extend_from_slice(&del_entries(4, &[5]));
        bytes.extend_from_slice(&del_entries(3, &[9])[..10]);
        file.write_all_at(&bytes, 0).unwrap();
        assert_eq!(read_del(dir.path(), 3).unwrap(), HashSet::from([0, 4096, 77]));
        let (_, at) = open_del(dir.path(), 3).unwrap();
        assert_eq!(at, 4 * DEL_ENTRY_LEN, "the next entry goes over the torn one");
    }

    #[test]
    fn volume_numbers_come_from_data_file_names_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["v00000002.dat", "v00000010.dat", "v00000003.idx", "v1.dat", "x00000004.dat"] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(numbers(dir.path()).unwrap(), vec![2, 10]);
        assert_eq!(numbers(&dir.path().join("missing")).unwrap(), Vec::<u32>::new());
    }
}
