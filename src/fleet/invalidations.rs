//! Which invalidations by unsafe requests reach the whole fleet: a budget per node and per
//! key, so that any client's `POST` costs the fleet a bounded number of purge notes.

/// How long an invalidation of a key by an unsafe request stands for the fleet: another of
/// the same key within it removes this node's copy (and the bucket's) only.
const COALESCE_INVALIDATIONS: std::time::Duration = std::time::Duration::from_secs(1);

/// Keys remembered for [`COALESCE_INVALIDATIONS`] at most (past that, the oldest go).
const REMEMBERED_INVALIDATIONS: usize = 4096;

/// Which invalidations by unsafe requests reach the whole fleet through the purge log (a
/// note every node reads): one per key per [`COALESCE_INVALIDATIONS`], and at most
/// [`fleet_invalidation_rate`](crate::HttpCacheOptions::fleet_invalidation_rate) a second on this
/// node (a token bucket holding a second's worth). Any client can send a `POST` that the
/// origin answers `2xx`; without this bound each would cost every node of the fleet.
#[derive(Debug)]
pub(crate) struct FleetInvalidations {
    state: std::sync::Mutex<InvalidationBudget>,
}

/// A token bucket of invalidations sent to the fleet, and the keys sent lately.
#[derive(Debug)]
struct InvalidationBudget {
    tokens: f64,
    refilled: std::time::Instant,
    /// Keys by their SHA-256: a URL may be kilobytes long.
    recent: std::collections::HashMap<crate::format::layout::Hash32, std::time::Instant>,
}

impl FleetInvalidations {
    pub(crate) fn new() -> Self {
        FleetInvalidations {
            state: std::sync::Mutex::new(InvalidationBudget {
                tokens: f64::MAX,
                refilled: std::time::Instant::now(),
                recent: std::collections::HashMap::new(),
            }),
        }
    }

    /// Whether an invalidation of `key` may reach the fleet now, at `rate` a second.
    pub(crate) fn admit(&self, key: &str, rate: u32) -> bool {
        let key = crate::format::layout::Hash32::of(key.as_bytes());
        let mut budget = crate::rt::lock(&self.state);
        let now = std::time::Instant::now();
        let rate = f64::from(rate.max(1));
        let elapsed = now.duration_since(budget.refilled).as_secs_f64();
        budget.tokens = (budget.tokens.min(rate) + elapsed * rate).min(rate);
        budget.refilled = now;
        let coalesced = budget
            .recent
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < COALESCE_INVALIDATIONS);
        if coalesced || budget.tokens < 1.0 {
            return false;
        }
        budget.tokens -= 1.0;
        if budget.recent.len() >= REMEMBERED_INVALIDATIONS {
            budget
                .recent
                .retain(|_, at| now.duration_since(*at) < COALESCE_INVALIDATIONS);
            if budget.recent.len() >= REMEMBERED_INVALIDATIONS {
                budget.recent.clear();
            }
        }
        budget.recent.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reaches_the_fleet_once_a_second_and_all_keys_at_the_rate() {
        let budget = FleetInvalidations::new();
        assert!(budget.admit("a", 3));
        assert!(!budget.admit("a", 3), "the same key within the second");
        assert!(budget.admit("b", 3));
        assert!(budget.admit("c", 3));
        assert!(!budget.admit("d", 3), "past a second's worth at once");
    }
}
