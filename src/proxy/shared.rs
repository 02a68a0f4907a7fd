//! Drains that reach every proxy: with a shared registry, an operator's
//! `dispatcher.set_state` on one instance is published there and applied
//! by the others (`dialog::registry` carries it). Health from probes stays
//! each instance's own: only the operator's commands travel.

use super::Proxy;
use crate::dialog::registry::SharedState;
use crate::dispatcher::health::{SetState, State, Status};

/// The command text `dispatcher.set_state` takes for `cmd` (`d`, `ap`).
pub(super) fn command_text(cmd: SetState) -> String {
    let mut text = cmd.state.letter().to_ascii_lowercase().to_string();
    if cmd.probing == Some(true) {
        text.push('p');
    }
    text
}

/// Whether a state read back from the registry (decided while this
/// instance was away, or before it started) is applied over `local`: only
/// the operator's own decision, disabled or not, is; active, trying and
/// inactive are what this instance's probes say.
fn catch_up(stored: SetState, local: Status) -> bool {
    (stored.state == State::Disabled) != (local.state == State::Disabled)
}

impl Proxy {
    /// Shares the operator's `cmd` on destination `uri` of `set` with the
    /// other instances (nothing without a registry).
    pub(super) fn publish_state(&self, set: u32, uri: &str, cmd: SetState) {
        if let Some(registry) = self.tables.dialogs.registry() {
            registry.publish_state(set, uri, &command_text(cmd));
        }
    }

    /// Every destination of every set, for the listener's catch-up.
    pub(super) fn shared_destinations(&self) -> Vec<(u32, String)> {
        let pool = self.pool();
        pool.sets()
            .flat_map(|(set, d, _)| (0..d.len()).map(move |i| (set, d.uri(i).to_owned())))
            .collect()
    }

    /// Another instance's state change: applied like the RPC would be
    /// here (a live one), or when it is the operator's drain or undrain
    /// (one read back). Unknown sets, destinations and states are logged
    /// and left alone: the instances' configs may differ for a while.
    pub(super) fn apply_shared_state(&self, change: SharedState) {
        let Ok(cmd) = SetState::parse(&change.state) else {
            tracing::warn!(
                "shared state {:?} for {} is not a set_state command: ignored",
                change.state,
                change.uri
            );
            return;
        };
        let pool = self.pool();
        let found = pool.sets().find_map(|(set, d, _)| {
            let i = (set == change.set)
                .then(|| (0..d.len()).find(|&i| d.uri(i).eq_ignore_ascii_case(&change.uri)))??;
            Some((d, i))
        });
        let Some((d, i)) = found else {
            tracing::debug!(set = change.set, uri = %change.uri, "shared state for a destination not here");
            return;
        };
        if change.live || catch_up(cmd, d.status(i)) {
            tracing::info!(
                "dispatcher.set_state {} {} {} from another instance",
                change.state,
                change.set,
                change.uri
            );
            d.set_state(i, cmd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> SetState {
        SetState::parse(s).unwrap()
    }

    #[test]
    fn commands_round_trip_as_text() {
        for s in ["a", "ap", "i", "ip", "t", "tp", "d", "dp"] {
            assert_eq!(command_text(cmd(s)), s);
        }
    }

    #[test]
    fn only_the_operator_s_drain_or_undrain_is_caught_up() {
        let status = |state| Status {
            state,
            probing: true,
        };
        assert!(catch_up(cmd("d"), status(State::Active)));
        assert!(catch_up(cmd("d"), status(State::Inactive)));
        assert!(!catch_up(cmd("d"), status(State::Disabled)));
        assert!(catch_up(cmd("ap"), status(State::Disabled)));
        assert!(
            !catch_up(cmd("ip"), status(State::Active)),
            "probes own the health"
        );
        assert!(!catch_up(cmd("ap"), status(State::Inactive)));
    }
}
