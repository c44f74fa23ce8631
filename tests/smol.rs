//! The store on the smol runtime (the `smol` feature): no Tokio runtime anywhere.
#![cfg(feature = "smol")]

mod common;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::{BodyExt, Full};
use http_cache_streaming::StreamingManager;
use url::Url;

#[test]
fn the_store_works_on_smol() {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "no Tokio runtime in this test"
    );
    let dir = tempfile::tempdir().unwrap();
    smol::block_on(async {
        let manager = StreamingManager::new(dir.path().to_path_buf());
        let url = Url::parse("https://example.com/").unwrap();
        // Larger than a read chunk, so the body streams from disk in several reads.
        let len = 3 << 20;
        manager
            .put(
                "GET:big".into(),
                Response::new(Generated::new(len, 4)),
                policy("https://example.com/"),
                url.clone(),
            )
            .await
            .unwrap();
        let (hit, _) = manager.get("GET:big").await.unwrap().expect("stored");
        let (digest, got, _) = drain(hit.into_body()).await.unwrap();
        assert_eq!((digest, got), (Generated::digest(len, 4), len));

        // A tee commits once its body has been read to its end.
        let teed = manager.tee(
            "GET:small".into(),
            Response::new(Full::new(Bytes::from("on smol"))),
            policy("https://example.com/"),
            url,
        );
        assert_eq!(
            teed.into_body().collect().await.unwrap().to_bytes(),
            "on smol"
        );
        let (hit, _) = manager.get("GET:small").await.unwrap().expect("stored");
        assert_eq!(
            hit.into_body().collect().await.unwrap().to_bytes(),
            "on smol"
        );

        manager.delete("GET:big").await.unwrap();
        assert!(manager.get("GET:big").await.unwrap().is_none());
        assert_eq!(manager.stats().await.unwrap().entries, 1);
    });
}
