//! Doubling waits between tries of something outside this process (the NATS server, its KV,
//! JetStream), so an outage costs a few tries a second at first and one every few seconds after.

use std::time::Duration;
use tokio::sync::watch;

pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The wait before the next try; each call doubles the one after, up to the maximum.
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// Back to the shortest wait, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// Waits [`Backoff::next`]; true when `stop` turned true meanwhile.
    pub(crate) async fn wait(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let wait = self.next();
        tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(wait) => *stop.borrow(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn waits_double_up_to_the_maximum_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let waits: Vec<_> = (0..5).map(|_| b.next()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next(), ms(100));
    }
}
