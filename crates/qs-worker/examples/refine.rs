//! An example worker: refines an answer over iterations until it stops changing (the agent's
//! consistency check ends refining), checkpointing after each one.
//!
//!     cargo run -p qs-worker --example refine -- SOCKET NAME [IDLE_SECONDS]

use qs_worker::{Step, Worker};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(name)) = (args.next(), args.next()) else {
        return Err("usage: refine SOCKET NAME [IDLE_SECONDS]".into());
    };
    let idle = args
        .next()
        .map(|s| s.parse().map(Duration::from_secs_f64))
        .transpose()?;
    let mut worker = Worker::connect(socket, &name, &[])?;
    worker.run(
        |_, task, state| {
            let done = state.and_then(|s| s.parse::<u32>().ok()).unwrap_or(0) + 1;
            // The answer settles from the third pass on: twice the same, refining is over.
            let result = if done >= 3 {
                format!("answer to {}", task.payload)
            } else {
                format!("draft {done}")
            };
            Ok(Step {
                score: f64::from(done),
                result,
                state: done.to_string(),
            })
        },
        idle,
    )?;
    Ok(())
}
