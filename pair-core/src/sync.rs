//! Sync admission: may the two servers exchange configuration? Seed 002
//! requires the exact same date and time zone on both. This module owns that
//! decision as a pure function of readings the caller took; it reads no
//! clock and no zone database, and it never blocks heartbeats, only sync.

use serde::{Deserialize, Serialize};

/// One server's side of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockReading {
    /// The instance name, for the reason people read.
    pub instance: String,
    /// IANA zone name (configured, else the system's). `None` when the
    /// system zone could not be determined: reported as such, never taken
    /// as UTC.
    pub time_zone: Option<String>,
}

/// The clock comparison, taken by the side that runs the check: it noted
/// its own clock when it sent the request (`sent_ms`) and when the answer
/// came back (`received_ms`), and the peer put its clock in the answer
/// (`peer_ms`). All in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    pub sent_ms: u64,
    pub peer_ms: u64,
    pub received_ms: u64,
}

impl ClockSample {
    /// The time the answer spent on the way, both ways.
    pub fn round_trip_ms(&self) -> u64 {
        self.received_ms.saturating_sub(self.sent_ms)
    }

    /// How far the peer's clock is from ours, with the round trip taken out:
    /// the peer read its clock somewhere between `sent_ms` and `received_ms`,
    /// so the best estimate of our clock at that moment is the midpoint, and
    /// the estimate is off by at most half the round trip. Returns the
    /// absolute skew less that uncertainty (never negative): a skew that
    /// exceeds the limit even in the most favourable reading.
    pub fn skew_beyond_uncertainty_ms(&self) -> u64 {
        let midpoint = self.sent_ms as i128 + (self.round_trip_ms() as i128) / 2;
        let skew = (self.peer_ms as i128 - midpoint).unsigned_abs();
        let uncertainty = (self.round_trip_ms() as u128).div_ceil(2);
        skew.saturating_sub(uncertainty) as u64
    }

    /// The plain estimate of the skew (peer minus local), for status output.
    pub fn skew_ms(&self) -> i64 {
        let midpoint = self.sent_ms as i128 + (self.round_trip_ms() as i128) / 2;
        (self.peer_ms as i128 - midpoint) as i64
    }
}

/// Why sync is blocked. The text is what both servers show in status, in
/// the log and in the notification.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum SyncBlock {
    /// The two servers run on different time zones.
    #[error(
        "time zone differs: primary {primary} {primary_zone}, secondary {secondary} \
         {secondary_zone}; set both to the same zone"
    )]
    TimeZoneDiffers {
        primary: String,
        primary_zone: String,
        secondary: String,
        secondary_zone: String,
    },
    /// A server could not determine its time zone.
    #[error(
        "time zone unknown on {instance}: the system zone could not be determined; \
         set time_zone in its configuration"
    )]
    TimeZoneUnknown { instance: String },
    /// The clocks are too far apart.
    #[error(
        "clock skew {skew_ms} ms between primary {primary} and secondary {secondary} \
         exceeds {max_ms} ms (round trip {round_trip_ms} ms); synchronise both clocks (NTP)"
    )]
    ClockSkew {
        primary: String,
        secondary: String,
        skew_ms: i64,
        round_trip_ms: u64,
        max_ms: u64,
    },
    /// The two servers have not compared zones and clocks on this
    /// connection yet: sync waits for the first check (a moment after the
    /// link comes up). Not a fault; drivers need not tell admins.
    #[error("time zones and clocks not compared yet with {peer}; sync waits for the check")]
    NotChecked { peer: String },
    /// The round trip was too long to say anything about the clocks.
    #[error(
        "clock check inconclusive: round trip {round_trip_ms} ms between {primary} and \
         {secondary} is longer than twice the allowed skew of {max_ms} ms; the check is retried"
    )]
    RoundTripTooLong {
        primary: String,
        secondary: String,
        round_trip_ms: u64,
        max_ms: u64,
    },
}

