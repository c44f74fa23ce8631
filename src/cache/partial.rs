//! Ranged misses and partial entries (RFC 9111 §3.3–§3.4): a `206` to a ranged request is
//! kept as a partial entry of its representation; later ranges it holds are hits, and
//! ranges it holds in part (or the whole body, asked without a range) fetch only the span
//! that is missing, answered from the entry's file around the fetched bytes. Once the
//! ranges cover the whole body, the store makes it an ordinary entry (see
//! `store::partial_entry`).
//!
//! Only what can be combined safely is: a single byte range, a response with a strong
//! entity tag (ranges are combined only under the same one, and fetched with `If-Range`
//! naming it, so that a changed representation comes back whole), the length of the whole
//! body in its `Content-Range`, no `Vary`, and the storing rules a `200` of it would meet.

use crate::Counter;
use crate::cache_store::CacheStore as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, request};
use http_body::Body;
use http_cache_semantics::CachePolicy;

use super::directives::{Verdict, is_conditional, shared_cookie, take_fields};
use super::mode::CacheMode;
use super::pending::keepable;
use super::status::{Detail, Fwd, Status};
use super::{Finished, HttpStreamingCache, Pending, Plan, count};
use crate::body::{Piece, StreamingBody, boxed};
use crate::error::BoxError;
use crate::fields::engine_view;
use crate::fields::range::{self, Ranged};
use crate::key;
use crate::store::partial_entry::{PartialEntry, PartialHead};

/// What a ranged miss does with the origin's answer.
pub(super) enum PartialPlan {
    /// Keep a `206` as (part of) a partial entry; the client asked what was sent on.
    Store,
    /// The client asked `start..end` of `entry`, which holds all of it but `fetch`: the
    /// origin was asked for that span only, with `If-Range`. `whole`: the client asked no
    /// range, and gets a `200`.
    Complete {
        entry: Arc<PartialEntry>,
        start: u64,
        end: u64,
        fetch: (u64, u64),
        whole: bool,
    },
}

impl HttpStreamingCache {
    /// A `GET` that found no stored response: answered from a partial entry that holds its
    /// range (or, asking none, the whole body) and is fresh, or sent on for the span the
    /// entry lacks (RFC 9111 §3.4), or as it is. `None` when partial entries have no part
    /// in it.
    pub(super) async fn partial_plan(
        &self,
        parts: &request::Parts,
        key: &str,
        mode: CacheMode,
        fwd: Fwd,
    ) -> Option<Plan> {
        let eligible = self.options.store_partial
            && !self.options.fetch_whole_on_range_miss
            && mode == CacheMode::Default
            && parts.method == Method::GET
            && !parts.headers.contains_key(header::IF_RANGE)
            && !is_conditional(&parts.headers);
        if !eligible {
            return None;
        }
        let forward = |conditional, plan| {
            let action = super::Action::Fetch {
                fwd,
                stale: None,
                lookup_found: false,
                leader: None,
            };
            let mut pending = self.pending(parts, key.to_owned(), mode, action);
            pending.partial = Some(plan);
            Some(Plan::Forward {
                conditional,
                pending,
            })
        };
        let ranged = parts.headers.contains_key(header::RANGE);
        let Some(entry) = self.store.partial(key) else {
            return ranged.then(|| forward(None, PartialPlan::Store))?;
        };
        // A range that has just been read to its end is held for the request after it.
        entry.settled(std::time::Duration::from_secs(1)).await;
        let head = entry.head();
        let (start, end) = if ranged {
            let Ranged::Part { start, len } =
                range::ranged(&parts.headers, &head.parts.headers, entry.total)
            else {
                // Several ranges, or none that exist: the origin answers those.
                return forward(None, PartialPlan::Store);
            };
            (start, start + len)
        } else {
            (0, entry.total)
        };
        let now = self.now();
        let within_cap = self.within_cap(head.parts.status, &head.policy, now);
        let fresh = within_cap
            && matches!(
                self.judge_stored(
                    &head.policy,
                    parts,
                    (head.parts.status, head.parts.version, &head.parts.headers),
                    now
                ),
                Verdict::Fresh
            );
        if fresh && entry.covers(start, end) {
            return Some(Plan::Respond(self.partial_hit(
                parts,
                &entry,
                head,
                (start, end),
                !ranged,
            )));
        }
        if !ranged && !fresh {
            // All of it is asked again: as any miss, without a range.
            return None;
        }
        // A stale entry is confirmed by the 206 its If-Range gets; all of the range is
        // fetched again then, since the held bytes are as stale as the entry.
        let fetch = match entry.missing(start, end) {
            Some(span) if fresh => span,
            _ => (start, end),
        };
        let mut conditional = HeaderMap::new();
        let range = format!("bytes={}-{}", fetch.0, fetch.1 - 1);
        let (Ok(range), Ok(etag)) = (
            HeaderValue::try_from(range),
            HeaderValue::try_from(entry.etag.as_str()),
        ) else {
            return forward(None, PartialPlan::Store);
        };
        conditional.insert(header::RANGE, range);
        conditional.insert(header::IF_RANGE, etag);
        let plan = PartialPlan::Complete {
            entry,
            start,
            end,
            fetch,
            whole: !ranged,
        };
        forward(Some(conditional), plan)
    }

