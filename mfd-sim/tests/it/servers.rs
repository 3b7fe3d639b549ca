//! The ordered server list (R13) against real listeners.

use mfd_sim::{
    classify::{Classification, FailoverCause},
    servers::ServerList,
};

use crate::support::*;

#[tokio::test]
async fn skips_a_refused_and_a_maintenance_server_and_returns_the_third() {
    let refused = refused_url().await;
    let maintenance =
        TestServer::http(handler(|_| health(false, "up", true, Some("maintenance")))).await;
    let fine = TestServer::https(handler(|_| health(true, "up", false, None))).await;
    let list = ServerList::new(vec![
        client(&refused),
        client(&maintenance.url),
        client(&fine.url),
    ])
    .unwrap();

    let found = list.first_accepting().await.unwrap();
    assert_eq!(found.index, 2);
    assert_eq!(found.client.base_url(), fine.url);
    assert!(found.health.accepting);
    let skipped: Vec<_> = found
        .skipped
        .iter()
        .map(|s| (s.index, s.classification))
        .collect();
    assert_eq!(
        skipped,
        [
            (0, Classification::Failover(FailoverCause::WebServiceDown)),
            (1, Classification::Failover(FailoverCause::Maintenance)),
        ]
    );
    assert_eq!(found.skipped[0].server, refused);
}

#[tokio::test]
async fn the_first_accepting_server_wins_and_later_ones_are_not_asked() {
    let first = TestServer::http(handler(|_| health(true, "up", false, None))).await;
    let second = TestServer::http(handler(|_| health(true, "up", false, None))).await;
    let list = ServerList::new(vec![client(&first.url), client(&second.url)]).unwrap();
    let found = list.first_accepting().await.unwrap();
    assert_eq!((found.index, found.skipped.len()), (0, 0));
    assert!(second.requests().is_empty());
}

#[tokio::test]
async fn when_none_accepts_every_server_is_listed_with_its_cause() {
    let data_down = TestServer::http(handler(|_| {
        health(false, "down", false, Some("data-service-down"))
    }))
    .await;
    let closing = RawServer::start(RawBehaviour::Close).await;
    let not_ours = TestServer::http(handler(|_| api_error(404, "not_found", None))).await;
    let list = ServerList::new(vec![
        client(&data_down.url),
        client(&closing.url),
        client(&not_ours.url),
    ])
    .unwrap();
    let none = list.first_accepting().await.unwrap_err();
    let causes: Vec<_> = none.skipped.iter().map(|s| s.classification).collect();
    assert_eq!(
        causes,
        [
            Classification::Failover(FailoverCause::DataServiceDown),
            Classification::Failover(FailoverCause::WebServiceDown),
            Classification::NotFailover,
        ]
    );
    let text = none.to_string();
    assert!(
        text.contains("data_service_down") && text.contains(&closing.url),
        "{text}"
    );
}

#[test]
fn an_empty_list_is_refused() {
    assert!(ServerList::new(vec![]).is_err());
}
