use super::*;
use std::sync::Arc;

fn reply(id: u64, from: &str) -> pb::ExplainReply {
    pb::ExplainReply {
        id,
        json: serde_json::to_vec(&serde_json::json!({ "from": from })).unwrap(),
        error: String::new(),
    }
}

/// A query sent to zone b is answered by b alone: zone a replying with
/// the same id (ids are sequential, so easy to guess) is ignored, and
/// the query still gets b's answer. Keyed by id only, a's reply was
/// taken as b's.
#[tokio::test]
async fn a_zone_cannot_answer_a_query_sent_to_another() {
    let t = Arc::new(ZoneTable::default());
    let (a_tx, _a_rx) = mpsc::channel(4);
    let (b_tx, mut b_rx) = mpsc::channel(4);
    t.begin("a", &pb::ZoneHello::default(), a_tx);
    t.begin("b", &pb::ZoneHello::default(), b_tx);
    let ask = tokio::spawn({
        let t = t.clone();
        async move {
            t.explain("b", "api-1", std::time::Duration::from_secs(5))
                .await
        }
    });
    let id = match b_rx.recv().await {
        Some(Ok(pb::GlobalMessage {
            msg: Some(pb::global_message::Msg::Explain(e)),
        })) => e.id,
        _ => panic!("zone b was not asked"),
    };
    t.answered("a", reply(id, "a"));
    t.answered("b", reply(id, "b"));
    let v = ask.await.unwrap().unwrap();
    assert_eq!(v, serde_json::json!({ "from": "b" }));
}
