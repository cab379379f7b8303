use super::*;
use crate::chunk_id::ChunkId;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Every way of losing exactly `lost` of `total` shards.
fn loss_patterns(total: usize, lost: usize) -> Vec<Vec<usize>> {
    (0u32..1 << total)
        .filter(|mask| mask.count_ones() as usize == lost)
        .map(|mask| (0..total).filter(|i| mask & (1 << i) != 0).collect())
        .collect()
}

fn without(shards: &[Vec<u8>], lost: &[usize]) -> Vec<Option<Vec<u8>>> {
    let mut slots: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
    for &p in lost {
        slots[p] = None;
    }
    slots
}

#[test]
fn any_m_losses_rebuild_an_rs_chunk() {
    let encoding = Encoding::rs(4, 2).unwrap();
    for len in [0, 1, 3, 4095, 4096, 65_537, 1_000_003, 4 << 20] {
        let chunk = pseudo_random(len, len as u64);
        let id = ChunkId::of(&chunk);
        let shards = encode(encoding, &chunk);
        assert_eq!(shards.len(), 6);
        for lost in loss_patterns(6, 2) {
            let rebuilt = decode(encoding, len, &mut without(&shards, &lost)).unwrap();
            assert_eq!(ChunkId::of(&rebuilt), id, "len {len} lost {lost:?}");
        }
    }
}

#[test]
fn other_rs_encodings_round_trip() {
    for (k, m) in [(1, 2), (2, 1), (3, 3), (10, 4)] {
        let encoding = Encoding::rs(k, m).unwrap();
        let chunk = pseudo_random(12_345, 9);
        let shards = encode(encoding, &chunk);
        let lost: Vec<usize> = (0..m as usize).collect();
        assert_eq!(decode(encoding, chunk.len(), &mut without(&shards, &lost)).unwrap(), chunk);
    }
}

#[test]
fn every_replica_is_the_chunk_and_any_one_is_enough() {
    let encoding = Encoding::replicas(3).unwrap();
    let chunk = pseudo_random(70_001, 4);
    let shards = encode(encoding, &chunk);
    assert!(shards.iter().all(|s| *s == chunk));
    for keep in 0..3 {
        let lost: Vec<usize> = (0..3).filter(|&p| p != keep).collect();
        assert_eq!(decode(encoding, chunk.len(), &mut without(&shards, &lost)).unwrap(), chunk);
        assert_eq!(
            rebuild(encoding, chunk.len(), &mut without(&shards, &lost), lost[0]),
            Ok(chunk.clone())
        );
    }
    assert_eq!(
        decode(encoding, chunk.len(), &mut without(&shards, &[0, 1, 2])),
        Err(CodecError::NotEnoughShards { present: 0, needed: 1 })
    );
    assert_eq!(encode(encoding, &[]), vec![vec![0u8]; 3], "the empty chunk has 1-byte shards");
}

/// Every lrc configuration the class accepts.
fn lrc_configurations() -> Vec<Encoding> {
    let mut all = Vec::new();
    for k in 2..=16u8 {
        for l in 1..k {
            for g in 1..=2 {
                if let Ok(e) = Encoding::lrc(k, l, g) {
                    all.push(e);
                }
            }
        }
    }
    all
}

/// For every loss pattern: decoding succeeds with the right bytes exactly when the documented
/// rule says the pattern is survivable, and is refused cleanly otherwise.
fn check_every_loss_pattern(encoding: Encoding) -> usize {
    let code = encoding.lrc_code().unwrap();
    let n = encoding.total();
    // Shards of 2 bytes: every coefficient is exercised, and 2^16 patterns stay quick.
    let chunk = pseudo_random(2 * encoding.needed() - 1, n as u64);
    let shards = encode(encoding, &chunk);
    let mut survivable = 0;
    for mask in 0u32..1 << n {
        let lost: Vec<usize> = (0..n).filter(|p| mask & (1 << p) != 0).collect();
        let result = decode(encoding, chunk.len(), &mut without(&shards, &lost));
        if code.survives(&lost) {
            assert_eq!(result.as_ref(), Ok(&chunk), "{encoding} lost {lost:?}");
            survivable += 1;
        } else {
            assert!(
                matches!(result, Err(CodecError::NotEnoughShards { .. })),
                "{encoding} lost {lost:?} should be refused"
            );
        }
    }
    survivable
}

#[test]
fn lrc_6_2_2_survives_exactly_the_documented_loss_patterns() {
    let encoding = Encoding::lrc(6, 2, 2).unwrap();
    // 1024 patterns: all of up to 3 losses (1 + 10 + 45 + 120), and 180 of the 210 of 4,
    // none of more.
    assert_eq!(check_every_loss_pattern(encoding), 176 + 180);
    let code = encoding.lrc_code().unwrap();
    assert!(loss_patterns(10, 3).iter().all(|lost| code.survives(lost)));
    assert_eq!(loss_patterns(10, 4).iter().filter(|lost| code.survives(lost)).count(), 180);
    assert!(!loss_patterns(10, 5).iter().any(|lost| code.survives(lost)));
}

