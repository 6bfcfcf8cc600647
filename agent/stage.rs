//! The stages between assembly and the sink. Every exchange, whatever produced it (a log stream,
//! tap, capture), passes through them in order before any sink sees it: Kubernetes enrichment,
//! then the capture policy, body decoding and redaction, as configured.

use std::collections::BTreeMap;

use crate::config::{Config, ConfigError};
use crate::record::Exchange;

/// Every `reason` a stage may drop an exchange for, created at zero in the metrics up front.
pub const DROP_REASONS: [&str; 4] = [
    crate::policy::DROP_POLICY,
    crate::policy::DROP_SAMPLED,
    crate::policy::DROP_RATE_LIMITED,
    crate::k8s::enrich::NOT_SELECTED,
];

/// What a stage decided about an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on (possibly changed).
    Keep,
    /// Deliver nothing; the reason is the `reason` label of `meshtap_exchanges_dropped_total`.
    Drop(&'static str),
}

/// One step of the chain. Stages run on the reader thread: they must be cheap and never block.
pub trait Stage: Send {
    fn process(&mut self, exchange: &mut Exchange) -> Verdict;
}

/// The chain of stages, run in the order they were pushed.
#[derive(Default)]
pub struct Stages {
    stages: Vec<Box<dyn Stage>>,
    dropped: BTreeMap<&'static str, u64>,
}

impl Stages {
    /// The stages the configuration asks for (Kubernetes enrichment is added by `meshtap run`,
    /// which owns the API connection): the policy, body decoding, then redaction, which must come
    /// last so no sink ever sees a secret.
    pub fn from_config(config: &Config) -> Result<Stages, ConfigError> {
        let mut stages = Stages::default();
        // No rules and no limits: the policy changes nothing, so it costs nothing.
        if !config.policy.is_empty() {
            let policy = crate::policy::PolicyStage::new(&config.policy).map_err(|e| {
                ConfigError::Invalid {
                    path: "(policy)".to_string(),
                    message: e.to_string(),
                }
            })?;
            stages.push(policy);
        }
        if config.decoding.enabled {
            stages.push(crate::content::Decoding::new(config.decoding.clone()));
        }
        if config.redaction.enabled {
            let redaction = config
                .redaction
                .compile()
                .map_err(|message| ConfigError::Invalid {
                    path: "redaction".to_string(),
                    message,
                })?;
            stages.push(redaction);
        }
        Ok(stages)
    }

    /// Appends a stage at the end of the chain.
    pub fn push(&mut self, stage: impl Stage + 'static) {
        self.stages.push(Box::new(stage));
    }

    /// Puts a stage at the front of the chain (enrichment must run before policy matches labels).
    pub fn push_front(&mut self, stage: impl Stage + 'static) {
        self.stages.insert(0, Box::new(stage));
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Runs `exchange` through every stage: the exchange to deliver, or the reason it was dropped.
    pub fn run(&mut self, mut exchange: Exchange) -> Result<Exchange, &'static str> {
        for stage in &mut self.stages {
            if let Verdict::Drop(reason) = stage.process(&mut exchange) {
                *self.dropped.entry(reason).or_default() += 1;
                return Err(reason);
            }
        }
        Ok(exchange)
    }

    /// Exchanges dropped so far, by reason.
    pub fn dropped(&self) -> &BTreeMap<&'static str, u64> {
        &self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tag(&'static str);
    impl Stage for Tag {
        fn process(&mut self, exchange: &mut Exchange) -> Verdict {
            exchange.warn(self.0);
            Verdict::Keep
        }
    }
    struct DropIfTagged;
    impl Stage for DropIfTagged {
        fn process(&mut self, exchange: &mut Exchange) -> Verdict {
            if exchange.warnings.iter().any(|w| w == "b") {
                Verdict::Drop("test")
            } else {
                Verdict::Keep
            }
        }
    }

    #[test]
    fn stages_run_in_order_and_count_drops() {
        let exchange = crate::sink::stdout::tests::exchange("x", "body");
        let mut stages = Stages::default();
        assert!(stages.is_empty());
        stages.push(DropIfTagged);
        stages.push(Tag("b"));
        stages.push_front(Tag("a"));
        let kept = stages.run(exchange.clone()).unwrap();
        assert_eq!(kept.warnings, ["a", "b"], "front first, then in push order");

        let mut stages = Stages::default();
        stages.push(Tag("b"));
        stages.push(DropIfTagged);
        stages.push(Tag("never"));
        assert_eq!(stages.run(exchange.clone()), Err("test"));
        assert_eq!(stages.run(exchange), Err("test"));
        assert_eq!(stages.dropped().get("test"), Some(&2));
    }
}
