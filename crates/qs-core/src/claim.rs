//! Singleton records: whether a steward's claim may replace the record in the fleet's
//! `instances` KV. The shell reads the record, asks [`judge_record`], and writes by
//! compare-and-set when told to; the simulator keeps the records itself and asks
//! [`judge_claim`].

use qs_wire::SingletonClaim;

/// Whether `mine` may replace the singleton record `current` (tokens only grow, and a
/// placement may claim its own token again); if not, the record that holds the service, as
/// [`crate::Input::Claimed`] reports it.
pub fn judge_claim(
    current: Option<&SingletonClaim>,
    mine: &SingletonClaim,
) -> Result<(), SingletonClaim> {
    match current {
        Some(c)
            if c.fencing > mine.fencing
                || (c.fencing == mine.fencing && c.instance != mine.instance) =>
        {
            Err(c.clone())
        }
        _ => Ok(()),
    }
}

/// What to do with a record as read from the KV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordVerdict {
    /// Write the claim (by compare-and-set on the revision read).
    Write,
    /// Write the claim over a record that cannot be read: no valid token holds the service,
    /// so it counts as absent. The shell logs `why`.
    Replace { why: String },
    /// The record holds the service: the claim is refused.
    Refused(SingletonClaim),
}

/// Judges the raw record `current` (absent: `None`) against `mine`. An unreadable record
/// counts as absent: nobody can prove a token with it, and refusing would block the
/// singleton forever.
pub fn judge_record(current: Option<&[u8]>, mine: &SingletonClaim) -> RecordVerdict {
    let Some(bytes) = current else {
        return RecordVerdict::Write;
    };
    match SingletonClaim::decode(bytes) {
        // A token no genuine claim reaches (a writer of the bucket made it up): no valid
        // token holds the service.
        Ok(record) if record.fencing > qs_wire::bounds::MAX_FENCING => RecordVerdict::Replace {
            why: format!(
                "its fencing token {} is beyond any a claim reaches ({})",
                record.fencing,
                qs_wire::bounds::MAX_FENCING
            ),
        },
        Ok(record) => match judge_claim(Some(&record), mine) {
            Ok(()) => RecordVerdict::Write,
            Err(holder) => RecordVerdict::Refused(holder),
        },
        Err(e) => RecordVerdict::Replace {
            why: format!("unreadable singleton record: {e}"),
        },
    }
}
