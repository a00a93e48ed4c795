//! Tests for the spool: a model-based property test (random operations against a plain
//! `VecDeque` model, in the manner of vector's buffer model tests) and the promises one by one.

use std::{collections::VecDeque, path::Path};

use proptest::{prelude::*, sample::Index};
use tempfile::TempDir;

use super::spool::{
    DropCount, DropCounts, DropReason, Entry, EntryId, FailOutcome, MemorySpool, SledSpool, Spool,
    SpoolError, SpoolLimits, SpoolStats, open_or_degrade,
};

fn limits(max_bytes: u64, max_age_ms: u64, max_attempts: u32) -> SpoolLimits {
    SpoolLimits {
        max_bytes,
        max_age_ms,
        max_attempts,
    }
}

fn roomy_limits() -> SpoolLimits {
    limits(1 << 20, 3_600_000, 5)
}

fn open_sled(dir: &Path, limits: SpoolLimits) -> SledSpool {
    SledSpool::open(dir, limits).expect("open sled spool")
}

fn visible(spool: &dyn Spool) -> Vec<Entry> {
    spool.peek_oldest(usize::MAX).expect("peek")
}

fn drops(reason: DropReason, batches: u64, spans: u32) -> DropCounts {
    let mut counts = DropCounts::default();
    for batch in 1..=batches {
        counts.record(reason, if batch == batches { spans } else { 0 });
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// The model: what a spool must look like from outside, written as plainly as possible.

#[derive(Debug, Clone)]
enum Op {
    Append { payload_bytes: usize, spans: u32 },
    Peek { max_entries: usize },
    AckOldest,
    AckVisible { pick: Index },
    Fail { pick: Index },
    AdvanceClock { elapsed_ms: u64 },
    AdvanceClockAndTrim { elapsed_ms: u64 },
    Flush,
    Restart,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..=1_100, 0u32..40)
            .prop_map(|(payload_bytes, spans)| Op::Append { payload_bytes, spans }),
        1 => (0usize..5).prop_map(|max_entries| Op::Peek { max_entries }),
        2 => Just(Op::AckOldest),
        2 => any::<Index>().prop_map(|pick| Op::AckVisible { pick }),
        3 => any::<Index>().prop_map(|pick| Op::Fail { pick }),
        1 => (0u64..4_000).prop_map(|elapsed_ms| Op::AdvanceClock { elapsed_ms }),
        1 => (0u64..4_000).prop_map(|elapsed_ms| Op::AdvanceClockAndTrim { elapsed_ms }),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
    ]
}

fn limits_strategy() -> impl Strategy<Value = SpoolLimits> {
    (512u64..=4_096, 1_000u64..=8_000, 1u32..=4).prop_map(
        |(max_bytes, max_age_ms, max_attempts)| limits(max_bytes, max_age_ms, max_attempts),
    )
}

struct Model {
    limits: SpoolLimits,
    entries: VecDeque<Entry>,
    dropped: DropCounts,
    last_id: Option<EntryId>,
}

impl Model {
    fn new(limits: SpoolLimits) -> Self {
        Model {
            limits,
            entries: VecDeque::new(),
            dropped: DropCounts::default(),
            last_id: None,
        }
    }

    fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.payload.len() as u64).sum()
    }

    fn stats(&self) -> SpoolStats {
        SpoolStats {
            items: self.entries.len() as u64,
            bytes: self.bytes(),
            spans: self.entries.iter().map(|e| u64::from(e.spans)).sum(),
            oldest_created_at_ms: self.entries.front().map(|e| e.created_at_ms),
        }
    }

    fn enforce_bounds(&mut self, now_ms: u64, incoming_bytes: u64) {
        let max_age_ms = self.limits.max_age_ms;
        let mut kept = VecDeque::new();
        for entry in self.entries.drain(..) {
            if now_ms.saturating_sub(entry.created_at_ms) > max_age_ms {
                self.dropped.record(DropReason::Expired, entry.spans);
            } else {
                kept.push_back(entry);
            }
        }
        self.entries = kept;
        while self.bytes() + incoming_bytes > self.limits.max_bytes {
            let oldest = self.entries.pop_front().expect("something to drop");
            self.dropped.record(DropReason::SpoolFull, oldest.spans);
        }
    }
}

/// A spool under test, and how to restart it.
trait Subject {
    fn spool(&self) -> &dyn Spool;
    /// Whether `restart` keeps the contents (a memory spool cannot).
    fn survives_restart(&self) -> bool;
    fn restart(&mut self);
}

struct SledSubject {
    dir: TempDir,
    limits: SpoolLimits,
    spool: Option<SledSpool>,
}