    /// Bytes `start..end`, all held, of a fresh partial entry: a `206` from its file, or a
    /// `200` when they are the `whole` body a request without a range asked.
    fn partial_hit(
        &self,
        parts: &request::Parts,
        entry: &PartialEntry,
        head: PartialHead,
        (start, end): (u64, u64),
        whole: bool,
    ) -> Response<StreamingBody> {
        count(&self.counters.hits, Counter::Hits);
        let now = self.now();
        let mut head_parts = head.parts;
        head_parts.version = parts.version;
        let age = head.policy.age(now).as_secs();
        head_parts
            .headers
            .insert(header::AGE, HeaderValue::from(age));
        head_parts
            .headers
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if !whole {
            range::partial(&mut head_parts, start, end - start, entry.total);
        }
        let body = StreamingBody::stored_file(entry.reader(start, end), None);
        let mut response = Response::from_parts(head_parts, body);
        let status =
            Status::hit()
                .detail(Detail::Partial)
                .ttl(self.ttl(StatusCode::OK, &head.policy, now));
        self.annotate(response.headers_mut(), &status, true, true);
        response
    }
}

/// `bytes first-last/complete` of a single-part `206`: `(first, last + 1, complete)`.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (span, complete) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let complete: u64 = complete.trim().parse().ok()?;
    (first <= last && last < complete).then_some((first, last + 1, complete))
}

/// Whether a `206`'s head disagrees with itself: a `Content-Range` that is no single valid
/// byte range of the whole (a span that ends before it starts or past the whole length,
/// not `bytes a-b/n`), or a `Content-Length` other than the span's. A multipart answer
/// (`multipart/byteranges`, no `Content-Range` of its own) is not judged here.
fn malformed(headers: &HeaderMap) -> bool {
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/byteranges")
        });
    if multipart && !headers.contains_key(header::CONTENT_RANGE) {
        return false;
    }
    let span = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes "))
        .and_then(|v| v.split_once('/'))
        .and_then(|(span, complete)| {
            let (first, last) = span.split_once('-')?;
            let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
            // The whole length may be unknown (`*`), RFC 9110 §14.4.
            let fits = match complete.trim() {
                "*" => true,
                complete => complete
                    .parse::<u64>()
                    .is_ok_and(|complete| last < complete),
            };
            (first <= last && fits).then_some((first, last + 1))
        });
    let Some((first, end)) = span else {
        return true;
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    match length {
        None => false,
        Some(Some(length)) => length != end - first,
        Some(None) => true,
    }
}

/// A strong entity tag: the only validator ranges are combined under (RFC 9111 §3.4).
fn strong_etag(headers: &HeaderMap) -> Option<String> {
    let etag = headers.get(header::ETAG)?.to_str().ok()?.trim();
    (etag.starts_with('"') && etag.ends_with('"') && etag.len() >= 2).then(|| etag.to_owned())
}

