//! Streams end to end: a running stream whose lease holder left the fleet is cut with the
//! reason, and one whose client went away stops upstream and frees its slot.

mod common;

use common::models::*;
use common::*;
use std::sync::mpsc;

#[test]
fn a_running_leased_stream_of_a_node_that_left_the_fleet_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    declare(&up, PAIR, "code");
    // A stream of 500 tokens at 50/s (10 s) that peer-a placed here.
    let (first_tx, first_rx) = mpsc::channel();
    let c = client(&up);
    let leased = std::thread::spawn(move || {
        let began = std::time::Instant::now();
        let answer = post_with(
            &c,
            "/v1/chat/completions",
            "x-qs-lease: peer-a\r\nx-qs-priority: batch\r\n",
            &chat("code", 500, true),
            Some(first_tx),
        );
        (answer, began.elapsed())
    });
    first_rx
        .recv_timeout(LIMIT)
        .expect("the leased stream began");
    // And an answer that is not streamed (it would begin only once all 500 tokens are done).
    let c = client(&up);
    let whole = std::thread::spawn(move || {
        post_with(
            &c,
            "/v1/chat/completions",
            "x-qs-lease: peer-a\r\nx-qs-priority: batch\r\n",
            &chat("code", 500, false),
            None,
        )
    });
    up.wait("both leased requests run", |u| {
        model_field_number(u, "code", "in_flight") == 2
    });
    let (status, v) = up.http("POST", "/v1/chaos/kill/peer-a", "");
    assert_eq!(status, 200, "{v}");
    let (status, _, text) = whole.join().unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("cut: its lease holder left the fleet"),
        "{text}"
    );
    let ((status, _, stream), took) = leased.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        stream.contains("its lease holder left the fleet") && !stream.contains("[DONE]"),
        "the stream ends with the reason: {stream}"
    );
    assert!(
        stream.matches("data: {").count() < 500 && took < std::time::Duration::from_secs(9),
        "cut before its 10 s were up: {took:?}"
    );
    // The runtime serves on, its slot given back.
    assert_eq!(model_state(&up, "code"), "warm");
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("code", 2, false), None);
    assert_eq!(status, 200, "{text}");
}

#[test]
fn a_client_that_goes_away_cancels_the_generation_upstream_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    declare(&up, PAIR, "code");
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("code", 2, false), None);
    assert_eq!(status, 200, "{text}");
    let port = runtime_port(&up, "code");
    // A stream of 500 tokens at 50/s (10 s); the client reads its first event and leaves.
    let reader = first_event(&up, &chat("code", 500, true));
    assert_eq!(double_stats(port)["streams_active"], 1);
    let began = std::time::Instant::now();
    drop(reader);
    // Upstream, the generation stops well before its 10 s; here, its slot is free.
    up.wait("the runtime gave the stream up", |_| {
        double_stats(port)["streams_cancelled"] == 1
    });
    assert!(began.elapsed() < std::time::Duration::from_secs(8));
    let stats = double_stats(port);
    assert_eq!(stats["streams_active"], 0, "{stats}");
    assert_eq!(stats["streams_completed"], 0, "{stats}");
    up.wait("the slot given back", |u| {
        model_field_number(u, "code", "in_flight") == 0
    });
    let (_, metrics) = up.http("GET", "/metrics", "");
    let gone =
        "qs_model_requests_total{model=\"code\",class=\"interactive\",outcome=\"client_gone\"} 1";
    assert!(metrics.as_str().unwrap_or("").contains(gone), "{metrics}");
}

/// Clients that leave in the middle of their answers cost their connections, never the agent:
/// a write to a socket its peer closed (a vectored write takes no MSG_NOSIGNAL) raises
/// SIGPIPE, which a server must not die of.
#[test]
fn clients_that_leave_mid_answer_never_take_the_agent_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = start(dir.path(), "");
    declare(&up, PAIR, "code");
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("code", 2, false), None);
    assert_eq!(status, 200, "{text}");
    for _ in 0..20 {
        let reader = first_event(&up, &chat("code", 500, true));
        // Closed with a reset: the agent's next write to it fails at once.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: sets an option on a socket this test owns, with a value of its size.
        unsafe {
            libc::setsockopt(
                reader.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(reader);
    }
    up.wait("the streams' slots given back", |u| {
        model_field_number(u, "code", "in_flight") == 0
    });
    let exited = up.child.as_mut().unwrap().try_wait().unwrap();
    assert_eq!(exited, None, "the agent is alive");
    assert_eq!(up.get("/health")["status"], "ok");
}
