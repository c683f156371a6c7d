//! Continuous batching: at every step, running sequences get their next tokens first (a
//! decode token, or the rest of a prefill in chunks under the token budget), then waiting
//! requests join in arrival order while budget, sequence slots and KV blocks last. When
//! a running sequence cannot get a block, the most recently admitted one is preempted:
//! its blocks are freed and it waits at the front of the queue to be recomputed.

use std::collections::VecDeque;

use super::block_pool::BlockPool;
use super::sequence::{RequestId, Sequence};

pub(crate) struct Scheduler {
    pub waiting: VecDeque<Sequence>,
    pub running: Vec<Sequence>,
    pub pool: BlockPool,
    max_num_seqs: usize,
    max_batched_tokens: usize,
    pub preemptions: u64,
}

/// What one step computes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// `(index into running, tokens to compute)`, in batch order.
    pub chunks: Vec<(usize, usize)>,
    /// Blocks to copy before the step (`(from, to)`): copy-on-write of shared blocks.
    pub copies: Vec<(u32, u32)>,
}

impl Scheduler {
    pub fn new(pool: BlockPool, max_num_seqs: usize, max_batched_tokens: usize) -> Self {
        Self { waiting: VecDeque::new(), running: Vec::new(), pool, max_num_seqs, max_batched_tokens, preemptions: 0 }
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.max_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let want = self.running[i].uncomputed().min(budget);
            if reserve(&mut self.pool, &mut self.running[i], want, &mut plan.copies) {
                plan.chunks.push((i, want));
                budget -= want;
                i += 1;
                continue;
            }
            // Out of blocks: free the latest admitted (possibly this very sequence).
            let victim = self.running.len() - 1;
            self.preempt(victim);
        }
        while let Some(next) = self.waiting.front_mut() {
            if budget == 0 || self.running.len() >= self.max_num_seqs {
                break;
            }
            let want = next.uncomputed().min(budget);
            if !reserve(&mut self.pool, next, want, &mut plan.copies) {
                // First come, first served: nobody overtakes the head of the queue.
                break;
            }
            let Some(seq) = self.waiting.pop_front() else { break };
            plan.chunks.push((self.running.len(), want));
            self.running.push(seq);
            budget -= want;
        }
        plan
    }

    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.pool.release_all(&mut seq.blocks);
        seq.computed = 0;
        self.preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// Removes the running sequence at `index`, freeing its blocks.
    pub fn retire(&mut self, index: usize) -> Sequence {
        let mut seq = self.running.remove(index);
        self.pool.release_all(&mut seq.blocks);
        seq
    }

    /// Drops every sequence of `request`; returns whether there was any.
    pub fn abort(&mut self, request: RequestId) -> bool {
        let before = self.running.len() + self.waiting.len();
        let pool = &mut self.pool;
        let mut keep = |seq: &mut Sequence| {
            if seq.request != request {
                return true;
            }
            pool.release_all(&mut seq.blocks);
            false
        };
        self.running.retain_mut(&mut keep);
        self.waiting.retain_mut(&mut keep);
        before != self.running.len() + self.waiting.len()
    }
}

/// Gives `seq` the blocks to write `want` more tokens, copying any shared block it will
/// write into; changes nothing and returns `false` if the pool cannot cover it.
fn reserve(pool: &mut BlockPool, seq: &mut Sequence, want: usize, copies: &mut Vec<(u32, u32)>) -> bool {
    let end = seq.computed + want;
    let first_written = seq.computed / pool.block_size();
    let shared: Vec<usize> = (first_written..seq.blocks.len().min(pool.blocks_for(end))).filter(|&b| pool.is_shared(seq.blocks[b])).collect();
    let fresh = pool.blocks_for(end).saturating_sub(seq.blocks.len());
    if pool.num_free() < fresh + shared.len() {
        return false;
    }
    for b in shared {
        let Some(copy) = pool.allocate() else { return false };
        copies.push((seq.blocks[b], copy));
        pool.release(seq.blocks[b]);
        seq.blocks[b] = copy;
    }
    for _ in 0..fresh {
        let Some(block) = pool.allocate() else { return false };
        seq.blocks.push(block);
    }
    true
}