impl Pending {
    /// A ranged miss's `206`: kept as (part of) a partial entry and passed on, or, for the
    /// span fetched for one, answered with the entry's bytes around it.
    pub(super) fn partial_answer<B>(mut self, response: Response<B>, fwd: Fwd) -> Finished
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if malformed(response.headers()) {
            // A `206` that disagrees with itself cannot be framed from its `Content-Range`
            // for the client (nor kept): a clean 502 that says why, never a connection cut
            // mid-answer. (`206`s to other requests pass as the origin framed them.)
            crate::log::warn_event!(key = %self.key, "a 206 whose Content-Range disagrees with itself");
            let status = Status::forward(fwd)
                .fwd_status(StatusCode::PARTIAL_CONTENT)
                .detail(Detail::MalformedPartial);
            return Finished::Ready(self.cache.bad_gateway(status));
        }
        let plan = self.partial.take().unwrap_or(PartialPlan::Store);
        count(&self.cache.counters.misses, Counter::Misses);
        Finished::Later(Box::pin(self.keep_partial(response, plan, fwd)))
    }

    /// A ranged miss answered otherwise (a `200`: the representation changed, or the
    /// origin ignores ranges) is stored whole as any miss's answer, and a partial entry of
    /// another representation goes.
    pub(super) fn partial_gives_way(&mut self) {
        if let Some(PartialPlan::Complete { entry, .. }) = self.partial.take() {
            self.cache.store.drop_partial(&entry.key);
        }
    }

    async fn keep_partial<B>(
        self,
        response: Response<B>,
        plan: PartialPlan,
        fwd: Fwd,
    ) -> Response<StreamingBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cache = &self.cache;
        let (mut parts, body) = response.into_parts();
        keepable(&mut parts.headers);
        let sent = content_range(&parts.headers);
        let status = Status::forward(fwd).fwd_status(StatusCode::PARTIAL_CONTENT);
        let kept = match (sent, strong_etag(&parts.headers)) {
            (Some((_, _, total)), Some(etag)) => match self.whole_head(&parts, total) {
                Some(head) => partial_entry(&self.cache.store, &self.key, &etag, total, head).await,
                None => None,
            },
            _ => None,
        };
        let Some((first, end, total)) = sent else {
            return self.pass(Response::from_parts(parts, body), status);
        };
        let body = boxed(body);
        match plan {
            PartialPlan::Complete {
                entry: planned,
                start,
                end: asked_end,
                fetch,
                whole,
            } => {
                let same = kept
                    .as_ref()
                    .is_some_and(|kept| Arc::ptr_eq(kept, &planned))
                    && (first, end) == fetch
                    && planned.covers(start, first)
                    && planned.covers(end, asked_end);
                if !same {
                    // Not the span asked for, or of another representation: nothing to
                    // put the client's range together with.
                    crate::log::warn_event!(key = %self.key, "a 206 that does not answer the span asked for");
                    return cache.bad_gateway(status.detail(Detail::PartialMismatch));
                }
                let mut pieces = Vec::with_capacity(3);
                if start < first {
                    pieces.push(Piece::Held(planned.reader(start, first)));
                }
                pieces.push(Piece::Fetched {
                    body,
                    sink: Some(Box::new(planned.sink(first, end))),
                    len: end - first,
                });
                if end < asked_end {
                    pieces.push(Piece::Held(planned.reader(end, asked_end)));
                }
                let mut head = http::response::Parts::clone(&planned.head().parts);
                head.version = parts.version;
                head.headers
                    .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                // The held head is the whole body's `200`: a range narrows it.
                if !whole {
                    range::partial(&mut head, start, asked_end - start, total);
                }
                let mut response = Response::from_parts(head, StreamingBody::pieces(pieces));
                let status = status.stored().detail(Detail::Partial);
                cache.annotate(response.headers_mut(), &status, false, true);
                response
            }
            PartialPlan::Store => {
                let sink = kept.map(|entry| {
                    Box::new(entry.sink(first, end)) as Box<dyn crate::body::RangeSink>
                });
                let stored = sink.is_some();
                let piece = Piece::Fetched {
                    body,
                    sink,
                    len: end - first,
                };
                let mut response = Response::from_parts(parts, StreamingBody::pieces(vec![piece]));
                let status = if stored {
                    status.stored().detail(Detail::Partial)
                } else {
                    status
                };
                cache.annotate(response.headers_mut(), &status, false, false);
                response
            }
        }
    }

    /// The head a `200` of the whole body would have, and its policy, when it may be
    /// stored: `None` when the storing rules refuse it (or it varies).
    fn whole_head(&self, parts: &http::response::Parts, total: u64) -> Option<PartialHead> {
        let cache = &self.cache;
        let mut whole = http::response::Parts::clone(parts);
        whole.status = StatusCode::OK;
        whole.headers.remove(header::CONTENT_RANGE);
        whole
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        let varies = !key::vary_names(&whole.headers)?.is_empty();
        let shared = cache.options.shared;
        let refused = (shared_cookie(shared, &whole.headers) && !cache.options.store_set_cookie)
            || cache.options.refuses_error(parts.status);
        if varies || refused {
            return None;
        }
        // The fields only this response's client gets stay out of the stored head.
        let mut decided = cache.decided(&whole.headers);
        let names = cache.withheld(&whole.headers, &decided);
        if !take_fields(&mut whole.headers, &names).is_empty() {
            decided = cache.decided(&whole.headers);
        }
        let (now, options) = (cache.now(), cache.options.semantics());
        let view = cache.policy_response((whole.status, whole.version, &whole.headers), &decided);
        // Verdict with the request as it came (its Authorization above all), kept with the
        // headers it varies on only, as a miss's 200 is.
        let asked = engine_view::request(&self.request);
        if !CachePolicy::new_options(&asked, &view, now, options).is_storable() {
            return None;
        }
        let stored_request = self.stored_request(&whole.headers);
        // The route's `Ttl`, as for a whole response: kept with the entry, or nothing kept.
        let rule = cache.ttl_rule(&self.request, parts, self.request_ttl.as_deref().copied());
        if !rule.stores() {
            return None;
        }
        if cache.apply_ttl(rule, &mut whole, &stored_request, &decided) {
            decided = cache.decided(&whole.headers);
        }
        let view = cache.policy_response((whole.status, whole.version, &whole.headers), &decided);
        let policy = CachePolicy::new_options(&stored_request, &view, now, options);
        let url = url::Url::parse(&key::effective_uri(&self.request)).ok()?;
        Some(PartialHead {
            parts: whole,
            policy,
            url,
        })
    }
}

