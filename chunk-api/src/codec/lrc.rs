//! Local reconstruction codes: `lrc(k, l, g)`.
//!
//! Positions `0..k` hold the data, cut as in every class. The data shards form `l` local
//! groups of `k / l` consecutive shards; position `k + j` holds group `j`'s local parity, the
//! XOR of its data shards. Positions `k + l .. k + l + g` hold the global parities: global
//! parity `i` is `Σ_t a_t^(i+1) · d_t` over GF(2^8) (the field and its arithmetic are
//! reed-solomon-erasure's), with `a_t = 2^(t+1)`, distinct and non-zero for `t < 255`.
//!
//! A lost shard whose local group is otherwise intact is rebuilt from that group alone:
//! `k / l` reads instead of `k`. Anything else is decoded by solving the surviving shards'
//! equations (Gaussian elimination of their generator rows), which works exactly when those
//! rows have rank `k`. For every configuration this crate accepts (see [`Encoding::lrc`]),
//! a check of all `2^(k+l+g)` loss patterns shows the code is maximally recoverable: a
//! pattern is survivable if and only if
//!
//! ```text
//! Σ_j max(e_j - 1, 0) + e_g <= g
//! ```
//!
//! where `e_j` counts the lost shards of group `j` (its data and its local parity) and `e_g`
//! the lost global parities: each group's local parity makes good one loss in the group and
//! each surviving global parity one more anywhere. In particular any `g + 1` losses are
//! survivable. No code with this locality survives more.
//!
//! [`Encoding::lrc`]: super::Encoding::lrc

use reed_solomon_erasure::galois_8 as gf;

use super::CodecError;

/// The shape of one code: `k` data shards in `l` groups, `g` global parities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lrc {
    pub k: usize,
    pub l: usize,
    pub g: usize,
}

impl Lrc {
    pub fn total(self) -> usize {
        self.k + self.l + self.g
    }

    fn group_len(self) -> usize {
        self.k / self.l
    }

    /// The local group of `position`, if it is a data shard or a local parity.
    pub fn group_of(self, position: usize) -> Option<usize> {
        match position {
            p if p < self.k => Some(p / self.group_len()),
            p if p < self.k + self.l => Some(p - self.k),
            _ => None,
        }
    }

    /// The other positions of `position`'s local group (its data shards, then its local
    /// parity): what rebuilds it by XOR. `None` for a global parity.
    pub fn group_peers(self, position: usize) -> Option<Vec<usize>> {
        let j = self.group_of(position)?;
        let start = j * self.group_len();
        let group = (start..start + self.group_len()).chain([self.k + j]);
        Some(group.filter(|&p| p != position).collect())
    }

    /// Row `position` of the generator matrix: shard `position` is `Σ_t row[t] · d_t`.
    pub fn row(self, position: usize) -> Vec<u8> {
        let mut row = vec![0u8; self.k];
        match position {
            p if p < self.k => row[p] = 1,
            p if p < self.k + self.l => {
                let start = (p - self.k) * self.group_len();
                row[start..start + self.group_len()].fill(1);
            }
            p => {
                let power = p - self.k - self.l + 1;
                for (t, coefficient) in row.iter_mut().enumerate() {
                    *coefficient = gf::exp(gf::exp(2, t + 1), power);
                }
            }
        }
        row
    }

    /// Whether losing `lost` (positions) leaves the chunk recoverable, by the rule above.
    pub fn survives(self, lost: &[usize]) -> bool {
        let mut in_group = vec![0usize; self.l];
        let mut global = 0;
        for &p in lost {
            match self.group_of(p) {
                Some(j) => in_group[j] += 1,
                None => global += 1,
            }
        }
        in_group.iter().map(|e| e.saturating_sub(1)).sum::<usize>() + global <= self.g
    }

    /// The parity shards (positions `k..`) of the data shards `data`.
    pub fn parities(self, data: &[Vec<u8>]) -> Vec<Vec<u8>> {
        (self.k..self.total()).map(|p| combine(&self.row(p), data)).collect()
    }

