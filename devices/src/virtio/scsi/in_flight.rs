//! The controller's commands whose disk I/O is in flight, in a slab: each
//! command gets a slot when it is submitted, its completion carries the slot
//! number, and finishing the command takes the entry back out by index (no
//! search, no map). Freed slots are reused most recent first.
//!
//! Owns: the table and the per-command state a completion needs; the
//! controller (`device.rs`) decides what goes in and what happens on removal.

use super::request::GuestRange;
use super::sense::Sense;

/// A command whose disk I/O is in flight.
pub(super) struct InFlight {
    pub queue: usize,
    pub head: u16,
    /// The chain's device-writable part (response header first).
    pub writable: Vec<GuestRange>,
    /// Bytes of data-in / data-out buffer the driver supplied.
    pub buffer_len: u64,
    /// Bytes the command moves (read into data-in when `is_read`).
    pub transfer: u64,
    pub is_read: bool,
    pub error_sense: Sense,
    /// Counted in the controller's per-queue slow count.
    pub slow: bool,
    /// Submission order, for task management (ABORT TASK waits for the
    /// requests submitted before it).
    pub seq: u64,
    /// The controller's epoch at submission: completions of an older epoch
    /// leave the rings alone.
    pub epoch: u64,
    /// For ABORT TASK / QUERY TASK.
    pub lun_index: usize,
    pub tag: u64,
}

/// Names a command's entry in an [`InFlightTable`] while it is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot(usize);

/// Commands in flight by [`Slot`].
#[derive(Default)]
pub(super) struct InFlightTable {
    slots: Vec<Option<InFlight>>,
    /// Empty slots, the most recently freed last.
    free: Vec<usize>,
    len: usize,
}

impl InFlightTable {
    /// Stores `entry`; its slot stays taken until [`InFlightTable::remove`].
    pub fn insert(&mut self, entry: InFlight) -> Slot {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(entry);
                Slot(index)
            }
            None => {
                self.slots.push(Some(entry));
                Slot(self.slots.len() - 1)
            }
        }
    }

    /// Takes the entry of `slot` out; `None` if the slot is empty.
    pub fn remove(&mut self, slot: Slot) -> Option<InFlight> {
        let entry = self.slots.get_mut(slot.0)?.take()?;
        self.free.push(slot.0);
        self.len -= 1;
        Some(entry)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &InFlight> {
        self.slots.iter().flatten()
    }

    /// The smallest sequence number in flight (a scan: only task management
    /// asks).
    pub fn oldest_seq(&self) -> Option<u64> {
        self.iter().map(|entry| entry.seq).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, tag: u64) -> InFlight {
        InFlight {
            queue: 2,
            head: 0,
            writable: Vec::new(),
            buffer_len: 0,
            transfer: 0,
            is_read: true,
            error_sense: Sense::READ_ERROR,
            slow: false,
            seq,
            epoch: 0,
            lun_index: 0,
            tag,
        }
    }

    #[test]
    fn removed_slots_are_reused_and_empty_slots_give_none() {
        let mut table = InFlightTable::default();
        let a = table.insert(entry(0, 10));
        let b = table.insert(entry(1, 11));
        assert_eq!(table.len(), 2);

        assert_eq!(table.remove(a).map(|e| e.tag), Some(10));
        assert!(table.remove(a).is_none(), "a slot is freed once");
        let c = table.insert(entry(2, 12));

        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove(b).map(|e| e.tag), Some(11));
        assert_eq!(table.remove(c).map(|e| e.tag), Some(12));
        assert!(table.is_empty());
        assert!(table.remove(Slot(99)).is_none());
    }

    #[test]
    fn oldest_seq_is_the_minimum_whatever_the_slot_order() {
        let mut table = InFlightTable::default();
        assert_eq!(table.oldest_seq(), None);
        let first = table.insert(entry(5, 0));
        table.insert(entry(6, 0));
        table.remove(first);
        table.insert(entry(9, 0));

        assert_eq!(table.oldest_seq(), Some(6));
        assert_eq!(table.iter().count(), 2);
    }
}
