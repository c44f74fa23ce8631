//! A look inside the cache, for an operator who asks what is stored and why a response was
//! served as it was: an entry by URL (its variants with it), and the entries carrying a tag
//! or under a prefix, a page at a time. Read-only: nothing is counted as a use.

use std::time::SystemTime;

use serde::Serialize;

use super::HttpStreamingCache;
use super::variants::{STORED_VARIANTS, variants_generation};
use crate::cache_store::CacheStore as _;
use crate::format::layout::Hash32;
use crate::format::record::Entry;
use crate::key;
use crate::store::Selection;
use crate::support::epoch_millis;

/// What the cache holds under one key on this node, as [`HttpStreamingCache::inspect`],
/// [`HttpStreamingCache::entries_tagged`] and [`HttpStreamingCache::entries_under`] tell
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StoredEntry {
    /// The cache key.
    pub key: String,
    /// The URL it was fetched for.
    pub url: String,
    /// The stored status.
    pub status: u16,
    /// When it was stored (or last validated), in milliseconds since the epoch.
    pub stored_at_ms: u64,
    /// Its age now, in seconds, as `Age` would say.
    pub age: u64,
    /// The seconds it stays fresh (0 once stale), within the cache's caps.
    pub ttl: u64,
    /// By its freshness alone, the `Cache-Status` a `GET` of it would get now (`hit; ttl=N`
    /// or `fwd=stale`; a list of variants says `variants`): a request's directives, the
    /// cache's mode, `stale-while-revalidate` and a body found damaged on reading may make
    /// the real answer another. `None` when the cache sends no `Cache-Status`.
    pub cache_status: Option<String>,
    /// Its body's length, in bytes.
    pub size: u64,
    /// The SHA-256 of its body, hex: the name of its file (`content/<sha256>`).
    pub sha256: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// For a URL whose responses vary (`Vary`), the variants stored: then the entry itself
    /// is their list, and holds no body of its own.
    pub variants: Vec<StoredEntry>,
}

/// A page of [`StoredEntry`]s, and where the next one starts (`None`: the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EntryPage {
    /// The entries of this page.
    pub entries: Vec<StoredEntry>,
    /// The cursor to ask the next page with.
    pub next: Option<String>,
}

impl HttpStreamingCache {
    /// What is stored on this node for a GET of `url` (an absolute URL, keyed as
    /// [`purge`](Self::purge) keys it): the entry, or the list of a URL's variants with
    /// each variant. `None` when nothing is.
    pub async fn inspect(&self, url: &str) -> crate::Result<Option<StoredEntry>> {
        let key = self.key_of_url(url)?;
        let Some(entry) = self.store.entry_here(&key).await? else {
            return Ok(None);
        };
        let mut described = self.describe(&entry);
        if let Some(generation) = variants_generation(&entry.headers) {
            for digest in entry.headers.get_all(STORED_VARIANTS) {
                let Ok(digest) = digest.to_str() else {
                    continue;
                };
                let variant = key::variant_key_of(&key, &generation, digest);
                if let Some(variant) = self.store.entry_here(&variant).await? {
                    described.variants.push(self.describe(&variant));
                }
            }
        }
        Ok(Some(described))
    }

    /// The entries on this node that carry `tag` (on every site), `limit` at a time (at
    /// least one) from `after` (the `next` of the page before, or `None` for the first). A
    /// page reads at most 10 000 records, and two listings run at once in a process: a
    /// third is refused with [`ErrorKind::Busy`](crate::ErrorKind::Busy).
    pub async fn entries_tagged(
        &self,
        tag: &str,
        after: Option<&str>,
        limit: usize,
    ) -> crate::Result<EntryPage> {
        crate::format::tags::check_purge(&[tag])?;
        self.page(Selection::Tag(tag.to_owned()), after, limit)
            .await
    }