impl SledSubject {
    fn new(limits: SpoolLimits) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Some(open_sled(dir.path(), limits));
        SledSubject { dir, limits, spool }
    }
}

impl Subject for SledSubject {
    fn spool(&self) -> &dyn Spool {
        self.spool.as_ref().expect("spool is open")
    }

    fn survives_restart(&self) -> bool {
        true
    }

    fn restart(&mut self) {
        let spool = self.spool.take().expect("spool is open");
        spool.flush().expect("flush before restart");
        drop(spool);
        self.spool = Some(open_sled(self.dir.path(), self.limits));
    }
}

struct MemorySubject(MemorySpool);

impl Subject for MemorySubject {
    fn spool(&self) -> &dyn Spool {
        &self.0
    }

    fn survives_restart(&self) -> bool {
        false
    }

    fn restart(&mut self) {}
}

/// Distinct bytes per append, so a mixed-up payload cannot go unnoticed.
fn payload_for(append_number: u32, payload_bytes: usize) -> Vec<u8> {
    let seed = append_number.to_be_bytes();
    (0..payload_bytes)
        .map(|i| seed[i % 4] ^ (i as u8).wrapping_mul(31))
        .collect()
}

fn run_model(
    mut subject: impl Subject,
    limits: SpoolLimits,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mut model = Model::new(limits);
    let mut now_ms: u64 = 1_000_000;
    let mut appends: u32 = 0;
    for op in ops {
        match op {
            Op::Append {
                payload_bytes,
                spans,
            } => {
                appends += 1;
                let payload = payload_for(appends, payload_bytes);
                let result = subject.spool().append(&payload, spans, now_ms);
                if payload_bytes as u64 > limits.max_bytes {
                    prop_assert!(
                        matches!(result, Err(SpoolError::TooLarge { .. })),
                        "expected TooLarge, got {result:?}"
                    );
                } else {
                    let id = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if let Some(last_id) = model.last_id {
                        prop_assert!(id > last_id, "id {id:?} not after {last_id:?}");
                    }
                    model.last_id = Some(id);
                    model.enforce_bounds(now_ms, payload_bytes as u64);
                    model.entries.push_back(Entry {
                        id,
                        created_at_ms: now_ms,
                        attempts: 0,
                        spans,
                        payload,
                    });
                }
            }
            Op::Peek { max_entries } => {
                let peeked = subject.spool().peek_oldest(max_entries).expect("peek");
                let expected: Vec<Entry> =
                    model.entries.iter().take(max_entries).cloned().collect();
                prop_assert_eq!(peeked, expected);
            }
            Op::AckOldest => {
                if let Some(oldest) = model.entries.pop_front() {
                    subject.spool().ack(oldest.id).expect("ack");
                }
            }
            Op::AckVisible { pick } => {
                if !model.entries.is_empty() {
                    let position = pick.index(model.entries.len());
                    let entry = model.entries.remove(position).expect("picked entry");
                    subject.spool().ack(entry.id).expect("ack");
                    // Acking again is harmless: the batch is simply gone.
                    subject.spool().ack(entry.id).expect("second ack");
                }
            }
            Op::Fail { pick } => {
                if !model.entries.is_empty() {
                    let position = pick.index(model.entries.len());
                    let entry = &mut model.entries[position];
                    let id = entry.id;
                    entry.attempts += 1;
                    let expected = if entry.attempts >= limits.max_attempts {
                        let spans = entry.spans;
                        model.entries.remove(position);
                        model.dropped.record(DropReason::MaxAttempts, spans);
                        FailOutcome::Dropped
                    } else {
                        FailOutcome::WillRetry {
                            attempts: entry.attempts,
                        }
                    };
                    prop_assert_eq!(subject.spool().fail(id).expect("fail"), expected);
                }
            }
            Op::AdvanceClock { elapsed_ms } => now_ms += elapsed_ms,
            Op::AdvanceClockAndTrim { elapsed_ms } => {
                now_ms += elapsed_ms;
                subject.spool().trim(now_ms).expect("trim");
                model.enforce_bounds(now_ms, 0);
            }
            Op::Flush => subject.spool().flush().expect("flush"),
            Op::Restart => {
                subject.restart();
                if !subject.survives_restart() {
                    // Nothing to compare against a memory spool that did not restart.
                    continue;
                }
            }
        }
        prop_assert_eq!(
            visible(subject.spool()),
            model.entries.iter().cloned().collect::<Vec<_>>()
        );
        prop_assert_eq!(subject.spool().stats(), model.stats());
        prop_assert_eq!(
            subject.spool().take_dropped(),
            std::mem::take(&mut model.dropped)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sled_spool_behaves_like_the_model_through_random_operations_and_restarts(
        limits in limits_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..40),
    ) {
        run_model(SledSubject::new(limits), limits, ops)?;
    }

    #[test]
    fn memory_spool_behaves_like_the_model_through_random_operations(
        limits in limits_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..40),
    ) {
        run_model(MemorySubject(MemorySpool::new(limits)), limits, ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// The promises one by one.

#[test]
fn sled_spool_keeps_flushed_batches_in_order_across_restarts_and_forgets_acked_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), roomy_limits());
    let payloads: Vec<Vec<u8>> = (0..20).map(|i| format!("batch {i}").into_bytes()).collect();
    let ids: Vec<EntryId> = payloads
        .iter()
        .zip(0u32..)
        .map(|(payload, n)| {
            spool
                .append(payload, n + 1, 1_000 + u64::from(n))
                .expect("append")
        })
        .collect();
    spool.flush().expect("flush");
    let stats_before = spool.stats();
    drop(spool);

    let spool = open_sled(dir.path(), roomy_limits());
    let entries = visible(&spool);
    assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        entries
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        payloads
    );
    assert_eq!(spool.stats(), stats_before);
    assert_eq!(stats_before.items, 20);
    assert_eq!(stats_before.spans, (1..=20).sum::<u64>());

    for id in ids.iter().step_by(2) {
        spool.ack(*id).expect("ack");
    }
    spool.flush().expect("flush");
    drop(spool);

    let spool = open_sled(dir.path(), roomy_limits());
    let remaining: Vec<EntryId> = visible(&spool).iter().map(|e| e.id).collect();
    assert_eq!(
        remaining,
        ids.iter().skip(1).step_by(2).copied().collect::<Vec<_>>()
    );
    assert!(spool.take_dropped().is_empty());
}