    /// Fills in every missing data shard of `slots` (one per position, all present ones of
    /// equal length) from the present ones.
    pub fn decode(self, slots: &mut [Option<Vec<u8>>]) -> Result<(), CodecError> {
        let missing: Vec<usize> = (0..self.k).filter(|&t| slots[t].is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let present: Vec<usize> = (0..self.total()).filter(|&p| slots[p].is_some()).collect();
        let not_enough = CodecError::NotEnoughShards { present: present.len(), needed: self.k };
        // One missing data shard in a group whose other members are all here: the XOR of
        // those, as cheap as a read of the group.
        if let [t] = missing[..] {
            let members = self.group_peers(t).expect("a data shard has a group");
            if members.iter().all(|&p| slots[p].is_some()) {
                let sources: Vec<&[u8]> =
                    members.iter().map(|&p| slots[p].as_deref().expect("present")).collect();
                slots[t] = Some(xor(&sources));
                return Ok(());
            }
        }
        let (chosen, inverse) = self.solve(&present).ok_or(not_enough)?;
        let sources: Vec<&[u8]> =
            chosen.iter().map(|&p| slots[p].as_deref().expect("present")).collect();
        let rebuilt: Vec<(usize, Vec<u8>)> =
            missing.iter().map(|&t| (t, combine_refs(&inverse[t], &sources))).collect();
        for (t, shard) in rebuilt {
            slots[t] = Some(shard);
        }
        Ok(())
    }

    /// `k` of the `present` positions whose rows are independent, with the inverse of the
    /// matrix they form (row `t` of the inverse gives data shard `t` from the chosen
    /// shards); `None` if the present rows have rank below `k`.
    fn solve(self, present: &[usize]) -> Option<(Vec<usize>, Vec<Vec<u8>>)> {
        let k = self.k;
        // Reduce [rows | identity] row by row, keeping each row that adds rank: the kept
        // rows end as the identity on the left, their combination on the right.
        let mut kept: Vec<(usize, Vec<u8>)> = Vec::with_capacity(k);
        let mut pivots: Vec<usize> = Vec::with_capacity(k);
        for &p in present {
            if kept.len() == k {
                break;
            }
            let mut row = self.row(p);
            row.resize(2 * k, 0);
            row[k + kept.len()] = 1;
            for ((_, pivot_row), &col) in kept.iter().zip(&pivots) {
                let factor = row[col];
                if factor != 0 {
                    gf::mul_slice_xor(factor, pivot_row, &mut row);
                }
            }
            let Some(col) = (0..k).find(|&c| row[c] != 0) else { continue };
            let scale = gf::div(1, row[col]);
            let row: Vec<u8> = row.iter().map(|&x| gf::mul(x, scale)).collect();
            for (_, other) in kept.iter_mut() {
                let factor = other[col];
                if factor != 0 {
                    gf::mul_slice_xor(factor, &row, other);
                }
            }
            kept.push((p, row));
            pivots.push(col);
        }
        if kept.len() < k {
            return None;
        }
        // Row with pivot t, right half: data shard t from the kept shards, in kept order.
        let chosen: Vec<usize> = kept.iter().map(|(p, _)| *p).collect();
        let mut inverse = vec![Vec::new(); k];
        for ((_, row), &col) in kept.iter().zip(&pivots) {
            inverse[col] = row[k..].to_vec();
        }
        Some((chosen, inverse))
    }
}

/// `Σ_t coefficients[t] · shards[t]`.
fn combine(coefficients: &[u8], shards: &[Vec<u8>]) -> Vec<u8> {
    let refs: Vec<&[u8]> = shards.iter().map(Vec::as_slice).collect();
    combine_refs(coefficients, &refs)
}

fn combine_refs(coefficients: &[u8], shards: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![0u8; shards.first().map_or(0, |s| s.len())];
    for (&c, shard) in coefficients.iter().zip(shards) {
        match c {
            0 => {}
            1 => out.iter_mut().zip(*shard).for_each(|(o, s)| *o ^= s),
            c => gf::mul_slice_xor(c, shard, &mut out),
        }
    }
    out
}

/// The XOR of `shards`: what a local parity is of its group, and a group member of the rest.
pub fn xor(shards: &[&[u8]]) -> Vec<u8> {
    combine_refs(&vec![1; shards.len()], shards)
}
