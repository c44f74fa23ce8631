//! S3-FIFO's small queue share, tuned by hill climbing on the hit ratio.

/// S3-FIFO's small queue share of the store, tuned by hill climbing on the hit ratio as
/// Caffeine tunes W-TinyLFU's window: every sample of requests, the share moves by a step;
/// while the hit ratio improves it keeps going that way, when it falls it turns back, and
/// the step shrinks as it settles (and grows again when the load changes). A step
/// multiplies or divides the share by a factor, so that it moves finely among the small
/// shares skewed loads want and still reaches the large ones of loads that want recency in
/// a few samples.
///
/// A store's hit ratio rises for a long while after it is first full, as it learns what is
/// popular, whatever the share: the climber keeps going the way it started through all of
/// that. It starts downwards, towards the small queues that skewed loads want (with
/// `examples/eviction.rs`, starting upwards took the share to 41–46% before it came back
/// down, and cost up to 0.015 of byte miss ratio at 10%); a load that wants recency turns it
/// back up once its hit ratio falls. Samples count only once the store is full.
#[derive(Debug)]
pub(crate) struct ShareClimber {
    share: f64,
    step: f64,
    hits: u64,
    misses: u64,
    /// The hit ratio of the last sample, once one was taken on a full store.
    last_rate: Option<f64>,
    full: bool,
}

/// The share to start from, its bounds, the step to start with (in the share's natural
/// logarithm: ×1.35; 0.3 measured better than 0.5 and than steps of 6 points), how much a
/// step shrinks each sample, and the change in hit ratio past which a step starts over at
/// full size.
const SHARE: f64 = 0.1;
const SHARE_BOUNDS: (f64, f64) = (0.01, 0.8);
const STEP: f64 = 0.3;
const STEP_DECAY: f64 = 0.98;
const RESTART_AT: f64 = 0.05;

impl Default for ShareClimber {
    fn default() -> Self {
        ShareClimber {
            share: SHARE,
            step: -STEP,
            hits: 0,
            misses: 0,
            last_rate: None,
            full: false,
        }
    }
}

impl ShareClimber {
    pub(crate) fn share(&self) -> f64 {
        self.share
    }

    /// Notes that the store is full (it evicts): samples count from then on.
    pub(crate) fn filled(&mut self) {
        self.full = true;
    }

    /// Counts a hit or a miss; once `sample` are counted, takes a step (after the first
    /// sample, which sets the hit ratio the next is compared with).
    pub(crate) fn record(&mut self, hit: bool, sample: u64) {
        if !self.full {
            return;
        }
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        let requests = self.hits + self.misses;
        if requests < sample {
            return;
        }
        let rate = self.hits as f64 / requests as f64;
        self.hits = 0;
        self.misses = 0;
        let Some(last_rate) = self.last_rate.replace(rate) else {
            return;
        };
        let change = rate - last_rate;
        let amount = if change >= 0.0 { self.step } else { -self.step };
        self.step = if change.abs() >= RESTART_AT {
            STEP.copysign(amount)
        } else {
            amount * STEP_DECAY
        };
        let (low, high) = SHARE_BOUNDS;
        self.share = (self.share * amount.exp()).clamp(low, high);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sample of 100 requests, `rate` of them hits.
    fn sample(climber: &mut ShareClimber, rate: f64) {
        for n in 0..100 {
            climber.record(f64::from(n) / 100.0 < rate, 100);
        }
    }

    #[test]
    fn the_climber_goes_where_the_hit_ratio_rises() {
        // A made-up load whose hit ratio peaks with a small queue of 40 %.
        let mut climber = ShareClimber::default();
        climber.filled();
        for _ in 0..200 {
            let best = 1.0 - (climber.share() - 0.4).abs();
            sample(&mut climber, best);
        }
        assert!((climber.share() - 0.4).abs() < 0.1, "{}", climber.share());
    }

    #[test]
    fn the_climber_waits_for_a_full_store_and_then_for_a_first_sample() {
        let mut climber = ShareClimber::default();
        for _ in 0..50 {
            sample(&mut climber, 0.5);
        }
        assert_eq!(climber.share(), SHARE, "filling, no step");
        climber.filled();
        sample(&mut climber, 0.5);
        assert_eq!(
            climber.share(),
            SHARE,
            "the first sample sets the ratio to beat"
        );
        sample(&mut climber, 0.5);
        assert!(climber.share() < SHARE, "then a step");
    }

    #[test]
    fn a_hit_ratio_that_rises_as_the_store_learns_takes_the_share_down() {
        let mut climber = ShareClimber::default();
        climber.filled();
        for n in 0..20 {
            sample(&mut climber, 0.3 + 0.01 * f64::from(n));
        }
        assert_eq!(climber.share(), SHARE_BOUNDS.0);
    }
}
