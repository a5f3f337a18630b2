//! The orders read model (decision 0019): `ipp_order_facts`, `ipp_order_operations` and
//! `ipp_order_disputes`, merged from `ipp.events`, `kustom.events` and
//! `ipp.observations` by a consumer group of its own, and the `ipp_orders` view that
//! adds each order's amounts and reconciliation state.
//!
//! `facts` (what a record says) ← `store` (how facts merge) ← `consumer`, `report`.

mod consumer;
pub mod facts;
pub mod report;
pub(crate) mod store;

use std::time::Duration;

pub use consumer::OrdersProjector;

/// What the orders projection reads and how it judges, from the projector's `Config`.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    pub group: String,
    pub ipp_topic: String,
    pub kustom_topic: String,
    pub observations_topic: String,
    pub confirmation_timeout: Duration,
}

impl OrdersConfig {
    /// The three topics the model is built from.
    pub fn topics(&self) -> [&str; 3] {
        [
            &self.ipp_topic,
            &self.kustom_topic,
            &self.observations_topic,
        ]
    }

    /// Which source a record of `topic` is.
    pub fn source(&self, topic: &str) -> facts::Source {
        if topic == self.kustom_topic {
            facts::Source::Kustom
        } else if topic == self.observations_topic {
            facts::Source::Observations
        } else {
            facts::Source::Ipp
        }
    }

    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            group: config.orders_group.clone(),
            ipp_topic: config.ipp_topic.clone(),
            kustom_topic: config.kustom_topic.clone(),
            observations_topic: config.observations_topic.clone(),
            confirmation_timeout: Duration::from_secs(config.orders_confirmation_timeout_secs),
        }
    }
}
