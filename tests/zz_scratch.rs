#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
mod support;
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties, options::*};

#[tokio::test]
async fn scratch() {
    let node = support::private_node().await;
    let conn = Connection::connect(node.url(), ConnectionProperties::default()).await.unwrap();
    eprintln!("heartbeat negotiated: {:?}", conn.configuration().heartbeat());
    let mut events = conn.events_listener();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let c = ch.basic_publish("nope".into(), "k".into(), BasicPublishOptions::default(), b"x", Default::default()).await;
    eprintln!("publish: {:?}", c.is_ok());
    if let Ok(c) = c { eprintln!("confirm: {:?}", c.await); }
    let ev = tokio::time::timeout(std::time::Duration::from_secs(2), events.next()).await;
    eprintln!("event: {ev:?}; conn connected {}", conn.status().connected());
    let out = node.ctl_ok(&["list_connections", "--formatter", "json", "peer_port", "timeout", "client_properties"]).await;
    eprintln!("{out}");
}
