//! Fair turns at metad's database work: requests run a few at a time, and when they queue,
//! connections take turns, one request each. A client that floods requests over many
//! connections then waits behind its own requests, not the others': someone else's request
//! waits for at most one turn per flooding connection instead of for everything they sent.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use shardfs_rpc::sync::Lock as _;
use tokio::sync::oneshot;

/// Requests that run at once, before connections queue for turns.
pub fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(4, |n| 2 * n.get()).max(4)
}

pub struct FairGate {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Slots not in use (only while nobody waits).
    free: usize,
    /// Waiting requests, by connection.
    waiting: HashMap<SocketAddr, VecDeque<oneshot::Sender<Turn>>>,
    /// Connections with waiting requests, in the order they get their next turn.
    ring: VecDeque<SocketAddr>,
}

/// One slot, held while a request runs; dropping it hands the slot to the next connection.
pub struct Turn {
    /// `None` for a turn nobody took, which has nothing to hand on.
    state: Option<Arc<Mutex<State>>>,
}

impl FairGate {
    pub fn new(slots: usize) -> FairGate {
        FairGate { state: Arc::new(Mutex::new(State { free: slots, ..State::default() })) }
    }

    /// Waits for a turn for a request from `peer`.
    pub async fn enter(&self, peer: SocketAddr) -> Turn {
        let waiting = {
            let mut state = lock(&self.state);
            if state.free > 0 {
                state.free -= 1;
                return Turn { state: Some(self.state.clone()) };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(peer).or_default();
            if queue.is_empty() {
                state.ring.push_back(peer);
            }
            state.waiting.get_mut(&peer).expect("just inserted").push_back(tx);
            rx
        };
        // The sender is only dropped with the gate, which outlives the requests using it.
        waiting.await.expect("the gate hands every waiter a turn")
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(shared) = self.state.take() else { return };
        let mut state = lock(&shared);
        while let Some(peer) = state.ring.pop_front() {
            let queue = state.waiting.get_mut(&peer).expect("a ring entry has waiters");
            let next = queue.pop_front().expect("a ring entry has waiters");
            if queue.is_empty() {
                state.waiting.remove(&peer);
            } else {
                state.ring.push_back(peer);
            }
            // A waiter that gave up (its request was dropped) passes the slot on.
            match next.send(Turn { state: Some(shared.clone()) }) {
                Ok(()) => return,
                Err(mut untaken) => untaken.state = None,
            }
        }
        state.free += 1;
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.locked()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn connections_take_turns_one_request_each() {
        let gate = Arc::new(FairGate::new(1));
        let running = gate.enter(peer(1)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Connection 1 queues five requests before connection 2 queues one.
        for (port, n) in [(1, 5), (2, 1)] {
            for _ in 0..n {
                let (gate, order) = (gate.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let _turn = gate.enter(peer(port)).await;
                    order.locked().push(port);
                }));
                tokio::task::yield_now().await;
            }
        }
        drop(running);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.locked(), [1, 2, 1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_turn_on() {
        let gate = Arc::new(FairGate::new(1));
        let running = gate.enter(peer(1)).await;
        let abandoned = tokio::spawn({
            let gate = gate.clone();
            async move { drop(gate.enter(peer(2)).await) }
        });
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { drop(gate.enter(peer(3)).await) }
        });
        tokio::task::yield_now().await;
        drop(running);
        next.await.unwrap();
        // The slot came back: the gate is free again.
        drop(gate.enter(peer(4)).await);
    }
}