#[test]
fn appending_past_max_bytes_drops_the_oldest_batches_as_spool_full_and_keeps_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), limits(1_000, 3_600_000, 5));
    let ids: Vec<EntryId> = (1..=4)
        .map(|n| spool.append(&[n as u8; 300], n, 1_000).expect("append"))
        .collect();

    let kept: Vec<EntryId> = visible(&spool).iter().map(|e| e.id).collect();
    assert_eq!(kept, ids[1..]);
    assert_eq!(spool.take_dropped(), drops(DropReason::SpoolFull, 1, 1));
    assert_eq!(spool.stats().bytes, 900);

    let newest = spool.append(&[9; 900], 10, 1_000).expect("append");
    let kept: Vec<EntryId> = visible(&spool).iter().map(|e| e.id).collect();
    assert_eq!(kept, vec![newest]);
    assert_eq!(
        spool.take_dropped(),
        drops(DropReason::SpoolFull, 3, 2 + 3 + 4)
    );
}

#[test]
fn a_batch_larger_than_the_whole_spool_is_refused_and_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), limits(1_000, 3_600_000, 5));
    spool.append(&[1; 600], 1, 1_000).expect("append");

    let refused = spool.append(&[2; 1_001], 1, 1_000);
    assert!(matches!(
        refused,
        Err(SpoolError::TooLarge {
            bytes: 1_001,
            max_bytes: 1_000
        })
    ));
    assert_eq!(spool.stats().items, 1);
    assert!(spool.take_dropped().is_empty());
}

#[test]
fn batches_older_than_max_age_are_dropped_as_expired_on_trim_and_on_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), limits(1 << 20, 60_000, 5));
    spool.append(b"old", 3, 0).expect("append");
    let younger = spool.append(b"younger", 4, 30_000).expect("append");

    spool.trim(60_000).expect("trim");
    assert_eq!(
        spool.stats().items,
        2,
        "exactly max_age_ms old is still kept"
    );
    spool.trim(60_001).expect("trim");
    assert_eq!(
        visible(&spool).iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![younger]
    );
    assert_eq!(spool.take_dropped(), drops(DropReason::Expired, 1, 3));

    let newest = spool.append(b"newest", 5, 90_001).expect("append");
    assert_eq!(
        visible(&spool).iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![newest]
    );
    assert_eq!(spool.take_dropped(), drops(DropReason::Expired, 1, 4));
}