/// Decides whether configuration may be synchronised between `primary` and
/// `secondary`, given a clock `sample` of the peer and the allowed skew.
///
/// Rules (seed 002, requirement R7):
/// - both zones must be known; an unknown zone blocks with its own reason
///   rather than being assumed UTC;
/// - the zones must be the same IANA name;
/// - the clocks may differ by at most `max_clock_skew_ms` once the round
///   trip's uncertainty is taken out; a round trip longer than twice the
///   limit proves nothing either way and blocks until a better sample.
pub fn admit_sync(
    primary: &ClockReading,
    secondary: &ClockReading,
    sample: ClockSample,
    max_clock_skew_ms: u64,
) -> Result<(), SyncBlock> {
    let (primary_zone, secondary_zone) = match (&primary.time_zone, &secondary.time_zone) {
        (None, _) => {
            return Err(SyncBlock::TimeZoneUnknown {
                instance: primary.instance.clone(),
            });
        }
        (_, None) => {
            return Err(SyncBlock::TimeZoneUnknown {
                instance: secondary.instance.clone(),
            });
        }
        (Some(p), Some(s)) => (p, s),
    };
    if primary_zone != secondary_zone {
        return Err(SyncBlock::TimeZoneDiffers {
            primary: primary.instance.clone(),
            primary_zone: primary_zone.clone(),
            secondary: secondary.instance.clone(),
            secondary_zone: secondary_zone.clone(),
        });
    }
    if sample.round_trip_ms() > max_clock_skew_ms.saturating_mul(2) {
        return Err(SyncBlock::RoundTripTooLong {
            primary: primary.instance.clone(),
            secondary: secondary.instance.clone(),
            round_trip_ms: sample.round_trip_ms(),
            max_ms: max_clock_skew_ms,
        });
    }
    if sample.skew_beyond_uncertainty_ms() > max_clock_skew_ms {
        return Err(SyncBlock::ClockSkew {
            primary: primary.instance.clone(),
            secondary: secondary.instance.clone(),
            skew_ms: sample.skew_ms(),
            round_trip_ms: sample.round_trip_ms(),
            max_ms: max_clock_skew_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(instance: &str, zone: Option<&str>) -> ClockReading {
        ClockReading {
            instance: instance.to_owned(),
            time_zone: zone.map(str::to_owned),
        }
    }

    const T: u64 = 1_700_000_000_000;

    fn sample(peer_offset_ms: i64, round_trip_ms: u64) -> ClockSample {
        ClockSample {
            sent_ms: T,
            peer_ms: (T as i64 + round_trip_ms as i64 / 2 + peer_offset_ms) as u64,
            received_ms: T + round_trip_ms,
        }
    }

    #[test]
    fn same_zone_and_close_clocks_are_admitted() {
        let p = side("gw-a", Some("Europe/Berlin"));
        let s = side("gw-b", Some("Europe/Berlin"));
        assert_eq!(admit_sync(&p, &s, sample(0, 2), 1_000), Ok(()));
        assert_eq!(admit_sync(&p, &s, sample(-999, 2), 1_000), Ok(()));
    }

    #[test]
    fn different_zones_are_refused_in_plain_words() {
        let p = side("gw-a", Some("Europe/Berlin"));
        let s = side("gw-b", Some("America/New_York"));
        let block = admit_sync(&p, &s, sample(0, 2), 1_000).unwrap_err();
        assert_eq!(
            block.to_string(),
            "time zone differs: primary gw-a Europe/Berlin, secondary gw-b America/New_York; \
             set both to the same zone"
        );
    }

    #[test]
    fn an_unknown_zone_is_never_taken_as_utc() {
        let p = side("gw-a", Some("UTC"));
        let s = side("gw-b", None);
        assert_eq!(
            admit_sync(&p, &s, sample(0, 2), 1_000),
            Err(SyncBlock::TimeZoneUnknown {
                instance: "gw-b".into()
            })
        );
    }

    #[test]
    fn skew_beyond_the_limit_is_refused_with_round_trip_compensation() {
        let p = side("gw-a", Some("UTC"));
        let s = side("gw-b", Some("UTC"));
        // 1.5 s off with a 10 ms round trip: beyond a 1 s limit.
        let err = admit_sync(&p, &s, sample(1_500, 10), 1_000).unwrap_err();
        assert!(matches!(err, SyncBlock::ClockSkew { skew_ms: 1_500, .. }));
        assert!(err.to_string().contains("clock skew 1500 ms"));
        // The peer answered late in a long round trip: its clock reading can
        // be up to half the round trip ahead of our midpoint without any skew
        // at all, so 1 040 ms with an 80 ms round trip is admitted.
        assert_eq!(admit_sync(&p, &s, sample(1_040, 80), 1_000), Ok(()));
        // A round trip longer than twice the limit proves nothing.
        assert!(matches!(
            admit_sync(&p, &s, sample(0, 2_500), 1_000),
            Err(SyncBlock::RoundTripTooLong { .. })
        ));
    }
}
