//! The projector's Kafka side: the group consumer that feeds the apply engine
//! ([`consumer`]) with the records it copies out of librdkafka ([`consumed`]), its
//! rebalance callback ([`rebalance`]), the assign-only reader of
//! the one-shot commands ([`reader`]), and what the dead-letter topic holds
//! ([`parked`], for `rebuild`).
//!
//! Offset strategy: PostgreSQL is the source of truth for consumed offsets. Each batch
//! runs in one transaction that (1) locks the rows of `ipp_projector_offsets` for the
//! batch's partitions, (2) skips every record below the stored `next_offset` of its
//! partition, (3) stores the events and refolds their sessions, (4) moves `next_offset`
//! past the batch, (5) parks poison records in the dead-letter topic and waits for the
//! broker's acknowledgement; then it commits. A crash anywhere before the commit leaves
//! read models and offsets as they were, so the batch is replayed whole; a crash
//! between (5) and the commit may park the same poison record twice, never zero times.
//!
//! Where consumption starts: the rebalance callback is synchronous and must not block,
//! so it never queries PostgreSQL. It assigns each partition at the offset in an
//! in-memory copy of `ipp_projector_offsets` (loaded at startup, refreshed after every
//! commit and while idle), or from the beginning when none is stored. That copy can
//! only lag behind the table, never lead it, so the worst case is re-reading records
//! that step (2) then skips: nothing is applied twice and nothing is skipped. The lock
//! in step (1) also serializes two consumers that briefly hold the same partition
//! during a rebalance. The offsets are also given to Kafka, committed once a second,
//! for monitoring tools (lag dashboards), but are never read.

pub mod consumed;
pub mod consumer;
pub mod parked;
pub mod reader;
mod rebalance;
