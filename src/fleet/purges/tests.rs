use super::*;
use crate::storage::FileStorage;

fn at(ms: u64) -> SystemTime {
    from_epoch_millis(ms)
}

#[test]
fn names_are_read_only_in_their_exact_form() {
    let hash = Hash32::of(b"GET:http://a/");
    let hex = hash.to_hex();
    let now = 1_800_000_000_000;
    let parsed = Purge::parse(&format!("{now:013}-0123456789ab-7-k-{hex}"), at(now), None);
    assert_eq!(
        parsed.map(|p| (p.at, p.node, p.target)),
        Some((now, "0123456789ab".to_owned(), Target::Key(hash)))
    );
    let prefix = Purge::parse(&format!("{now:013}-0123456789ab-7-p-{hex}"), at(now), None);
    assert_eq!(prefix.map(|p| p.target), Some(Target::Prefix(hash)));
    // Dated after the bucket says it was written: taken as written then (plus skew).
    let ahead = Purge::parse(
        &format!("{:013}-0123456789ab-7-k-{hex}", now + 9_000),
        at(now),
        None,
    );
    assert_eq!(ahead.map(|p| p.at), Some(now + 1_000));
    for bad in [
        format!("{:012}-0123456789ab-7-k-{hex}", now / 10),
        format!("{now:013}-0123456789AB-7-k-{hex}"),
        format!("{now:013}-0123456789a-7-k-{hex}"),
        format!("{now:013}-0123456789ab--k-{hex}"),
        format!("{now:013}-0123456789ab-x-k-{hex}"),
        format!("{now:013}-0123456789ab-7-q-{hex}"),
        format!("{now:013}-0123456789ab-7-k-{}", &hex[1..]),
        format!("{now:013}-0123456789ab-7-k-{hex}-more"),
        format!("+{:012}-0123456789ab-7-k-{hex}", now / 10),
    ] {
        assert_eq!(Purge::parse(&bad, at(now), None), None, "{bad}");
    }
}

#[test]
fn with_a_secret_only_sealed_names_are_read() {
    let secret = Secret::new(b"a secret of the fleet");
    let hex = Hash32::of(b"GET:http://a/").to_hex();
    let now = 1_800_000_000_000;
    let name = format!("{now:013}-0123456789ab-7-k-{hex}");
    let tag = secret.short_tag(&[b"purge", name.as_bytes()]);
    let sealed = format!("{name}-{tag}");
    assert!(Purge::parse(&sealed, at(now), Some(&secret)).is_some());
    let other = Secret::new(b"another fleet's secret");
    let forged = format!("{name}-{}", other.short_tag(&[b"purge", name.as_bytes()]));
    for bad in [name.clone(), forged, format!("{name}-{}", "0".repeat(32))] {
        assert_eq!(Purge::parse(&bad, at(now), Some(&secret)), None, "{bad}");
    }
    // A note sealed for one key does not purge another.
    let moved = sealed.replace(&hex, &Hash32::of(b"GET:http://a/x").to_hex());
    assert_eq!(Purge::parse(&moved, at(now), Some(&secret)), None);
}

#[tokio::test]
async fn a_horizon_without_the_fleets_seal_or_from_the_future_is_none() {
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let every = Duration::from_millis(100);
    let secret = Secret::new(b"a secret of the fleet");
    let sealed = PurgeLog::new(
        Arc::clone(&tier),
        every,
        Duration::from_secs(3600),
        Some(secret),
    );
    let open = PurgeLog::new(Arc::clone(&tier), every, Duration::from_secs(3600), None);
    let past = epoch_millis(SystemTime::now()) - 60_000;
    let write = |text: String| {
        let tier = Arc::clone(&tier);
        async move {
            tier.put_note(HORIZON, Bytes::from(text), PutNote::Overwrite)
                .await
                .unwrap();
        }
    };
    write(sealed.seal_horizon(past)).await;
    assert_eq!(sealed.horizon().await.unwrap(), past);
    write(past.to_string()).await;
    assert_eq!(sealed.horizon().await.unwrap(), 0, "not sealed");
    assert_eq!(
        open.horizon().await.unwrap(),
        past,
        "no secret: taken as it is"
    );
    let future = epoch_millis(SystemTime::now()) + 3_600_000;
    write(sealed.seal_horizon(future)).await;
    assert_eq!(sealed.horizon().await.unwrap(), 0, "to come");
    write(future.to_string()).await;
    assert_eq!(open.horizon().await.unwrap(), 0, "to come");
}

#[tokio::test]
async fn compaction_removes_notes_past_the_retention_and_raises_the_horizon() {
    let bucket = tempfile::tempdir().unwrap();
    let tier: Arc<dyn Storage> = Arc::new(FileStorage::new(bucket.path()));
    let retention = Duration::from_secs(3600);
    let log = PurgeLog::new(
        Arc::clone(&tier),
        Duration::from_millis(100),
        retention,
        None,
    );
    let now = epoch_millis(SystemTime::now());
    let hex = Hash32::of(b"k").to_hex();
    let names: Vec<String> = [now - 7_200_000, now - 3_700_000, now - 60_000, now]
        .iter()
        .enumerate()
        .map(|(n, ms)| format!("{ms:013}-0123456789ab-{n}-k-{hex}"))
        .collect();
    for name in &names {
        let path = format!("{LOG}/{name}");
        tier.put_note(&path, Bytes::new(), PutNote::Overwrite)
            .await
            .unwrap();
    }
    // Not due yet: the first round waits a period.
    log.compact_when_due().await.unwrap();
    assert_eq!(tier.list_notes(LOG, None, 10).await.unwrap().len(), 4);
    lock(&log.state).last_compacted = Some(Instant::now() - retention);
    log.compact_when_due().await.unwrap();
    let left: Vec<String> = tier
        .list_notes(LOG, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|listed| listed.name)
        .collect();
    assert_eq!(left, names[2..]);
    let horizon = log.horizon().await.unwrap();
    let expected = now - 3_600_000;
    assert!(
        (expected..expected + 60_000).contains(&horizon),
        "{horizon} vs {expected}"
    );
}
