//! A small linearizability checker (Porcupine/Knossos style) for the
//! catalog history the workload records: commits, forgets and listings of
//! snapshots, each with its invocation and completion time.
//!
//! The model is the set of live snapshots, named by the tag the workload
//! gives each backup. A commit adds its tag; a forget removes it (and
//! succeeds only if it was there); a listing returns the set. An operation
//! whose outcome is unknown (the call failed or timed out: the commit may
//! have reached Raft before the answer was lost) may take effect at any
//! moment after its invocation, or never. The search is Wing & Gong's with
//! Lowe's memoisation of (linearized set, state): a history is linearizable
//! when some order that respects real time (an operation that completed
//! before another was invoked comes first) explains every observed result.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

/// What an operation asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Input {
    Commit(String),
    Forget(String),
    List,
}

/// What it observed: `None` when the outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Ok,
    Listed(BTreeSet<String>),
}

#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub client: usize,
    pub input: Input,
    /// Nanoseconds since the schedule started.
    pub invoke: u64,
    /// `None`: the call never answered (or failed in a way that says
    /// nothing about whether it took effect).
    pub complete: Option<u64>,
    pub outcome: Option<Outcome>,
}

/// The checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history; the operations of the longest
    /// prefix that could be explained, to start reading from.
    NotLinearizable {
        explained: usize,
        total: usize,
    },
    /// The search gave up after its budget of states.
    Undecided,
}

/// The state after `op` took effect in `state`, if the model allows what
/// the operation observed.
fn step(state: &BTreeSet<String>, op: &Op) -> Option<BTreeSet<String>> {
    match (&op.input, &op.outcome) {
        (Input::Commit(tag), Some(Outcome::Ok) | None) => {
            let mut s = state.clone();
            s.insert(tag.clone());
            Some(s)
        }
        (Input::Forget(tag), Some(Outcome::Ok)) => state.contains(tag).then(|| {
            let mut s = state.clone();
            s.remove(tag);
            s
        }),
        (Input::Forget(tag), None) => {
            let mut s = state.clone();
            s.remove(tag);
            Some(s)
        }
        (Input::List, Some(Outcome::Listed(seen))) => (seen == state).then(|| state.clone()),
        _ => None,
    }
}

/// How many search states the checker visits before it gives up.
const BUDGET: usize = 2_000_000;