    /// The entries on this node whose URL starts with `prefix` (or, when it starts with
    /// `/`, whose path does on any site), `limit` at a time from `after`, as
    /// [`entries_tagged`](Self::entries_tagged) pages. A page reads at most 10 000 records:
    /// it may hold fewer than `limit` entries and still have a `next`.
    pub async fn entries_under(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> crate::Result<EntryPage> {
        self.page(Selection::Prefix(prefix.to_owned()), after, limit)
            .await
    }

    async fn page(
        &self,
        selection: Selection,
        after: Option<&str>,
        limit: usize,
    ) -> crate::Result<EntryPage> {
        let after = match after {
            Some(cursor) => Some(Hash32::from_hex(cursor).ok_or_else(|| {
                crate::Error::new(crate::ErrorKind::InvalidInput)
                    .with_subject(format!("{cursor:?} is not a page's cursor"))
            })?),
            None => None,
        };
        let (entries, next) = self.store.entries(selection, after, limit).await?;
        Ok(EntryPage {
            entries: entries.iter().map(|entry| self.describe(entry)).collect(),
            next: next.map(|key| key.to_hex()),
        })
    }

    fn describe(&self, entry: &Entry) -> StoredEntry {
        let now: SystemTime = self.now();
        let ttl = self.ttl(entry.status, &entry.policy, now);
        let cache_status = match (variants_generation(&entry.headers), ttl) {
            (Some(_), _) => self.status_name("variants"),
            (None, 0) => self.status_name("fwd=stale"),
            (None, ttl) => self.status_name(&format!("hit; ttl={ttl}")),
        };
        StoredEntry {
            key: entry.key.clone(),
            url: entry.url.clone(),
            status: entry.status.as_u16(),
            stored_at_ms: epoch_millis(entry.stored_at),
            age: entry.policy.age(now).as_secs(),
            ttl,
            cache_status,
            size: entry.length,
            sha256: entry.digest.to_hex(),
            tags: entry.tags.to_vec(),
            variants: Vec::new(),
        }
    }

    fn status_name(&self, params: &str) -> Option<String> {
        let name = self.options.cache_status.as_deref()?;
        Some(format!("{name}; {params}"))
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::HttpStreamingCache;
    use crate::testing::{Clock, Origin, bytes, request, serve};

    #[tokio::test]
    async fn an_entry_is_told_with_its_variants_and_pages_list_what_a_tag_or_prefix_picks() {
        let clock = Clock::default();
        let (cache, _store) = HttpStreamingCache::in_memory(clock.options());
        let answers = clock.clone();
        let origin = Origin::new(move |parts| match parts.uri.path() {
            "/varies" => answers.response(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("vary", "accept-language"),
                    ("surrogate-key", "shop"),
                ],
                "varies",
            ),
            _ => answers.response(
                200,
                &[
                    ("cache-control", "max-age=100"),
                    ("surrogate-key", "shop item"),
                ],
                "item",
            ),
        });
        for (path, language) in [("/varies", "en"), ("/varies", "fr"), ("/items/1", "en")] {
            let url = format!("http://example.com{path}");
            let fields = [("accept-language", language)];
            bytes(serve(&cache, &origin, request("GET", &url, &fields)).await).await;
        }
        for path in ["/items/2", "/items/3"] {
            let url = format!("http://example.com{path}");
            bytes(serve(&cache, &origin, request("GET", &url, &[])).await).await;
        }
        clock.advance(70);

        let item = cache
            .inspect("http://example.com/items/1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (item.status, item.size, item.age, item.ttl),
            (200, 4, 70, 30)
        );
        assert_eq!(item.tags, ["shop", "item"]);
        assert_eq!(
            item.cache_status.as_deref(),
            Some("http-cache-streaming; hit; ttl=30")
        );
        assert!(item.variants.is_empty());
        let varies = cache
            .inspect("http://example.com/varies")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(varies.variants.len(), 2, "{varies:?}");
        for variant in &varies.variants {
            assert_eq!(
                variant.cache_status.as_deref(),
                Some("http-cache-streaming; fwd=stale")
            );
            assert_eq!(
                (variant.ttl, variant.tags.clone()),
                (0, vec!["shop".to_owned()])
            );
        }
        assert_eq!(
            cache.inspect("http://example.com/none").await.unwrap(),
            None
        );
        assert!(cache.inspect("/items/1").await.is_err(), "a path alone");

        // Pages of two: the three items and two variants carry `shop`.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = cache
                .entries_tagged("shop", after.as_deref(), 2)
                .await
                .unwrap();
            assert!(page.entries.len() <= 2);
            seen.extend(page.entries.into_iter().map(|entry| entry.url));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen.len(), 5, "{seen:?}");
        let under = cache.entries_under("/items/", None, 10).await.unwrap();
        assert_eq!(under.entries.len(), 3);
        assert_eq!(under.next, None);
        assert!(cache.entries_tagged("bad tag", None, 2).await.is_err());
        assert!(
            cache
                .entries_under("/", Some("not-a-cursor"), 2)
                .await
                .is_err()
        );
    }
}
