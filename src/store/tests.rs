use super::*;
use http_body_util::{BodyExt as _, Full};
use std::fs;
use url::Url;

fn response(body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header("cache-control", "max-age=3600")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn put(manager: &StreamingManager, key: &str, body: &'static str) {
    let request = http::Request::get("http://example.com/").body(()).unwrap();
    let policy = CachePolicy::new(&request, &response(body));
    let url = Url::parse("http://example.com/").unwrap();
    let stored = manager.put(key.into(), response(body), policy, url).await;
    stored.unwrap().into_body().collect().await.unwrap();
}

async fn read(manager: &StreamingManager, key: &str) -> Option<Bytes> {
    let (response, _) = manager.get(key).await.unwrap()?;
    Some(response.into_body().collect().await.unwrap().to_bytes())
}

fn content_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("cache-v2/content")).unwrap().count()
}

fn files(dir: &Path, under: &str) -> usize {
    fs::read_dir(dir.join("cache-v2").join(under))
        .unwrap()
        .count()
}

async fn put_tagged(manager: &StreamingManager, key: &str, body: &'static str, tags: &str) {
    let mut tagged = response(body);
    tagged
        .headers_mut()
        .insert("surrogate-key", tags.parse().unwrap());
    let request = http::Request::get("http://example.com/").body(()).unwrap();
    let policy = CachePolicy::new(&request, &tagged);
    let url = Url::parse("http://example.com/").unwrap();
    let stored = manager.put(key.into(), tagged, policy, url).await;
    stored.unwrap().into_body().collect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_answers_before_its_files_go_and_holds_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // Dropping the sender lets the unlinking go on (a failing test too).
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let mut builder = StreamingManager::builder(dir.path());
    builder.options.purge_gate = Some(Arc::new(Mutex::new(gate)));
    let manager = builder.build();
    put_tagged(&manager, "GET:a", "a", "red").await;
    put_tagged(&manager, "GET:b", "b", "red blue").await;
    put_tagged(&manager, "GET:c", "c", "blue").await;
    assert_eq!(manager.purge_tags(["red"]).await.unwrap(), 2);
    // Answered, with the files still there (their unlinking is held): the note stands
    // in for them.
    assert_eq!(files(dir.path(), "metadata"), 3);
    assert_eq!(files(dir.path(), "purges-pending"), 1);
    assert_eq!(read(&manager, "GET:a").await, None);
    assert_eq!(read(&manager, "GET:b").await, None);
    assert_eq!(read(&manager, "GET:c").await.unwrap(), "c");
    assert_eq!(manager.stats().await.unwrap().entries, 1);

    // The process dies now; another store opens the directory and applies the note as
    // it reads the records in.
    let reopened = StreamingManager::new(dir.path().to_path_buf());
    assert_eq!(read(&reopened, "GET:a").await, None);
    assert_eq!(read(&reopened, "GET:b").await, None);
    assert_eq!(read(&reopened, "GET:c").await.unwrap(), "c");
    assert_eq!(reopened.stats().await.unwrap().entries, 1);
    assert_eq!(files(dir.path(), "metadata"), 1);
    assert_eq!(
        content_files(dir.path()),
        1,
        "the purged bodies' files went as orphans"
    );
    assert_eq!(files(dir.path(), "purges-pending"), 0);

    // The first store's unlinking, let go, leaves what is stored after the purge.
    drop(release);
    put_tagged(&reopened, "GET:a", "a again", "red").await;
    for _ in 0..50 {
        assert_eq!(read(&reopened, "GET:a").await.unwrap(), "a again");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_is_served_while_its_records_are_read_in() {
    let dir = tempfile::tempdir().unwrap();
    let manager = StreamingManager::new(dir.path().to_path_buf());
    put(&manager, "GET:shared-1", "shared").await;
    put(&manager, "GET:shared-2", "shared").await;
    put(&manager, "GET:replaced", "old").await;
    put(&manager, "GET:deleted", "alone").await;
    put(&manager, "GET:kept", "kept").await;
    assert_eq!(content_files(dir.path()), 4);
    drop(manager);

    // Reopened as a large store would be: the records are read in on a thread, held
    // until the checks below are done.
    let gate = Arc::new(std::sync::Barrier::new(2));
    let mut builder = StreamingManager::builder(dir.path());
    builder.options.read_in_before_serving = 0;
    builder.options.read_in_gate = Some(Arc::clone(&gate));
    let manager = builder.build();
    assert_eq!(read(&manager, "GET:kept").await.unwrap(), "kept");
    manager.delete("GET:shared-1").await.unwrap();
    manager.delete("GET:deleted").await.unwrap();
    put(&manager, "GET:replaced", "new").await;
    assert_eq!(read(&manager, "GET:replaced").await.unwrap(), "new");
    assert_eq!(read(&manager, "GET:deleted").await, None);
    // Nothing is unlinked yet: the counts are not whole.
    assert_eq!(content_files(dir.path()), 5);
    let reading = tokio::task::spawn_blocking(move || gate.wait());

    let stats = manager.stats().await.unwrap();
    reading.await.unwrap();
    assert_eq!(stats.entries, 3, "shared-2, replaced, kept");
    // "alone" and "old" are gone; "shared" stays for shared-2.
    assert_eq!(content_files(dir.path()), 3);
    assert_eq!(read(&manager, "GET:shared-2").await.unwrap(), "shared");
    assert_eq!(read(&manager, "GET:shared-1").await, None);
    assert_eq!(read(&manager, "GET:replaced").await.unwrap(), "new");
}
