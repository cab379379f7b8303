//! Storage classes and their codes: how a chunk becomes shards and comes back.
//!
//! - `replicas(n)`: `n` full copies; any one is the chunk.
//! - `rs(k,m)`: Reed-Solomon, `k` data and `m` parity shards; any `k` rebuild the chunk.
//! - `lrc(k,l,g)`: a local reconstruction code (see [`lrc`]): `k` data shards in `l` local
//!   groups with one parity each, and `g` global parities.
//!
//! Every class is systematic: data shard `i` of `rs` and `lrc` holds bytes
//! `[i * L, (i + 1) * L)` of the chunk, where `L = shard_len(chunk_len)`, with the last
//! data shards zero-padded, and every copy of `replicas` holds all of it. Reading a chunk
//! whose data shards are all present is therefore a concatenation, with no decoding.
//!
//! Shard *indexes* run over two sets of [`MAX_SHARDS`] slots: shard `i` sits at *position*
//! `i % MAX_SHARDS` of its encoding. While a chunk is re-encoded into another class, its new
//! shards take the other set of slots, so that no new shard has an old one's id.

pub mod lrc;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};
use shardfs_rpc::sync::Lock as _;

use lrc::Lrc;

/// Most shards one chunk may be cut into, and the number of slots in each set.
pub const MAX_SHARDS: usize = 32;

/// Most shards of an `lrc` chunk: every configuration up to it was checked exhaustively.
pub const MAX_LRC_SHARDS: usize = 20;

/// Where shard `index` sits in its encoding.
pub fn position(index: u8) -> usize {
    usize::from(index) % MAX_SHARDS
}

/// A chunk's storage class: how its bytes are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    /// In metad's database, with no shards (small chunks).
    Inline,
    Replicas {
        n: u8,
    },
    Rs {
        k: u8,
        m: u8,
    },
    Lrc {
        k: u8,
        l: u8,
        g: u8,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error(
        "invalid class {0}: replicas(n) needs 2 <= n <= {MAX_SHARDS}; rs(k,m) needs k, m >= 1 \
         and k + m <= {MAX_SHARDS}; lrc(k,l,g) needs l < k, l dividing k, g of 1 or 2 and \
         k + l + g <= {MAX_LRC_SHARDS}"
    )]
    InvalidClass(String),
    #[error("{0:?} is not a storage class: write replicas(3), rs(4,2) or lrc(6,2,2)")]
    Unparsable(String),
    #[error("only {present} of the {needed} shards needed to rebuild the chunk are available")]
    NotEnoughShards { present: usize, needed: usize },
    #[error("shard has {got} bytes, expected {expected}")]
    WrongShardLength { got: usize, expected: usize },
}

impl Encoding {
    pub fn replicas(n: u8) -> Result<Encoding, CodecError> {
        Encoding::Replicas { n }.validate()
    }

    pub fn rs(k: u8, m: u8) -> Result<Encoding, CodecError> {
        Encoding::Rs { k, m }.validate()
    }

    pub fn lrc(k: u8, l: u8, g: u8) -> Result<Encoding, CodecError> {
        Encoding::Lrc { k, l, g }.validate()
    }

    /// Checks a class that arrived from outside (wire, disk, command line) for one kept in
    /// shards: `Inline` is not.
    pub fn validate(self) -> Result<Encoding, CodecError> {
        let valid = match self {
            Encoding::Inline => false,
            Encoding::Replicas { n } => (2..=MAX_SHARDS).contains(&usize::from(n)),
            Encoding::Rs { k, m } => k >= 1 && m >= 1 && self.total() <= MAX_SHARDS,
            Encoding::Lrc { k, l, g } => {
                l >= 1
                    && l < k
                    && k % l == 0
                    && (1..=2).contains(&g)
                    && self.total() <= MAX_LRC_SHARDS
            }
        };
        if valid { Ok(self) } else { Err(CodecError::InvalidClass(self.to_string())) }
    }

    pub fn is_inline(self) -> bool {
        self == Encoding::Inline
    }

    /// Shards a chunk of this class is cut into.
    pub fn total(self) -> usize {
        match self {
            Encoding::Inline => 0,
            Encoding::Replicas { n } => n.into(),
            Encoding::Rs { k, m } => usize::from(k) + usize::from(m),
            Encoding::Lrc { k, l, g } => usize::from(k) + usize::from(l) + usize::from(g),
        }
    }

    /// Shards that together hold the chunk's bytes as they are: the shards a healthy read
    /// fetches, and the fewest that can ever rebuild it.
    pub fn needed(self) -> usize {
        match self {
            Encoding::Inline => 0,
            Encoding::Replicas { .. } => 1,
            Encoding::Rs { k, .. } | Encoding::Lrc { k, .. } => k.into(),
        }
    }

    /// Shards that may be lost, whichever they are, with the chunk still readable.
    pub fn tolerates(self) -> usize {
        match self {
            Encoding::Inline => 0,
            Encoding::Replicas { n } => usize::from(n) - 1,
            Encoding::Rs { m, .. } => m.into(),
            Encoding::Lrc { g, .. } => usize::from(g) + 1,
        }
    }