#[test]
fn a_batch_that_keeps_failing_is_dropped_at_max_attempts_and_stops_blocking_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), limits(1 << 20, 3_600_000, 3));
    let poison = spool.append(b"poison", 7, 1_000).expect("append");
    let healthy = spool.append(b"healthy", 2, 1_000).expect("append");

    assert_eq!(
        spool.fail(poison).expect("fail"),
        FailOutcome::WillRetry { attempts: 1 }
    );
    assert_eq!(
        spool.fail(poison).expect("fail"),
        FailOutcome::WillRetry { attempts: 2 }
    );
    assert_eq!(visible(&spool)[0].attempts, 2);
    assert!(spool.take_dropped().is_empty());
    assert_eq!(spool.fail(poison).expect("fail"), FailOutcome::Dropped);

    assert_eq!(visible(&spool)[0].id, healthy);
    assert_eq!(spool.take_dropped(), drops(DropReason::MaxAttempts, 1, 7));
    assert_eq!(spool.fail(poison).expect("fail"), FailOutcome::NotFound);
}

#[test]
fn failed_attempts_are_remembered_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), limits(1 << 20, 3_600_000, 3));
    let id = spool.append(b"batch", 1, 1_000).expect("append");
    spool.fail(id).expect("fail");
    drop(spool);

    let spool = open_sled(dir.path(), limits(1 << 20, 3_600_000, 3));
    assert_eq!(visible(&spool)[0].attempts, 1);
    assert_eq!(
        spool.fail(id).expect("fail"),
        FailOutcome::WillRetry { attempts: 2 }
    );
}

#[test]
fn a_corrupt_value_on_disk_is_dropped_as_corrupt_on_open_and_the_others_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), roomy_limits());
    let ids: Vec<EntryId> = (1..=3)
        .map(|n| spool.append(&[n as u8; 50], n, 1_000).expect("append"))
        .collect();
    let tree = spool.batches_tree_for_test();
    tree.insert(
        ids[1].as_u64().to_be_bytes(),
        &b"\xffnot a spooled batch"[..],
    )
    .expect("plant garbage value");
    tree.insert(b"bogus key", &b"whatever"[..])
        .expect("plant bogus key");
    spool.flush().expect("flush");
    drop(spool);

    let spool = open_sled(dir.path(), roomy_limits());
    let entries = visible(&spool);
    assert_eq!(
        entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[0], ids[2]]
    );
    assert_eq!(entries[1].payload, vec![3; 50]);
    assert_eq!(spool.stats().items, 2);
    assert_eq!(spool.stats().bytes, 100);
    // Neither value decodes, so their span counts are unknown.
    assert_eq!(spool.take_dropped(), drops(DropReason::Corrupt, 2, 0));
    drop(spool);

    let spool = open_sled(dir.path(), roomy_limits());
    assert!(
        spool.take_dropped().is_empty(),
        "corrupt values were deleted"
    );
}

#[test]
fn a_value_corrupted_while_running_is_dropped_on_peek_instead_of_blocking_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), roomy_limits());
    let first = spool.append(b"first", 4, 1_000).expect("append");
    let second = spool.append(b"second", 5, 1_000).expect("append");
    spool
        .batches_tree_for_test()
        .insert(first.as_u64().to_be_bytes(), &b"\x00"[..])
        .expect("plant garbage");

    let entries = visible(&spool);
    assert_eq!(
        entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![second]
    );
    assert_eq!(spool.take_dropped(), drops(DropReason::Corrupt, 1, 4));
    assert_eq!(spool.stats().items, 1);
}

#[test]
fn write_failures_surface_as_io_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_sled(dir.path(), limits(1_000, 60_000, 2));
    let id = spool.append(&[1; 600], 1, 0).expect("append");
    let before = visible(&spool);
    spool.fail_writes_for_test(true);

    let is_io = |result: Result<(), SpoolError>| matches!(result, Err(SpoolError::Io(_)));
    assert!(is_io(spool.append(&[2; 600], 1, 0).map(drop)), "append");
    assert!(is_io(spool.ack(id)), "ack");
    assert!(is_io(spool.fail(id).map(drop)), "fail");
    assert!(is_io(spool.trim(120_000)), "trim with something expired");
    assert!(is_io(spool.flush()), "flush");

    assert_eq!(visible(&spool), before);
    assert_eq!(spool.stats().bytes, 600);
    assert!(spool.take_dropped().is_empty());

    spool.fail_writes_for_test(false);
    spool.ack(id).expect("ack once the disk is back");
    assert_eq!(spool.stats().items, 0);
}

#[test]
fn open_or_degrade_falls_back_to_a_memory_spool_when_the_directory_is_a_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("spool");
    std::fs::write(&not_a_dir, b"I am a file").expect("write file");

    let opened = open_or_degrade(&not_a_dir, roomy_limits());
    let spool = opened.spool;
    let reason = opened.degraded.expect("degraded");
    assert!(reason.contains("spool"), "{reason}");
    let id = spool.append(b"still accepted", 1, 1_000).expect("append");
    assert_eq!(visible(spool.as_ref())[0].id, id);
}