/// Checks a history. Listings with no outcome say nothing and are dropped.
pub fn check(history: &[Op]) -> Verdict {
    // A commit with an unknown outcome whose tag no listing ever shows and
    // no forget names took effect in no valid order (nothing could have
    // removed it before every later listing), so it is dropped: without
    // this, every refused backup doubles the orders to search.
    let seen: BTreeSet<&String> = history
        .iter()
        .filter_map(|o| match (&o.input, &o.outcome) {
            (Input::List, Some(Outcome::Listed(tags))) => Some(tags.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let forgotten: BTreeSet<&String> = history
        .iter()
        .filter_map(|o| match &o.input {
            Input::Forget(t) => Some(t),
            _ => None,
        })
        .collect();
    let invisible = |o: &Op| match (&o.input, &o.outcome) {
        (Input::Commit(t), None) => !seen.contains(t) && !forgotten.contains(t),
        (Input::List, None) => true,
        _ => false,
    };
    let ops: Vec<&Op> = history.iter().filter(|o| !invisible(o)).collect();
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, BTreeSet<String>)> = HashSet::new();
    // Depth-first over (linearized set, state), as an explicit stack.
    let mut stack: Vec<(Vec<u64>, BTreeSet<String>, usize)> = vec![(vec![0; words], BTreeSet::new(), 0)];
    let mut best = 0;
    let mut visited = 0usize;
    let is_done = |set: &[u64], i: usize| set[i / 64] & (1 << (i % 64)) != 0;
    while let Some((set, state, depth)) = stack.pop() {
        visited += 1;
        if visited > BUDGET {
            return Verdict::Undecided;
        }
        best = best.max(depth);
        // Done when every operation that completed has taken effect; the
        // unknown ones may never have.
        let pending_completed = (0..n).any(|i| !is_done(&set, i) && ops[i].complete.is_some());
        if !pending_completed {
            return Verdict::Linearizable;
        }
        // An operation may go next only if no other remaining operation
        // completed before it was invoked.
        let horizon = (0..n).filter(|&i| !is_done(&set, i)).filter_map(|i| ops[i].complete).min().unwrap_or(u64::MAX);
        for i in (0..n).rev() {
            if is_done(&set, i) || ops[i].invoke > horizon {
                continue;
            }
            if let Some(next) = step(&state, ops[i]) {
                let mut s = set.clone();
                s[i / 64] |= 1 << (i % 64);
                if seen.insert((s.clone(), next.clone())) {
                    stack.push((s, next, depth + 1));
                }
            }
        }
    }
    Verdict::NotLinearizable { explained: best, total: n }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, input: Input, invoke: u64, complete: Option<u64>, outcome: Option<Outcome>) -> Op {
        Op { client, input, invoke, complete, outcome }
    }
    fn commit(c: usize, tag: &str, a: u64, b: u64) -> Op {
        op(c, Input::Commit(tag.into()), a, Some(b), Some(Outcome::Ok))
    }
    fn list(c: usize, tags: &[&str], a: u64, b: u64) -> Op {
        op(c, Input::List, a, Some(b), Some(Outcome::Listed(tags.iter().map(|t| t.to_string()).collect())))
    }
    fn forget(c: usize, tag: &str, a: u64, b: u64) -> Op {
        op(c, Input::Forget(tag.into()), a, Some(b), Some(Outcome::Ok))
    }
    fn lost(c: usize, input: Input, a: u64) -> Op {
        op(c, input, a, None, None)
    }

    #[test]
    fn sequential_and_overlapping_histories_are_linearizable() {
        let h = [commit(0, "a", 0, 10), list(1, &["a"], 20, 30), forget(0, "a", 40, 50), list(1, &[], 60, 70)];
        assert_eq!(check(&h), Verdict::Linearizable);
        // A listing overlapping a commit may see it or not.
        let h = [commit(0, "a", 0, 100), list(1, &[], 10, 20), list(1, &["a"], 30, 40)];
        assert_eq!(check(&h), Verdict::Linearizable);
        // Two concurrent commits, each seen by a listing inside both.
        let h = [commit(0, "a", 0, 100), commit(1, "b", 0, 100), list(2, &["b"], 10, 20), list(2, &["a", "b"], 30, 40)];
        assert_eq!(check(&h), Verdict::Linearizable);
        assert_eq!(check(&[]), Verdict::Linearizable);
    }

    #[test]
    fn unknown_outcomes_may_take_effect_late_or_never() {
        // A commit whose answer was lost shows up in a later listing.
        let h = [lost(0, Input::Commit("a".into()), 0), list(1, &[], 10, 20), list(1, &["a"], 30, 40)];
        assert_eq!(check(&h), Verdict::Linearizable);
        // Or never does.
        let h = [lost(0, Input::Commit("a".into()), 0), list(1, &[], 10, 20), list(1, &[], 30, 40)];
        assert_eq!(check(&h), Verdict::Linearizable);
        // A forget that timed out may have removed the snapshot.
        let h = [commit(0, "a", 0, 5), lost(0, Input::Forget("a".into()), 10), list(1, &[], 30, 40)];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn lost_acknowledged_commits_and_resurrections_are_caught() {
        // An acknowledged commit missing from a later listing: data loss.
        let h = [commit(0, "a", 0, 10), list(1, &[], 20, 30)];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
        // A forgotten snapshot listed again after the forget returned.
        let h = [commit(0, "a", 0, 10), forget(0, "a", 20, 30), list(1, &["a"], 40, 50)];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
        // A listing showing a snapshot nobody committed.
        let h = [list(1, &["ghost"], 0, 10)];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
        // A stale read: seen, then unseen, with no forget.
        let h = [lost(0, Input::Commit("a".into()), 0), list(1, &["a"], 10, 20), list(1, &[], 30, 40)];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
        // A forget acknowledged for a snapshot that was never there.
        let h = [forget(0, "a", 0, 10)];
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn many_refused_commits_that_never_show_do_not_blow_up_the_search() {
        let mut h = vec![commit(0, "kept", 0, 5)];
        for i in 0..200u64 {
            h.push(lost((i % 2) as usize, Input::Commit(format!("refused-{i}")), 10 + i));
        }
        h.push(list(1, &["kept"], 500, 510));
        assert_eq!(check(&h), Verdict::Linearizable);
        // Still caught: an acknowledged commit missing among them.
        h.push(list(1, &[], 600, 610));
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_long_history_of_two_clients_is_checked_quickly() {
        let mut h = Vec::new();
        let mut live: Vec<String> = Vec::new();
        for i in 0..150u64 {
            let t = i * 100;
            let tag = format!("t{i}");
            h.push(commit((i % 2) as usize, &tag, t, t + 60));
            live.push(tag);
            if i % 5 == 4 {
                let gone = live.remove(0);
                h.push(forget(0, &gone, t + 70, t + 80));
            }
            let refs: Vec<&str> = live.iter().map(String::as_str).collect();
            h.push(list(1, &refs, t + 85, t + 95));
        }
        assert_eq!(check(&h), Verdict::Linearizable);
        // Break one listing near the end.
        let last = h.len() - 1;
        h[last] = list(1, &["nonsense"], 150 * 100, 150 * 100 + 5);
        assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    }
}
