//! Default topic names. Every service lets the operator override them.

/// IPP session lifecycle events, keyed by session id.
pub const IPP_EVENTS: &str = "ipp.events";
/// Every other Kustom event that arrives on the webhook endpoint, keyed by event id.
pub const KUSTOM_EVENTS: &str = "kustom.events";
/// Money commands for ipp-actions (capture, refund, cancel, release), keyed by order id.
pub const IPP_COMMANDS: &str = "ipp.commands";
/// What ipp-actions learnt from Order Management (our calls' outcomes, order reads),
/// keyed by order id: the orders read model's source besides the events.
pub const IPP_OBSERVATIONS: &str = "ipp.observations";
/// Records from `ipp.events` the projector could not apply.
pub const IPP_EVENTS_DLQ: &str = "ipp.events.dlq";
/// Actions that exhausted their retries or failed permanently.
pub const IPP_ACTIONS_DLQ: &str = "ipp.actions.dlq";
