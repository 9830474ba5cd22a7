//! A task worker that uses a model runtime (seed 003's "Ghoul") on real processes: while its
//! model drains for a swap on the node, its claims are answered with soft-stop (finish the
//! step, checkpoint, stop claiming); a worker of a model that stays warm claims on.

mod common;

use common::models::*;
use common::*;
use qs_worker::{Claimed, Worker};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn a_worker_whose_model_drains_for_a_swap_is_soft_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let up = pair_with_code_warm(dir.path());
    let socket = dir.path().join("state").join("tasks.sock");
    up.wait("the workers' socket", |_| socket.exists());
    let mut ghoul = Worker::connect(&socket, "ghoul", &["code"]).unwrap();
    let mut steady = Worker::connect(&socket, "steady", &["tiny"]).unwrap();
    assert_eq!(ghoul.claim(Duration::ZERO).unwrap(), Claimed::Nothing);

    // A stream holds code while conv, which cannot sit beside it, asks for the GPU.
    let (first_tx, first_rx) = mpsc::channel();
    let stream = {
        let c = client(&up);
        std::thread::spawn(move || {
            post(
                &c,
                "/v1/chat/completions",
                &chat("code", 60, true),
                Some(first_tx),
            )
        })
    };
    first_rx.recv_timeout(LIMIT).expect("the stream began");
    let conv = {
        let c = client(&up);
        std::thread::spawn(move || post(&c, "/v1/chat/completions", &chat("conv", 2, false), None))
    };
    let start = Instant::now();
    let stopped = loop {
        assert!(start.elapsed() < LIMIT, "code never drained");
        if ghoul.claim(Duration::from_millis(50)).unwrap() == Claimed::SoftStop {
            break model_state(&up, "code");
        }
    };
    assert!(
        ["draining", "stopping", "absent"].contains(&stopped.as_str()),
        "soft-stopped while code was {stopped}"
    );
    assert_eq!(
        steady.claim(Duration::ZERO).unwrap(),
        Claimed::Nothing,
        "a worker of a model that stays warm claims on"
    );
    assert_eq!(stream.join().unwrap().0, 200);
    assert_eq!(conv.join().unwrap().0, 200);
}
