//! The etcd behaviours the etcd source relies on, checked on the real server through our own
//! generated client: if an etcd upgrade changes one of them, this file says which.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use kvsync_etcd_grpc::pb::etcdserverpb::{
    watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use kvsync_etcd_grpc::{prefix_range, Client, ConnectOptions, Streaming};
use kvsync_tests::etcd_server::{EtcdOptions, EtcdServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(10);

fn create(prefix: &str, start_revision: i64) -> WatchRequest {
    let (key, range_end) = prefix_range(prefix.as_bytes());
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            fragment: true,
            ..Default::default()
        })),
    }
}

async fn open(client: &Client, first: WatchRequest) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>)> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await?;
    let stream = tokio::time::timeout(WAIT, client.watch(ReceiverStream::new(rx))).await??;
    Ok((tx, stream))
}

async fn next(stream: &mut Streaming<WatchResponse>) -> Result<WatchResponse> {
    tokio::time::timeout(WAIT, stream.message()).await.context("no watch response")??.context("stream ended")
}

#[tokio::test]
async fn first_watch_id_is_zero_and_creates_are_answered_in_order() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let client = Client::connect(&etcd.endpoint(), &ConnectOptions::default()).await?;
    let (tx, mut stream) = open(&client, create("a/", 0)).await?;
    let r = next(&mut stream).await?;
    assert!(r.created && !r.canceled);
    assert_eq!(r.watch_id, 0, "the first id is 0, which proto3 leaves off the wire");
    // An empty range fails: created + canceled with id -1, in order with the other creates.
    tx.send(create("b/", 0)).await?;
    let mut bad = create("z", 0);
    if let Some(RequestUnion::CreateRequest(c)) = &mut bad.request_union {
        c.range_end = bytes::Bytes::from_static(b"a");
    }
    tx.send(bad).await?;
    let r = next(&mut stream).await?;
    assert!(r.created && !r.canceled && r.watch_id == 1, "{r:?}");
    let r = next(&mut stream).await?;
    assert!(r.created && r.canceled && r.watch_id == -1, "{r:?}");
    assert!(r.cancel_reason.contains("range is empty"), "{}", r.cancel_reason);
    Ok(())
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_created_then_canceled_with_compact_revision() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let c = etcd.client().await?;
    c.put("k/1", "a").await?;
    let rev = c.put("k/1", "b").await?;
    c.compact(rev).await?;
    let (_tx, mut stream) = open(&c.client, create("k/", 1)).await?;
    let mut saw_created = false;
    for _ in 0..4 {
        let r = next(&mut stream).await?;
        if r.created && !r.canceled {
            saw_created = true;
            continue;
        }
        if r.canceled {
            assert_eq!(r.compact_revision, rev, "{r:?}");
            assert!(saw_created || r.created, "{r:?}");
            return Ok(());
        }
    }
    bail!("no cancel with compact_revision")
}

/// The token belongs to the stream and is checked at each create: after it expires, a create on the
/// same stream is refused with a reason that names the invalid token (the source then reopens the
/// stream with a fresh token).
#[tokio::test]
async fn create_after_token_expiry_is_refused_with_an_auth_reason() -> Result<()> {
    let mut etcd = EtcdServer::start_with(EtcdOptions { auth_token_ttl: Some(1), ..Default::default() }).await?;
    etcd.enable_auth("rootpw", "reader", "readerpw", &["a/"]).await?;
    let mut client = Client::connect(&etcd.endpoint(), &ConnectOptions::default()).await?;
    client.authenticate("reader", "readerpw", WAIT).await?;
    let (tx, mut stream) = open(&client, create("a/", 0)).await?;
    let r = next(&mut stream).await?;
    assert!(r.created && !r.canceled, "{r:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    tx.send(create("a/", 0)).await?;
    let r = next(&mut stream).await?;
    assert!(r.created && r.canceled && r.watch_id == -1, "{r:?}");
    assert!(r.cancel_reason.contains("invalid auth token"), "reason: {}", r.cancel_reason);
    // Without permission: a different reason.
    let mut client = Client::connect(&etcd.endpoint(), &ConnectOptions::default()).await?;
    client.authenticate("reader", "readerpw", WAIT).await?;
    let (_tx, mut stream) = open(&client, create("secret/", 0)).await?;
    let r = next(&mut stream).await?;
    assert!(r.created && r.canceled, "{r:?}");
    assert!(r.cancel_reason.contains("permission denied"), "reason: {}", r.cancel_reason);
    Ok(())
}