/// The partial entry of `key` a `206` of the representation `etag`, `total` bytes long, goes
/// into, with `head`; `None` when the store cannot keep it (logged).
async fn partial_entry(
    store: &crate::cache_store::Backing,
    key: &str,
    etag: &str,
    total: u64,
    head: PartialHead,
) -> Option<Arc<PartialEntry>> {
    match store.partial_for(key, etag, total, head).await {
        Ok(entry) => Some(entry),
        Err(error) => {
            crate::log::warn_event!(%key, %error, "could not keep a partial response");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fields::test_headers as head;
    use crate::testing::{Clock, Origin, bytes, field, request, serve};

    #[test]
    fn a_206_is_malformed_only_when_it_disagrees_with_itself() {
        for fine in [
            &[("content-range", "bytes 0-5/10"), ("content-length", "6")][..],
            &[("content-range", "bytes 0-5/*"), ("content-length", "6")],
            &[("content-range", "bytes 4-4/5")],
            &[("content-type", "multipart/byteranges; boundary=x")],
        ] {
            assert!(!malformed(&head(fine)), "{fine:?}");
        }
        for broken in [
            &[("content-range", "bytes 0-5/10"), ("content-length", "5")][..],
            &[("content-range", "bytes 5-2/10")],
            &[("content-range", "bytes 0-4/3")],
            &[("content-range", "bytes */10")],
            &[("content-range", "items 0-4/10")],
            &[("content-range", "bytes 0-5/10"), ("content-length", "six")],
            &[("content-length", "6")],
        ] {
            assert!(malformed(&head(broken)), "{broken:?}");
        }
    }

    #[test]
    fn only_a_single_known_span_and_a_strong_tag_combine_ranges() {
        let range = |value: &str| content_range(&head(&[("content-range", value)]));
        assert_eq!(range("bytes 0-5/10"), Some((0, 6, 10)));
        assert_eq!(range("bytes 9-9/10"), Some((9, 10, 10)));
        for unusable in [
            "bytes 0-5/*",
            "bytes 5-2/10",
            "bytes 0-10/10",
            "bytes */10",
            "0-5/10",
        ] {
            assert_eq!(range(unusable), None, "{unusable}");
        }
        let etag = |value: &str| strong_etag(&head(&[("etag", value)]));
        assert_eq!(etag(" \"v1\" ").as_deref(), Some("\"v1\""));
        assert_eq!(
            etag("W/\"v1\""),
            None,
            "ranges combine under a strong tag only"
        );
        assert_eq!(etag("v1"), None);
        assert_eq!(strong_etag(&head(&[])), None);
    }

    const URL: &str = "http://example.com/a";

    /// A cache over memory holding `0123456789` (tagged `"v1"`), and its origin.
    async fn stored() -> (crate::HttpStreamingCache, Origin) {
        let clock = Clock::default();
        let (cache, _) = crate::HttpStreamingCache::in_memory(clock.options());
        let origin = Origin::new(move |parts| match parts.headers.get("range") {
            Some(_) => {
                let fields = &[("content-range", "bytes 2-4/10"), ("etag", "\"v1\"")];
                clock.response(206, fields, "234")
            }
            None => {
                let fields = &[("cache-control", "max-age=60"), ("etag", "\"v1\"")];
                clock.response(200, fields, "0123456789")
            }
        });
        bytes(serve(&cache, &origin, request("GET", URL, &[])).await).await;
        (cache, origin)
    }

    #[tokio::test]
    async fn a_range_of_a_stored_response_is_cut_from_it() {
        let (cache, origin) = stored().await;
        for (range, status, content_range, body) in [
            ("bytes=2-4", 206, "bytes 2-4/10", "234"),
            ("bytes=-3", 206, "bytes 7-9/10", "789"),
            ("bytes=8-", 206, "bytes 8-9/10", "89"),
            ("bytes=10-", 416, "bytes */10", ""),
        ] {
            let asked = request("GET", URL, &[("range", range)]);
            let answer = serve(&cache, &origin, asked).await;
            assert_eq!(answer.status().as_u16(), status, "{range}");
            assert_eq!(field(&answer, "content-range"), [content_range], "{range}");
            assert_eq!(bytes(answer).await, body, "{range}");
        }
        let changed = [("range", "bytes=2-4"), ("if-range", "\"v0\"")];
        let whole = serve(&cache, &origin, request("GET", URL, &changed)).await;
        assert_eq!(
            whole.status(),
            200,
            "an If-Range naming another tag: the whole body"
        );
        assert_eq!(bytes(whole).await, "0123456789");
        assert_eq!(origin.calls(), 1);
    }

    #[tokio::test]
    async fn a_range_that_misses_is_answered_with_the_origins_206() {
        let clock = Clock::default();
        let (cache, _) = crate::HttpStreamingCache::in_memory(clock.options());
        let origin = Origin::new(move |_| {
            let fields = &[
                ("cache-control", "max-age=60"),
                ("content-range", "bytes 2-4/10"),
                ("etag", "\"v1\""),
            ];
            clock.response(206, fields, "234")
        });
        let answer = serve(
            &cache,
            &origin,
            request("GET", URL, &[("range", "bytes=2-4")]),
        )
        .await;
        assert_eq!(answer.status(), 206);
        assert_eq!(field(&answer, "content-range"), ["bytes 2-4/10"]);
        assert_eq!(bytes(answer).await, "234");
        assert_eq!(
            origin.asked()[0].headers["range"],
            "bytes=2-4",
            "the client's range"
        );
    }
}
