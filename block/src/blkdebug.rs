//! Fault injection in the spirit of QEMU's blkdebug: rules that fail or delay
//! requests before they reach the file.
//!
//! A rule matches a request by kind (`op`, or any), by an optional byte range the
//! request must overlap, and fires on every `every_nth` matching request, at most
//! `limit` times. It then either fails the request (EIO or ENOSPC, which the caller
//! sees as `BlockError::Io` / `BlockError::NoSpace`; the file is not touched) or
//! delays it. Rules are checked in order; the first firing failure wins, delays add.
//! Attach an injector with `BlockBackend::open_with_faults`; rules may be added and
//! cleared while requests run.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{BlockError, Op};

/// The error an injected failure reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedError {
    /// EIO: the caller sees `BlockError::Io`.
    Eio,
    /// ENOSPC: the caller sees `BlockError::NoSpace`.
    Enospc,
}

impl InjectedError {
    fn errno(self) -> i32 {
        match self {
            InjectedError::Eio => libc::EIO,
            InjectedError::Enospc => libc::ENOSPC,
        }
    }
}

/// What a firing rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Fail the request without touching the file.
    Fail(InjectedError),
    /// Let the request through after this delay.
    Delay(Duration),
}

/// One rule. Build with [`FaultRule::fail`] / [`FaultRule::delay`] and refine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// Request kind it applies to; `None` for every kind.
    pub op: Option<Op>,
    /// Byte range the request must overlap; `None` for anywhere (flushes only match
    /// rules without a range).
    pub range: Option<Range<u64>>,
    /// Fire on every n-th matching request (1 = each one).
    pub every_nth: u64,
    /// Fire at most this many times; `None` for no limit.
    pub limit: Option<u64>,
    /// What happens when it fires.
    pub action: FaultAction,
}

impl FaultRule {
    /// Fails every request of kind `op` (`None`: any kind) with `error`.
    pub fn fail(op: Option<Op>, error: InjectedError) -> FaultRule {
        FaultRule {
            op,
            range: None,
            every_nth: 1,
            limit: None,
            action: FaultAction::Fail(error),
        }
    }

    /// Delays every request of kind `op` (`None`: any kind) by `delay`.
    pub fn delay(op: Option<Op>, delay: Duration) -> FaultRule {
        FaultRule {
            action: FaultAction::Delay(delay),
            ..FaultRule::fail(op, InjectedError::Eio)
        }
    }

    /// Only requests overlapping `range`.
    pub fn in_range(mut self, range: Range<u64>) -> FaultRule {
        self.range = Some(range);
        self
    }

    /// Only every `n`-th matching request (n = 0 is treated as 1).
    pub fn every_nth(mut self, n: u64) -> FaultRule {
        self.every_nth = n.max(1);
        self
    }

    /// At most `n` times.
    pub fn times(mut self, n: u64) -> FaultRule {
        self.limit = Some(n);
        self
    }

    fn matches(&self, op: Op, offset: u64, len: u64) -> bool {
        if self.op.is_some_and(|o| o != op) {
            return false;
        }
        match &self.range {
            None => true,
            Some(_) if op == Op::Flush => false,
            Some(r) => offset < r.end && offset.saturating_add(len.max(1)) > r.start,
        }
    }
}

/// Handle to a rule added to an injector, to ask how often it fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(usize);

struct RuleState {
    rule: FaultRule,
    seen: u64,
    fired: u64,
}

/// The verdict for one request.
#[derive(Debug)]
pub(crate) enum Verdict {
    Pass,
    Delay(Duration),
    Fail(BlockError),
}

/// A set of rules shared by a backend and the test (or device) driving it.
#[derive(Default)]
pub struct FaultInjector {
    rules: Mutex<Vec<RuleState>>,
}

impl FaultInjector {
    /// An injector with no rules (everything passes).
    pub fn new() -> Arc<FaultInjector> {
        Arc::new(FaultInjector::default())
    }

    /// Adds a rule after the existing ones.
    pub fn add_rule(&self, rule: FaultRule) -> RuleId {
        let mut rules = self.rules.lock().unwrap();
        rules.push(RuleState {
            rule,
            seen: 0,
            fired: 0,
        });
        RuleId(rules.len() - 1)
    }

    /// Disables every rule (ids stay valid; their counts are kept).
    pub fn clear(&self) {
        for state in self.rules.lock().unwrap().iter_mut() {
            state.rule.limit = Some(state.fired);
        }
    }

    /// How many times the rule fired.
    pub fn fired(&self, id: RuleId) -> u64 {
        self.rules.lock().unwrap().get(id.0).map_or(0, |s| s.fired)
    }

    /// Decides the fate of one request.
    pub(crate) fn check(&self, op: Op, offset: u64, len: u64) -> Verdict {
        let mut delay = Duration::ZERO;
        let mut rules = self.rules.lock().unwrap();
        for state in rules.iter_mut() {
            if !state.rule.matches(op, offset, len) {
                continue;
            }
            if state.rule.limit.is_some_and(|limit| state.fired >= limit) {
                continue;
            }
            state.seen += 1;
            if state.seen % state.rule.every_nth != 0 {
                continue;
            }
            state.fired += 1;
            match state.rule.action {
                FaultAction::Fail(error) => {
                    log::debug!("blkdebug: failing {op} at {offset} with {error:?}");
                    return Verdict::Fail(BlockError::from_errno(op, offset, error.errno()));
                }
                FaultAction::Delay(d) => delay += d,
            }
        }
        if delay.is_zero() {
            Verdict::Pass
        } else {
            Verdict::Delay(delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_fires_on_multiples_only() {
        let inj = FaultInjector::new();
        let id = inj.add_rule(FaultRule::fail(Some(Op::Write), InjectedError::Eio).every_nth(3));
        let verdicts: Vec<bool> = (0..9)
            .map(|i| matches!(inj.check(Op::Write, i * 512, 512), Verdict::Fail(_)))
            .collect();
        assert_eq!(
            verdicts,
            [false, false, true, false, false, true, false, false, true]
        );
        assert_eq!(inj.fired(id), 3);
        assert!(matches!(inj.check(Op::Read, 0, 512), Verdict::Pass));
    }

    #[test]
    fn range_rules_need_overlap_and_skip_flush() {
        let inj = FaultInjector::new();
        inj.add_rule(FaultRule::fail(None, InjectedError::Enospc).in_range(4096..8192));
        assert!(matches!(inj.check(Op::Write, 0, 4096), Verdict::Pass));
        assert!(matches!(
            inj.check(Op::Write, 4000, 200),
            Verdict::Fail(BlockError::NoSpace { .. })
        ));
        assert!(matches!(inj.check(Op::Flush, 0, 0), Verdict::Pass));
    }

    #[test]
    fn limit_and_clear_stop_a_rule() {
        let inj = FaultInjector::new();
        let id = inj.add_rule(FaultRule::fail(Some(Op::Flush), InjectedError::Eio).times(1));
        assert!(matches!(inj.check(Op::Flush, 0, 0), Verdict::Fail(_)));
        assert!(matches!(inj.check(Op::Flush, 0, 0), Verdict::Pass));
        inj.add_rule(FaultRule::delay(Some(Op::Read), Duration::from_millis(5)));
        assert!(matches!(inj.check(Op::Read, 0, 1), Verdict::Delay(_)));
        inj.clear();
        assert!(matches!(inj.check(Op::Read, 0, 1), Verdict::Pass));
        assert_eq!(inj.fired(id), 1);
    }
}