    /// Whether the chunk can still be rebuilt with the shards at positions `lost` gone.
    pub fn survives(self, lost: &[usize]) -> bool {
        let mut lost = lost.to_vec();
        lost.sort_unstable();
        lost.dedup();
        match self.lrc_code() {
            Some(code) => code.survives(&lost),
            None => lost.len() <= self.total() - self.needed(),
        }
    }

    /// Raw bytes stored per byte of chunk.
    pub fn overhead(self) -> f64 {
        match self {
            Encoding::Inline => 1.0,
            _ => self.total() as f64 / self.needed() as f64,
        }
    }

    /// Bytes in each shard of a chunk of `chunk_len` bytes. Never zero, so that even the
    /// empty chunk has well-formed shards.
    pub fn shard_len(self, chunk_len: usize) -> usize {
        chunk_len.div_ceil(self.needed().max(1)).max(1)
    }

    /// Whether the shard at `position` holds chunk bytes as they are (and so the chunk's
    /// hash tree, which verifies ranges of them).
    pub fn holds_data(self, position: usize) -> bool {
        match self {
            Encoding::Inline => false,
            Encoding::Replicas { .. } => position < self.total(),
            _ => position < self.needed(),
        }
    }

    /// The positions holding byte `offset` of a chunk of `chunk_len` bytes as it is, and
    /// where in each shard that byte is.
    pub fn holders(self, offset: u64, chunk_len: u64) -> (std::ops::Range<usize>, u64) {
        match self {
            Encoding::Replicas { .. } => (0..self.total(), offset),
            _ => {
                let shard_len = self.shard_len(chunk_len as usize) as u64;
                let position = (offset / shard_len) as usize;
                (position..position + 1, offset - position as u64 * shard_len)
            }
        }
    }

    /// The class as four bytes, as the catalogue and shard headers keep it:
    /// `[kind, k, m, l]` with kind 0 for `rs` (and `inline`, as `0, 0, 0, 0`), 1 for
    /// `replicas` (`k = 1`, `m = n - 1`) and 2 for `lrc` (`m = l + g`), so that `k + m` is
    /// always the number of shards.
    pub fn to_parts(self) -> [u8; 4] {
        match self {
            Encoding::Inline => [0, 0, 0, 0],
            Encoding::Rs { k, m } => [0, k, m, 0],
            Encoding::Replicas { n } => [1, 1, n.wrapping_sub(1), 0],
            Encoding::Lrc { k, l, g } => [2, k, l.wrapping_add(g), l],
        }
    }

    /// The inverse of [`Encoding::to_parts`]; `Inline` for all zeroes, any other class
    /// validated.
    pub fn from_parts(parts: [u8; 4]) -> Result<Encoding, CodecError> {
        let invalid = || CodecError::InvalidClass(format!("with parts {parts:?}"));
        let encoding = match parts {
            [0, 0, 0, 0] => return Ok(Encoding::Inline),
            [0, k, m, 0] => Encoding::Rs { k, m },
            [1, 1, m, 0] => Encoding::Replicas { n: m.checked_add(1).ok_or_else(invalid)? },
            [2, k, m, l] if m > l => Encoding::Lrc { k, l, g: m - l },
            _ => return Err(invalid()),
        };
        encoding.validate().map_err(|_| invalid())
    }

    fn reed_solomon(k: u8, m: u8) -> Arc<ReedSolomon> {
        type Codecs = Mutex<HashMap<(u8, u8), Arc<ReedSolomon>>>;
        static CODECS: OnceLock<Codecs> = OnceLock::new();
        let mut codecs = CODECS.get_or_init(Default::default).locked();
        codecs
            .entry((k, m))
            .or_insert_with(|| {
                Arc::new(ReedSolomon::new(k.into(), m.into()).expect("validated k and m"))
            })
            .clone()
    }

    fn lrc_code(self) -> Option<Lrc> {
        match self {
            Encoding::Lrc { k, l, g } => Some(Lrc { k: k.into(), l: l.into(), g: g.into() }),
            _ => None,
        }
    }

    /// The positions to read to rebuild the shard at `lost` when the shards at `available`
    /// can be read: an intact local group of an `lrc` chunk, one copy of a `replicas` one,
    /// else every available position (a fetch stops once it has enough).
    pub fn repair_sources(self, lost: usize, available: &[usize]) -> Vec<usize> {
        if let Some(code) = self.lrc_code()
            && let Some(members) = code.group_peers(lost)
            && members.iter().all(|p| available.contains(p))
        {
            return members;
        }
        match self {
            Encoding::Replicas { .. } => available.iter().copied().take(1).collect(),
            _ => available.to_vec(),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::Inline => write!(f, "inline"),
            Encoding::Replicas { n } => write!(f, "replicas({n})"),
            Encoding::Rs { k, m } => write!(f, "rs({k},{m})"),
            Encoding::Lrc { k, l, g } => write!(f, "lrc({k},{l},{g})"),
        }
    }
}

impl FromStr for Encoding {
    type Err = CodecError;

