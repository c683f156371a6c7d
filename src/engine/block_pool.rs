//! Bookkeeping for the paged KV pool: which blocks are free and how many sequences hold
//! each one. Sequences forked from one prompt share its blocks (reference counts) and
//! copy a shared block only when they are about to write into it.

#[derive(Debug)]
pub struct BlockPool {
    free: Vec<u32>,
    refs: Vec<u32>,
    block_size: usize,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Reversed so blocks are handed out from 0 upwards.
        Self { free: (0..num_blocks as u32).rev().collect(), refs: vec![0; num_blocks], block_size }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Blocks needed to hold `positions` tokens.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// A fresh block held once, or `None` when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = self.free.pop()?;
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// One more holder of `block` (a forked sequence).
    pub fn share(&mut self, block: u32) {
        self.refs[block as usize] += 1;
    }

    pub fn is_shared(&self, block: u32) -> bool {
        self.refs[block as usize] > 1
    }

    /// Drops one hold; the block is free again once nobody holds it.
    pub fn release(&mut self, block: u32) {
        let refs = &mut self.refs[block as usize];
        debug_assert!(*refs > 0, "block {block} released more often than held");
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.free.push(block);
        }
    }

    pub fn release_all(&mut self, blocks: &mut Vec<u32>) {
        for block in blocks.drain(..) {
            self.release(block);
        }
    }
}