#[test]
fn every_lrc_configuration_survives_exactly_the_documented_loss_patterns() {
    // 60 configurations, up to 2^20 patterns each: a few seconds.
    let configurations = lrc_configurations();
    assert_eq!(configurations.len(), 60);
    for encoding in configurations {
        let code = encoding.lrc_code().unwrap();
        check_every_loss_pattern(encoding);
        // Any g + 1 losses, as the class promises.
        let tolerated = encoding.tolerates();
        assert!(loss_patterns(encoding.total(), tolerated).iter().all(|l| code.survives(l)));
    }
}

#[test]
fn one_lost_lrc_shard_is_rebuilt_from_its_local_group_alone() {
    let encoding = Encoding::lrc(6, 2, 2).unwrap();
    let chunk = pseudo_random(600_000, 8);
    let shards = encode(encoding, &chunk);
    let all: Vec<usize> = (0..10).collect();
    for lost in 0..10 {
        let available: Vec<usize> = all.iter().copied().filter(|&p| p != lost).collect();
        let sources = encoding.repair_sources(lost, &available);
        let expected_reads = if lost < 8 { 3 } else { 9 };
        assert_eq!(sources.len(), expected_reads, "lost {lost}");
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; 10];
        for &p in &sources {
            slots[p] = Some(shards[p].clone());
        }
        assert_eq!(rebuild(encoding, chunk.len(), &mut slots, lost).unwrap(), shards[lost]);
    }
    // With the group broken, repair reads more and still rebuilds.
    let available = [1, 3, 4, 5, 6, 7, 8, 9];
    let sources = encoding.repair_sources(0, &available);
    assert_eq!(sources, available);
    let mut slots = without(&shards, &[0, 2]);
    assert_eq!(rebuild(encoding, chunk.len(), &mut slots, 0).unwrap(), shards[0]);
}

#[test]
fn too_few_shards_is_an_error_not_a_panic() {
    let encoding = Encoding::rs(4, 2).unwrap();
    let chunk = pseudo_random(10_000, 1);
    let shards = encode(encoding, &chunk);
    assert_eq!(
        decode(encoding, chunk.len(), &mut without(&shards, &[0, 1, 2])),
        Err(CodecError::NotEnoughShards { present: 3, needed: 4 })
    );
    let mut wrong = vec![Some(vec![0u8; 3]); 6];
    assert!(matches!(
        decode(encoding, chunk.len(), &mut wrong),
        Err(CodecError::WrongShardLength { .. })
    ));
}

#[test]
fn classes_parse_print_and_pack_into_four_bytes() {
    for text in ["replicas(3)", "rs(4,2)", "lrc(6,2,2)", "rs(1,1)", "lrc(12,2,2)"] {
        let encoding: Encoding = text.parse().unwrap();
        assert_eq!(encoding.to_string(), text);
        assert_eq!(Encoding::from_parts(encoding.to_parts()), Ok(encoding));
        assert_eq!(
            encoding.to_parts()[1] as usize + encoding.to_parts()[2] as usize,
            encoding.total()
        );
    }
    assert_eq!(" rs( 6 , 3 ) ".parse(), Ok(Encoding::Rs { k: 6, m: 3 }));
    assert_eq!(Encoding::from_parts([0; 4]), Ok(Encoding::Inline));
    for bad in ["", "rs", "rs(4)", "rs(4,2", "raid(5)", "rs(a,b)", "rs(4,2,1)", "rs(300,2)"] {
        assert!(matches!(bad.parse::<Encoding>(), Err(CodecError::Unparsable(_))), "{bad}");
    }
    for invalid in [
        "replicas(1)",
        "replicas(40)",
        "rs(0,2)",
        "rs(4,0)",
        "rs(30,3)",
        "lrc(6,4,2)",
        "lrc(6,2,3)",
        "lrc(6,6,1)",
        "lrc(16,4,2)",
    ] {
        assert!(
            matches!(invalid.parse::<Encoding>(), Err(CodecError::InvalidClass(_))),
            "{invalid}"
        );
    }
    for parts in [[3, 1, 1, 0], [1, 2, 1, 0], [2, 6, 2, 2], [0, 4, 2, 1], [1, 1, 0, 0]] {
        assert!(Encoding::from_parts(parts).is_err(), "{parts:?}");
    }
}

#[test]
fn overheads_and_tolerances() {
    let cases =
        [("replicas(3)", 3.0, 2, 1), ("rs(4,2)", 1.5, 2, 4), ("lrc(6,2,2)", 10.0 / 6.0, 3, 6)];
    for (text, overhead, tolerates, needed) in cases {
        let encoding: Encoding = text.parse().unwrap();
        assert_eq!(
            (encoding.overhead(), encoding.tolerates(), encoding.needed()),
            (overhead, tolerates, needed)
        );
    }
}