    /// `replicas(3)`, `rs(4,2)`, `lrc(6,2,2)`, spaces allowed; validated.
    fn from_str(s: &str) -> Result<Encoding, CodecError> {
        let unparsable = || CodecError::Unparsable(s.to_string());
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let (name, rest) = compact.split_once('(').ok_or_else(unparsable)?;
        let numbers: Vec<u8> = rest
            .strip_suffix(')')
            .ok_or_else(unparsable)?
            .split(',')
            .map(|n| n.parse::<u8>().map_err(|_| unparsable()))
            .collect::<Result<_, _>>()?;
        match (name, &numbers[..]) {
            ("replicas", &[n]) => Encoding::replicas(n),
            ("rs", &[k, m]) => Encoding::rs(k, m),
            ("lrc", &[k, l, g]) => Encoding::lrc(k, l, g),
            _ => Err(unparsable()),
        }
    }
}

/// Cuts `chunk` into the class's shards, by position, all of equal length.
pub fn encode(encoding: Encoding, chunk: &[u8]) -> Vec<Vec<u8>> {
    let shard_len = encoding.shard_len(chunk.len());
    if let Encoding::Replicas { n } = encoding {
        let mut copy = chunk.to_vec();
        copy.resize(shard_len, 0);
        return vec![copy; n.into()];
    }
    let data = encoding.needed();
    let mut shards: Vec<Vec<u8>> = (0..data)
        .map(|i| {
            let mut shard = vec![0u8; shard_len];
            let start = (i * shard_len).min(chunk.len());
            let end = ((i + 1) * shard_len).min(chunk.len());
            shard[..end - start].copy_from_slice(&chunk[start..end]);
            shard
        })
        .collect();
    match encoding {
        Encoding::Rs { k, m } => {
            shards.resize(encoding.total(), vec![0u8; shard_len]);
            Encoding::reed_solomon(k, m)
                .encode(&mut shards)
                .expect("shards have equal, non-zero length");
        }
        Encoding::Lrc { .. } => {
            let code = encoding.lrc_code().expect("an lrc class");
            let parities = code.parities(&shards);
            shards.extend(parities);
        }
        Encoding::Inline | Encoding::Replicas { .. } => unreachable!("handled above"),
    }
    shards
}

/// Rebuilds the chunk of `chunk_len` bytes from its available shards. `shards[p]` is the
/// shard at position `p` if it is available; it must have exactly `shard_len(chunk_len)`
/// bytes. Missing data shards are filled in on success.
pub fn decode(
    encoding: Encoding,
    chunk_len: usize,
    shards: &mut [Option<Vec<u8>>],
) -> Result<Vec<u8>, CodecError> {
    let shard_len = encoding.shard_len(chunk_len);
    let needed = encoding.needed();
    assert_eq!(shards.len(), encoding.total(), "one slot per shard");
    for shard in shards.iter().flatten() {
        if shard.len() != shard_len {
            return Err(CodecError::WrongShardLength { got: shard.len(), expected: shard_len });
        }
    }
    let present = shards.iter().filter(|s| s.is_some()).count();
    let not_enough = CodecError::NotEnoughShards { present, needed };
    if present < needed {
        return Err(not_enough);
    }
    match encoding {
        Encoding::Replicas { .. } => {
            let mut copy = shards.iter().flatten().next().expect("one present").clone();
            copy.truncate(chunk_len);
            return Ok(copy);
        }
        Encoding::Rs { k, m } if shards[..needed].iter().any(Option::is_none) => {
            Encoding::reed_solomon(k, m).reconstruct_data(shards).map_err(|_| not_enough)?;
        }
        Encoding::Lrc { .. } => encoding.lrc_code().expect("an lrc class").decode(shards)?,
        _ => {}
    }
    let mut chunk = Vec::with_capacity(shard_len * needed);
    for shard in &shards[..needed] {
        chunk.extend_from_slice(shard.as_ref().expect("data shards rebuilt"));
    }
    chunk.truncate(chunk_len);
    Ok(chunk)
}

/// The shard at position `lost`, rebuilt from the available `shards` (by position), which
/// need only be [`Encoding::repair_sources`]: a local group rebuilds its member by XOR.
pub fn rebuild(
    encoding: Encoding,
    chunk_len: usize,
    shards: &mut [Option<Vec<u8>>],
    lost: usize,
) -> Result<Vec<u8>, CodecError> {
    if let Some(code) = encoding.lrc_code()
        && let Some(members) = code.group_peers(lost)
        && let Some(sources) =
            members.iter().map(|&p| shards[p].as_deref()).collect::<Option<Vec<&[u8]>>>()
    {
        let shard_len = encoding.shard_len(chunk_len);
        if let Some(bad) = sources.iter().find(|s| s.len() != shard_len) {
            let got = bad.len();
            return Err(CodecError::WrongShardLength { got, expected: shard_len });
        }
        return Ok(lrc::xor(&sources));
    }
    let chunk = decode(encoding, chunk_len, shards)?;
    Ok(encode(encoding, &chunk).swap_remove(lost))
}

#[cfg(test)]
mod tests;
