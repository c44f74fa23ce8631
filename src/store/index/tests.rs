use super::super::parsed::tests::entry;
use super::*;

fn stamp() -> Stamp {
    Stamp::default()
}

#[test]
fn shared_content_is_released_by_its_last_record() {
    let mut index = Index::new(10, 0);
    index.finish_loading();
    let (a, b) = (Hash32::of(b"a"), Hash32::of(b"b"));
    assert_eq!(index.insert(a, entry(b"same"), stamp()), None);
    assert_eq!(index.insert(b, entry(b"same"), stamp()), None);
    assert_eq!(index.refs(Hash32::of(b"same")), 2);
    assert_eq!(index.content_bytes(), 4);
    assert_eq!(index.remove(a), None);
    assert_eq!(index.remove(b), Some(Hash32::of(b"same")));
    assert_eq!(index.remove(b), None);
    assert_eq!(index.len(), 0);
}

#[test]
fn overwrite_releases_the_old_content() {
    let mut index = Index::new(10, 0);
    index.finish_loading();
    let a = Hash32::of(b"a");
    index.insert(a, entry(b"one"), stamp());
    assert_eq!(
        index.insert(a, entry(b"two"), stamp()),
        Some(Hash32::of(b"one"))
    );
    // Overwriting with the same body keeps it.
    assert_eq!(index.insert(a, entry(b"two"), stamp()), None);
    assert_eq!(index.refs(Hash32::of(b"two")), 1);
}

#[test]
fn parsed_records_stay_within_the_limit_and_the_used_ones_stay() {
    let mut index = Index::new(2, 0);
    index.finish_loading();
    let [a, b, c] = [b"a", b"b", b"c"].map(|k| Hash32::of(k));
    index.insert(a, entry(b"x"), stamp());
    index.insert(b, entry(b"y"), stamp());
    assert!(index.entry(a).is_some(), "a is looked up");
    index.insert(c, entry(b"z"), stamp());
    assert!(index.entry(b).is_none(), "b, not looked up, gave way");
    assert!(index.entry(a).is_some() && index.entry(c).is_some());
    assert_eq!(index.parsed.counts().0, 2);
    // A record whose parsed form was dropped is parsed again on its next lookup.
    let y = entry(b"y");
    index.remember(b, &y, stamp());
    assert!(index.entry(b).is_some());
    assert_eq!(index.parsed.counts().0, 2);
    assert_eq!(index.len(), 3, "every record stays indexed");
}

#[test]
fn write_orders_compare_across_the_32_bit_wrap() {
    let mut index = Index::new(4, 0);
    index.finish_loading();
    let a = Hash32::of(b"a");
    index.insert(a, entry(b"x"), stamp());
    assert!(
        !index.has_newer_write(a, 5),
        "read in or never written: not newer"
    );
    index.set_written(a, u64::from(u32::MAX) + 3);
    assert!(index.has_newer_write(a, u64::from(u32::MAX) - 2));
    assert!(!index.has_newer_write(a, u64::from(u32::MAX) + 4));
    assert_eq!(std::mem::size_of::<(Hash32, Slot)>(), 48);
}

#[test]
fn content_released_while_loading_is_unused_once_no_record_read_in_names_it() {
    let mut index = Index::new(10, 0);
    let (a, b, c) = (Hash32::of(b"a"), Hash32::of(b"b"), Hash32::of(b"c"));
    let (shared, alone) = (entry(b"shared"), entry(b"alone"));
    index.insert(a, Arc::clone(&shared), stamp());
    index.insert(b, Arc::clone(&alone), stamp());
    assert_eq!(index.remove(a), None);
    assert_eq!(index.remove(b), None);
    // A record read in later names `shared`: it stays.
    index.insert_summary(
        c,
        (shared.digest, shared.length),
        stamp(),
        shared.stored_at,
        &shared.tags,
    );
    assert_eq!(index.finish_loading(), vec![alone.digest]);
    assert_eq!(index.refs(shared.digest), 1);
}

#[test]
fn while_loading_no_content_is_released_and_newer_keys_win() {
    let mut index = Index::new(10, 0);
    let (a, b, c) = (Hash32::of(b"a"), Hash32::of(b"b"), Hash32::of(b"c"));
    let (old, new) = (entry(b"old"), entry(b"new"));
    // A write of `a` and a delete of `b` come before the reading-in gets to them.
    assert_eq!(index.insert(a, Arc::clone(&new), stamp()), None);
    assert_eq!(index.remove(b), None);
    // The last record using content leaves it on disk: another record may name it.
    assert_eq!(index.remove(a), None);
    assert_eq!(index.insert(a, Arc::clone(&new), stamp()), None);
    index.insert_summary(
        a,
        (old.digest, old.length),
        stamp(),
        old.stored_at,
        &old.tags,
    );
    index.insert_summary(
        b,
        (old.digest, old.length),
        stamp(),
        old.stored_at,
        &old.tags,
    );
    index.insert_summary(
        c,
        (old.digest, old.length),
        stamp(),
        old.stored_at,
        &old.tags,
    );
    assert_eq!(index.digest(a), Some(new.digest));
    assert_eq!(index.digest(b), None, "deleted before it was read in");
    assert_eq!(index.digest(c), Some(old.digest));
    assert_eq!(index.refs(old.digest), 1);
    assert!(
        index.evict(Some(0), Some(0)).is_empty(),
        "nothing is evicted while loading"
    );
    // `new` lost its user once, but `a` uses it again; `old` is named by `c`.
    assert_eq!(index.finish_loading(), vec![]);
    // From now on the counts are whole.
    assert_eq!(index.remove(c), Some(old.digest));
    assert_eq!(index.evict(Some(0), None), vec![(a, Some(new.digest))]);
}