#[test]
fn open_or_degrade_sets_garbage_database_files_aside_and_opens_a_fresh_spool() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("spool");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("conf"), vec![0xA5; 300]).expect("write conf");
    std::fs::write(dir.join("db"), vec![0x5A; 300_000]).expect("write db");

    let opened = open_or_degrade(&dir, roomy_limits());
    assert_eq!(opened.degraded, None);
    let damage = opened.damage.expect("the garbage is reported");
    let moved = damage.moved_to.expect("and kept aside");
    assert_eq!(
        std::fs::read(moved.join("db")).expect("kept"),
        vec![0x5A; 300_000]
    );
    opened
        .spool
        .append(b"still accepted", 1, 1_000)
        .expect("append");
    assert!(opened.spool.durable());
}

#[test]
fn open_or_degrade_uses_sled_when_the_directory_is_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opened = open_or_degrade(dir.path(), roomy_limits());
    assert_eq!(opened.degraded, None);
    assert_eq!(opened.damage, None);
    let spool = opened.spool;
    spool.append(b"durable", 1, 1_000).expect("append");
    drop(spool);

    let reopened = open_sled(dir.path(), roomy_limits());
    assert_eq!(visible(&reopened)[0].payload, b"durable");
}

#[test]
fn drop_counts_list_only_the_reasons_that_dropped_something() {
    let mut counts = DropCounts::default();
    counts.record(DropReason::Expired, 3);
    counts.record(DropReason::Expired, 4);
    let listed: Vec<(&str, DropCount)> = counts
        .iter()
        .map(|(reason, count)| (reason.as_label(), count))
        .collect();
    assert_eq!(
        listed,
        vec![(
            "expired",
            DropCount {
                batches: 2,
                spans: 7
            }
        )]
    );
}

#[test]
fn batches_sled_lost_silently_are_counted_as_corrupt_and_the_directory_is_kept_aside() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("spool");
    let spool = open_sled(&dir, roomy_limits());
    for n in 1..=3u8 {
        spool.append(&[n; 40], u32::from(n), 1_000).expect("append");
    }
    spool.flush().expect("flush");
    drop(spool);
    // What sled does to a damaged log: the tree comes back shorter and says nothing. The tally
    // still remembers two more batches of 4 spans.
    crate::store::sled_db::Tally {
        items: 5,
        units: 10,
    }
    .write(&dir)
    .expect("write tally");

    let spool = open_sled(&dir, roomy_limits());
    let damage = spool.damage().cloned().expect("the loss is reported");
    assert_eq!((damage.lost.items, damage.lost.units), (2, 4));
    let aside = damage.moved_to.expect("kept aside");
    assert!(aside.join("conf").exists(), "{aside:?}");
    let mut expected = DropCounts::default();
    expected.record_many(DropReason::Corrupt, 2, 4);
    assert_eq!(spool.take_dropped(), expected);
    // The readable batches are kept, oldest first, and new ones still come after them.
    spool.append(&[4; 40], 4, 2_000).expect("append");
    let payloads: Vec<u8> = visible(&spool).iter().map(|e| e.payload[0]).collect();
    assert_eq!(payloads, vec![1, 2, 3, 4]);
    drop(spool);

    // The fresh spool's own tally matches it: no damage on the next open.
    let spool = open_sled(&dir, roomy_limits());
    assert_eq!(spool.damage(), None);
    assert_eq!(spool.stats().items, 4);
}

#[test]
fn the_tally_counts_appends_only_once_they_are_flushed_so_a_hard_kill_is_not_damage() {
    use crate::store::sled_db::Tally;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("spool");
    let spool = open_sled(&dir, roomy_limits());
    spool.append(&[1; 40], 3, 1_000).expect("append");
    spool.flush().expect("flush");
    let durable = Tally { items: 1, units: 3 };
    assert_eq!(Tally::read(&dir).expect("read"), Some(durable));
    // Appended, not yet flushed: a kill now may lose it, and the tally must not expect it.
    spool.append(&[2; 40], 5, 1_000).expect("append");
    assert_eq!(Tally::read(&dir).expect("read"), Some(durable));
    // A removal counts at once (a lower tally can never look like damage).
    let oldest = visible(&spool)[0].id;
    spool.ack(oldest).expect("ack");
    assert_eq!(
        Tally::read(&dir).expect("read"),
        Some(Tally { items: 0, units: 0 })
    );
    spool.flush().expect("flush");
    assert_eq!(
        Tally::read(&dir).expect("read"),
        Some(Tally { items: 1, units: 5 })
    );
}
