//! Per-destination health: the state machine that OPTIONS probes and call
//! failures feed, with Kamailio `dispatcher`'s state names, FLAGS strings,
//! list-file bits and `dispatcher.set_state` argument.
//!
//! Pure logic: no sockets, no timers, no clock reads, and no allocation
//! except in the operator- and config-facing parse errors. [`Health`] is the plain machine (`&mut self`); [`SharedHealth`]
//! wraps it for the proxy's tasks behind a `std` mutex, with lock-free reads
//! for the per-call hot path.
//!
//! # States (Kamailio's)
//! | state      | FLAGS | new calls | left by                                        |
//! |------------|-------|-----------|------------------------------------------------|
//! | `Active`   | `A`   | yes       | a failure                                      |
//! | `Trying`   | `T`   | yes       | a success (up) or `failure_threshold` failures (down) |
//! | `Inactive` | `I`   | no        | `success_threshold` consecutive probe successes |
//! | `Disabled` | `D`   | no        | an operator only (`set_state`)                 |
//!
//! The second FLAGS letter is `P` when the destination is probed, else `X`.
//!
//! Trying still takes new calls because Kamailio's `ds_select_dst` skips only
//! inactive and disabled destinations (`ds_skip_dst` tests just those two
//! bits): trying means "failed lately, not yet given up on". Disabled is
//! drain: no new calls, but the dialogs already on the node continue (the
//! dialog table pins them, it never asks this module).
//!
//! # What feeds it
//! - **Probes** ([`Health::record_probe`]): a reply whose code is in
//!   [`ReplyCodes`] is a success; any other reply, a timeout or a transport
//!   error is a failure. A timeout is never a reply: Kamailio's transaction
//!   layer turns it into a local 408, so `ds_ping_reply_codes` with 408 (or
//!   class 4) would keep a dead node up; here a timeout is its own variant
//!   and cannot match a code.
//! - **Call failures** ([`Health::record_call_failure`], Kamailio
//!   `ds_mark_dst("ip")` in a failure route, as the usual dispatcher
//!   configs do): a timeout or transport error takes the node out at once
//!   (inactive); `failure_threshold` counts probe failures only. The
//!   outcome says "probe now" so the node is probed at once, not at the
//!   next interval, and comes back as soon as it answers.
//! - **ICMP errors** ([`Failure::Unreachable`] as a call failure) are
//!   evidence, not proof: anyone can forge one. An ICMP error makes an
//!   Active node *suspect* (Trying, still taking calls) and asks for a
//!   probe; it never takes a node down by itself, however many come. A
//!   failure of another kind while suspect confirms it (a probe that times
//!   out or is refused: down at once, whatever `failure_threshold`; a call
//!   timeout takes a node down anyway); any success clears it. Under a
//!   mode that does not probe the node, only a call failure of another
//!   kind can confirm.
//! - **Call replies** ([`Health::record_call_reply`]): any reply to a call
//!   shows the node's SIP stack answers. It ends a failure streak (Trying →
//!   Active) but never re-activates an Inactive node. Kamailio does not look
//!   at call replies at all unless the script calls `ds_mark_dst("a")`;
//!   sipedge until now cleared its "suspect" mark on any answer. The middle
//!   ground keeps what "suspect" was for (one timeout does not linger) while
//!   leaving "down → up" to probes, as in Kamailio: an Inactive node gets no
//!   new calls, so its replies belong to old dialogs and say little about
//!   taking new ones. Consequence: an Inactive node with probing off stays
//!   down until an operator sets it active, exactly as in Kamailio.
//! - **The operator** ([`Health::set_state`], `dispatcher.set_state`).
//!
//! # Probing
//! Which destinations get OPTIONS is Kamailio's `ds_probing_mode`
//! ([`ProbingMode`], `[probe] mode`):
//! - `0`: those with the probing flag, until one answers: an accepted
//!   reply clears the flag (Kamailio's "probe until reachable").
//! - `1` (sipedge's default): every destination, always, whatever its
//!   flag; results set the flag, as Kamailio's do in this mode.
//! - `2`: flagged destinations only while inactive; an accepted reply that
//!   brings one back clears the flag, and a call failure sets it (what
//!   Kamailio configs do with `ds_mark_dst("ip")` in this mode), so a node
//!   that calls took out is probed until it is back.
//! - `3`: flagged destinations, continuously; results never touch the flag.
//!
//! A result that arrives when the destination is no longer probed (an
//! operator switched probing off) is ignored. Passive failures count
//! whether or not probing is on. Unlike Kamailio (which skips disabled
//! destinations when pinging), a Disabled node that is probed under its
//! mode still gets OPTIONS (the prober's logs and metrics then show whether
//! a drained node answers before an operator enables it); the results
//! change neither Disabled nor any count.
//!
//! A node out of rotation (Inactive) that is not probed under its mode is
//! *stranded*: nothing but an operator (or a reply on one of the dialogs it
//! still has) brings it back. [`Health::stranded`] says so, a call failure
//! that strands a node says so in its outcome, and the proxy logs it and
//! exports it as a gauge, so it is never left down silently.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::value::LogDuration;

/// Consecutive failures that take a destination down (Kamailio
/// `ds_probing_threshold`, whose own default is 1).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// Consecutive probe successes that bring an Inactive destination back
/// (Kamailio `ds_inactive_threshold`).
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;

/// A destination's state, as Kamailio names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Active,
    /// Failing, but fewer than `failure_threshold` times in a row.
    Trying,
    /// Down: `failure_threshold` consecutive failures, or set so.
    Inactive,
    /// Taken out by an operator; only an operator brings it back.
    Disabled,
}

impl State {
    /// Every state, in declaration order (`State as usize` indexes it).
    pub const ALL: &'static [State] = &[
        State::Active,
        State::Trying,
        State::Inactive,
        State::Disabled,
    ];

    /// The lower-case name: logs, `sipedge ctl`, the metrics' `state`
    /// label.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Trying => "trying",
            State::Inactive => "inactive",
            State::Disabled => "disabled",
        }
    }

    /// Whether the dispatcher may pick this destination for a new call.
    /// Kamailio's `ds_skip_dst` skips exactly inactive and disabled.
    pub fn accepts_new_calls(self) -> bool {
        matches!(self, State::Active | State::Trying)
    }

    /// The first FLAGS letter.
    pub fn letter(self) -> char {
        char::from(FLAGS[self as usize][0].as_bytes()[0])
    }

    /// The state a first FLAGS letter names (`A`, `T`, `I`, `D`).
    pub fn from_letter(letter: char) -> Option<State> {
        State::ALL.iter().copied().find(|s| s.letter() == letter)
    }

    /// Its bit in a `dispatcher.list` flags column (none for active).
    fn list_bit(self) -> Flags {
        match self {
            State::Active => Flags(0),
            State::Trying => Flags::TRYING,
            State::Inactive => Flags::INACTIVE,
            State::Disabled => Flags::DISABLED,
        }
    }

    /// The word a log line starts with when this state is entered.
    fn verb(self) -> &'static str {
        match self {
            State::Active => "up",
            State::Trying => "trying",
            State::Inactive => "down",
            State::Disabled => "disabled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State plus the probing flag: everything `dispatcher.list` shows and a
/// list file's flags column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    pub state: State,
    pub probing: bool,
}

impl Status {
    /// Active and probed: what a destination without flags should be in a
    /// pool that is health-checked.
    pub const ACTIVE_PROBING: Status = Status {
        state: State::Active,
        probing: true,
    };

    /// From a `dispatcher.list` flags column (1 inactive, 2 trying,
    /// 4 disabled, 8 probing). When several state bits are set, disabled
    /// wins, then inactive, then trying: that is how Kamailio *behaves* with
    /// such an entry (a disabled one is neither pinged nor updated by probe
    /// results, an inactive one stays inactive on failures), although its
    /// `dispatcher.list` RPC prints `I` before `D` (see
    /// [`Status::as_kamailio_prints`]). Other bits (Kamailio's 16 and up:
    /// DNS and ping options) are not health and are ignored here; the list
    /// reader decides whether it accepts them.
    pub fn from_list_flags(flags: u32) -> Status {
        Status::from_bits(
            Flags(flags),
            [State::Disabled, State::Inactive, State::Trying],
        )
    }

    /// What Kamailio's `dispatcher.list` RPC prints for a flags column: the
    /// same as [`Status::from_list_flags`] but for the precedence of
    /// several state bits, which is inactive, then disabled, then trying
    /// there (`ds_rpc_print_set` tests the bits in that order).
    pub fn as_kamailio_prints(flags: u32) -> Status {
        Status::from_bits(
            Flags(flags),
            [State::Inactive, State::Disabled, State::Trying],
        )
    }

    /// The first state of `precedence` whose bit is set, else active.
    fn from_bits(flags: Flags, precedence: [State; 3]) -> Status {
        let state = precedence
            .into_iter()
            .find(|s| flags.contains(s.list_bit()))
            .unwrap_or(State::Active);
        Status {
            state,
            probing: flags.is_probing(),
        }
    }

    /// The `dispatcher.list` flags column for this status: exactly one
    /// state bit (none for active) plus 8 when probing.
    pub fn to_list_flags(self) -> u32 {
        let probing = if self.probing {
            Flags::PROBING
        } else {
            Flags(0)
        };
        self.state.list_bit().bits() | probing.bits()
    }

    /// The FLAGS string of `dispatcher.list` output, e.g. `AP` or `IX`.
    pub fn flags(self) -> FlagsStr {
        FlagsStr(FLAGS[self.state as usize][usize::from(self.probing)])
    }
}

/// The FLAGS strings by [`State`] (declaration order), then probing: the
/// one table of Kamailio's letters.
const FLAGS: [[&str; 2]; 4] = [["AX", "AP"], ["TX", "TP"], ["IX", "IP"], ["DX", "DP"]];

/// Kamailio's two-letter FLAGS: state (`A`/`T`/`I`/`D`), then `P` (probing)
/// or `X`. Copy, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlagsStr(&'static str);

impl FlagsStr {
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for FlagsStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Why a probe or a call counts against a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No reply within the given time (the caller's timer; shown in logs).
    Timeout(Duration),
    /// The request could not be sent.
    TransportError,
    /// An ICMP error (port or host unreachable) came back for something
    /// sent to the node, a call or a probe.
    Unreachable,
    /// A probe reply whose code is not in [`ReplyCodes`].
    BadCode(u16),
}

impl Failure {
    fn same_kind(self, other: Failure) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }

    /// The plural used for a streak of this kind, e.g. "timeouts (2s)".
    fn fmt_plural(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(d) => write!(f, "timeouts ({})", LogDuration(d)),
            Failure::TransportError => f.write_str("transport errors"),
            Failure::Unreachable => f.write_str("ICMP unreachables"),
            Failure::BadCode(code) => write!(f, "unaccepted replies (last {code})"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Failure::Timeout(d) => write!(f, "timeout ({})", LogDuration(d)),
            Failure::TransportError => f.write_str("transport error"),
            Failure::Unreachable => f.write_str("ICMP unreachable"),
            Failure::BadCode(code) => write!(f, "reply {code} not accepted"),
        }
    }
}

/// How one OPTIONS probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    /// A final reply from the node with this status code.
    Reply(u16),
    /// No final reply within the given time. Never treated as a code.
    Timeout(Duration),
    /// Sending failed, or an ICMP error came back.
    TransportError,
}

/// Why a [`Transition`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `count` consecutive failures, the last one `last`; `mixed` if they
    /// were not all of the same kind.
    Failures {
        count: u32,
        last: Failure,
        mixed: bool,
    },
    /// `count` consecutive accepted probe replies, the last with `last_code`.
    ProbeReplies { count: u32, last_code: u16 },
    /// A call got a reply from the node.
    CallReply { code: u16 },
    /// A call to the node timed out or failed at the transport level (or,
    /// for [`Failure::Unreachable`], an ICMP error made it suspect).
    CallFailure(Failure),
    /// A probe failed this way while an ICMP error had the node suspect.
    IcmpConfirmed(Failure),
    /// `dispatcher.set_state`.
    Operator,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Failures { count, last, .. } if count <= 1 => write!(f, "{last}"),
            Reason::Failures {
                count,
                last,
                mixed: false,
            } => {
                write!(f, "{count} consecutive ")?;
                last.fmt_plural(f)
            }
            Reason::Failures {
                count,
                last,
                mixed: true,
            } => write!(f, "{count} consecutive failures (last: {last})"),
            Reason::ProbeReplies { count, last_code } if count <= 1 => {
                write!(f, "probe answered {last_code}")
            }
            Reason::ProbeReplies { count, last_code } => {
                write!(f, "{count} consecutive probe replies (last {last_code})")
            }
            Reason::CallReply { code } => write!(f, "call reply {code}"),
            // Not only calls draw an ICMP error: say what it was.
            Reason::CallFailure(Failure::Unreachable) => {
                f.write_str("ICMP unreachable, suspect until a probe answers")
            }
            Reason::IcmpConfirmed(failure) => {
                write!(f, "ICMP unreachable, confirmed by a probe: {failure}")
            }
            Reason::CallFailure(failure) => write!(f, "call failed: {failure}"),
            Reason::Operator => f.write_str("set by operator"),
        }
    }
}

/// A state change. Its `Display` is the log line after the destination's
/// URI, e.g. `down: 3 consecutive timeouts (2s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    /// `failure_threshold` at the time, so a move to Trying can say how far
    /// the node is from down.
    failure_threshold: u32,
    /// Into or out of an ICMP suspicion with no other failure involved.
    icmp_only: bool,
}

impl Transition {
    /// Only an ICMP suspicion raised or cleared, nothing confirmed: what
    /// forged errors cause with every call, so the proxy logs it at debug
    /// level (the state metric still shows it).
    pub fn icmp_only(&self) -> bool {
        self.icmp_only
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.to.verb(), self.reason)?;
        if let (State::Trying, Reason::Failures { count, .. }) = (self.to, self.reason) {
            write!(
                f,
                ", {count} of {} failures before down",
                self.failure_threshold
            )?;
        }
        Ok(())
    }
}

/// What recording a call failure produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct CallFailureOutcome {
    pub transition: Option<Transition>,
    /// Send an OPTIONS probe to this node now rather than at the next
    /// interval. Set only when probing is on, the node is not Disabled, and
    /// no urgent probe is already outstanding (one asked for since the last
    /// probe result was recorded), so a burst of failing calls yields one
    /// probe. A lost urgent probe is made good by the next periodic one,
    /// whose result re-arms the signal.
    pub probe_now: bool,
    /// The failure just took the node out and it is not probed (see
    /// [`Health::stranded`]): the operator must be told.
    pub stranded: bool,
}

/// One entry of the `reply_codes` setting: a single code (`403`) or a
/// class (`"2xx"`), like Kamailio's `code=403` and `class=2`. Read
/// straight from the config: a TOML number, or a string of exactly three
/// digits or a digit and `xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "ReplyCodeText")]
pub enum ReplyCode {
    Code(u16),
    /// The hundreds digit: `Class(2)` is 200–299.
    Class(u8),
}

impl ReplyCode {
    /// The ranges Kamailio accepts: codes 100–699, classes 1–6.
    fn validate(self) -> Result<ReplyCode, ReplyCodesError> {
        match self {
            ReplyCode::Code(code) if !(100..=699).contains(&code) => {
                Err(ReplyCodesError::CodeOutOfRange(code))
            }
            ReplyCode::Class(class) if !(1..=6).contains(&class) => {
                Err(ReplyCodesError::ClassOutOfRange(class))
            }
            spec => Ok(spec),
        }
    }

    /// Does a reply with `code` match this entry?
    pub fn matches(self, code: u16) -> bool {
        match self {
            ReplyCode::Code(c) => c == code,
            ReplyCode::Class(d) => code / 100 == u16::from(d),
        }
    }
}

impl FromStr for ReplyCode {
    type Err = ReplyCodesError;

    /// `"403"` (exactly three digits) or `"2xx"` (`x` in either case);
    /// surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<ReplyCode, ReplyCodesError> {
        let syntax = || ReplyCodesError::Syntax(s.to_owned());
        let t = s.trim();
        let spec = match t.as_bytes() {
            [d, x1, x2]
                if d.is_ascii_digit()
                    && x1.eq_ignore_ascii_case(&b'x')
                    && x2.eq_ignore_ascii_case(&b'x') =>
            {
                ReplyCode::Class(d - b'0')
            }
            [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                ReplyCode::Code(
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                )
            }
            _ => return Err(syntax()),
        };
        spec.validate()
    }
}

/// How a `reply_codes` entry is written in TOML: a number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ReplyCodeText {
    Number(i64),
    Text(String),
}

impl TryFrom<ReplyCodeText> for ReplyCode {
    type Error = ReplyCodesError;

    /// Whatever is wrong, the config error quotes the entry as written and
    /// shows the forms that work.
    fn try_from(v: ReplyCodeText) -> Result<ReplyCode, ReplyCodesError> {
        match v {
            ReplyCodeText::Number(n) => u16::try_from(n)
                .ok()
                .and_then(|c| ReplyCode::Code(c).validate().ok())
                .ok_or_else(|| ReplyCodesError::InConfig(n.to_string())),
            ReplyCodeText::Text(t) => t
                .parse()
                .map_err(|_| ReplyCodesError::InConfig(format!("\"{t}\""))),
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyCode::Code(code) => write!(f, "{code}"),
            ReplyCode::Class(class) => write!(f, "{class}xx"),
        }
    }
}

/// Why a `reply_codes` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyCodesError {
    #[error("{0:?} is not a reply code or class; write a code like 403 or a class like \"2xx\"")]
    Syntax(String),
    #[error("reply code {0} is out of range; SIP status codes are 100-699")]
    CodeOutOfRange(u16),
    #[error("reply class {0}xx does not exist; classes are 1xx-6xx")]
    ClassOutOfRange(u8),
    /// A config entry, quoted as written if it was a string.
    #[error("{0} is not a reply code or class; use e.g. 200, 403 or \"2xx\"")]
    InConfig(String),
}

/// Number of status codes a [`ReplyCodes`] can hold (100–699).
const CODE_SPAN: usize = 600;

/// The probe reply codes that count as alive (Kamailio
/// `ds_ping_reply_codes`). 2xx always counts, as in Kamailio, whose probe
/// callback accepts 200–299 before it consults the list; the setting only
/// adds codes. A 600-bit set: `Copy`, no allocation, O(1) lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyCodes {
    bits: [u64; CODE_SPAN.div_ceil(64)],
}

impl Default for ReplyCodes {
    /// Any 2xx.
    fn default() -> ReplyCodes {
        let mut codes = ReplyCodes {
            bits: [0; CODE_SPAN.div_ceil(64)],
        };
        codes.insert_class(2);
        codes
    }
}

impl ReplyCodes {
    /// Any 2xx plus `specs`. Every entry is checked: codes 100–699,
    /// classes 1–6 (Kamailio silently drops others; a typo here should not
    /// pass unnoticed).
    pub fn parse(specs: &[ReplyCode]) -> Result<ReplyCodes, ReplyCodesError> {
        let mut codes = ReplyCodes::default();
        for spec in specs {
            match spec.validate()? {
                ReplyCode::Code(code) => codes.insert(code),
                ReplyCode::Class(class) => codes.insert_class(class),
            }
        }
        Ok(codes)
    }

    /// Whether a probe reply with this status code counts as alive.
    pub fn matches(&self, code: u16) -> bool {
        match Self::slot(code) {
            Some((word, bit)) => self.bits[word] & (1 << bit) != 0,
            None => false,
        }
    }

    fn insert(&mut self, code: u16) {
        if let Some((word, bit)) = Self::slot(code) {
            self.bits[word] |= 1 << bit;
        }
    }

    fn insert_class(&mut self, class: u8) {
        let first = u16::from(class) * 100;
        for code in first..first + 100 {
            self.insert(code);
        }
    }

    fn slot(code: u16) -> Option<(usize, u32)> {
        let index = usize::from(code.checked_sub(100)?);
        // `index / 64` is at most 9, `index % 64` below 64: both fit.
        (index < CODE_SPAN).then_some((index / 64, (index % 64) as u32))
    }
}

/// Why a [`HealthConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthConfigError {
    #[error("{0} must be at least 1")]
    ZeroThreshold(&'static str),
}

/// Which destinations are probed: Kamailio's `ds_probing_mode`, same
/// numbers, same meaning (see the module docs). Read from the config as a
/// number, `0` to `3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "i64")]
pub enum ProbingMode {
    /// `0`: flagged destinations until they answer.
    UntilReachable = 0,
    /// `1`: every destination, always (the config's default, see
    /// `config::Probe::mode`).
    All = 1,
    /// `2`: flagged destinations while they are inactive.
    Inactive = 2,
    /// `3`: flagged destinations, continuously: the flags alone decide.
    /// What [`HealthConfig::new`] and its default take.
    Flagged = 3,
}

impl ProbingMode {
    /// Kamailio's number for the mode.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// A few words for the start-up summary and logs.
    pub fn describe(self) -> &'static str {
        match self {
            ProbingMode::UntilReachable => "flagged destinations until they answer",
            ProbingMode::All => "every destination",
            ProbingMode::Inactive => "flagged destinations while inactive",
            ProbingMode::Flagged => "flagged destinations",
        }
    }
}

impl TryFrom<i64> for ProbingMode {
    type Error = String;

    fn try_from(n: i64) -> Result<ProbingMode, String> {
        Ok(match n {
            0 => ProbingMode::UntilReachable,
            1 => ProbingMode::All,
            2 => ProbingMode::Inactive,
            3 => ProbingMode::Flagged,
            _ => {
                return Err(format!(
                    "probing mode {n}: expected 0, 1, 2 or 3 (Kamailio's ds_probing_mode)"
                ))
            }
        })
    }
}

impl fmt::Display for ProbingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.describe())
    }
}

/// The health settings every destination shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    failure_threshold: u32,
    success_threshold: u32,
    reply_codes: ReplyCodes,
    mode: ProbingMode,
    /// `Some`: probes keep latency statistics with this estimator alpha.
    latency: Option<super::latency::Alpha>,
}

impl Default for HealthConfig {
    /// 3 failures down, 1 success up, any 2xx alive, the flags decide
    /// what is probed.
    fn default() -> HealthConfig {
        HealthConfig {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            reply_codes: ReplyCodes::default(),
            mode: ProbingMode::Flagged,
            latency: Some(super::latency::Alpha::default()),
        }
    }
}

impl HealthConfig {
    /// Thresholds of 0 are refused: "down after zero failures" has no
    /// meaning an operator could want.
    pub fn new(
        failure_threshold: u32,
        success_threshold: u32,
        reply_codes: ReplyCodes,
    ) -> Result<HealthConfig, HealthConfigError> {
        if failure_threshold == 0 {
            return Err(HealthConfigError::ZeroThreshold("failure_threshold"));
        }
        if success_threshold == 0 {
            return Err(HealthConfigError::ZeroThreshold("success_threshold"));
        }
        Ok(HealthConfig {
            failure_threshold,
            success_threshold,
            reply_codes,
            mode: ProbingMode::Flagged,
            latency: Some(super::latency::Alpha::default()),
        })
    }

    /// The same settings under probing mode `mode`.
    pub fn with_mode(self, mode: ProbingMode) -> HealthConfig {
        HealthConfig { mode, ..self }
    }

    pub fn mode(&self) -> ProbingMode {
        self.mode
    }

    /// The same settings with latency statistics kept (`Some(alpha)`) or
    /// not (`[probe] latency_stats = false`).
    pub fn with_latency(self, latency: Option<super::latency::Alpha>) -> HealthConfig {
        HealthConfig { latency, ..self }
    }

    /// The estimator alpha, when latency statistics are kept.
    pub fn latency(&self) -> Option<super::latency::Alpha> {
        self.latency
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    pub fn success_threshold(&self) -> u32 {
        self.success_threshold
    }

    pub fn reply_codes(&self) -> &ReplyCodes {
        &self.reply_codes
    }
}

/// An operator's `dispatcher.set_state` state argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetState {
    pub state: State,
    /// `Some(true)`: probe; `Some(false)`: stop probing; `None`: leave the
    /// flag as it is. [`SetState::parse`] never yields `None`: Kamailio
    /// rewrites every state bit, the probing bit included, so a state
    /// without `p` turns probing *off* (`a` on an `AP` node gives `AX`).
    /// `None` is for callers that mean to change only the state.
    pub probing: Option<bool>,
}

/// Why a `dispatcher.set_state` state argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetStateError {
    #[error("empty state; expected a, i, t or d, optionally followed by p")]
    Empty,
    #[error("unknown state {0:?}; expected a, i, t or d, optionally followed by p")]
    UnknownState(String),
}

impl SetState {
    /// Kamailio's forms: `a` active, `i` inactive, `t` trying, `d`
    /// disabled, in either case, or Kamailio's digit aliases `1`, `0`, `3`,
    /// `2` in that order; then an optional `p`/`P` for probing.
    ///
    /// Stricter than Kamailio, which reads only the first two characters and
    /// ignores a second one that is not `p`: here anything else is an error,
    /// so a typo like `ax` does not silently switch probing off. `dp` is
    /// accepted and means disabled *and* probed (Kamailio ignores the `p`
    /// after `d` because it never probes disabled destinations; sipedge
    /// does, see the module docs).
    pub fn parse(s: &str) -> Result<SetState, SetStateError> {
        let unknown = || SetStateError::UnknownState(s.to_owned());
        let (first, probing) = match s.as_bytes() {
            [] => return Err(SetStateError::Empty),
            [first] => (*first, false),
            [first, p] if p.eq_ignore_ascii_case(&b'p') => (*first, true),
            _ => return Err(unknown()),
        };
        let state = match first {
            // Kamailio's digit aliases; letters are the FLAGS letters.
            b'1' => State::Active,
            b'0' => State::Inactive,
            b'3' => State::Trying,
            b'2' => State::Disabled,
            letter => {
                State::from_letter(char::from(letter.to_ascii_uppercase())).ok_or_else(unknown)?
            }
        };
        Ok(SetState {
            state,
            probing: Some(probing),
        })
    }
}

impl FromStr for SetState {
    type Err = SetStateError;

    fn from_str(s: &str) -> Result<SetState, SetStateError> {
        SetState::parse(s)
    }
}

/// One destination's health. See the module docs for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    config: HealthConfig,
    state: State,
    probing: bool,
    /// Consecutive failures; non-zero only while Trying (Active has none by
    /// definition, and going down starts a success count instead).
    failures: u32,
    /// The streak's last failure and whether it mixed kinds: for the log.
    last_failure: Option<Failure>,
    mixed: bool,
    /// Consecutive probe successes; non-zero only while Inactive.
    successes: u32,
    /// An urgent probe was asked for and no probe result came in since.
    urgent_probe: bool,
    /// An ICMP error named the node (Trying) and no other failure has
    /// confirmed it nor a success cleared it.
    suspect: bool,
    /// The success being recorded clears a suspicion that had no other
    /// failure with it (for [`Transition::icmp_only`]).
    cleared_icmp_only: bool,
}

impl Health {
    pub fn new(config: HealthConfig, status: Status) -> Health {
        Health {
            config,
            state: status.state,
            // Mode 1 probes everything: the flag shows it from the start
            // (Kamailio sets it with the first result).
            probing: status.probing || config.mode == ProbingMode::All,
            failures: 0,
            last_failure: None,
            mixed: false,
            successes: 0,
            urgent_probe: false,
            suspect: false,
            cleared_icmp_only: false,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn probing(&self) -> bool {
        self.probing
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            probing: self.probing,
        }
    }

    /// The FLAGS string, e.g. `AP`.
    pub fn flags(&self) -> FlagsStr {
        self.status().flags()
    }

    pub fn to_list_flags(&self) -> u32 {
        self.status().to_list_flags()
    }

    /// Active and Trying take new calls; Inactive and Disabled do not.
    pub fn accepts_new_calls(&self) -> bool {
        self.state.accepts_new_calls()
    }

    /// Whether the prober should send this destination OPTIONS, by the
    /// probing mode (Disabled included, see the module docs).
    pub fn should_probe(&self) -> bool {
        probed(self.config.mode, self.status())
    }

    /// Out of rotation and not probed: nothing brings it back but an
    /// operator (or a reply on a dialog it still has).
    pub fn stranded(&self) -> bool {
        stranded(self.config.mode, self.status())
    }

    /// The current failure streak (Trying's "Fail n/threshold").
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The current probe-success streak of an Inactive destination.
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    /// An ICMP error made the node suspect and nothing confirmed or
    /// cleared it yet.
    pub fn suspect(&self) -> bool {
        self.suspect
    }

    /// One probe's result. Ignored (no change, `None`) when the node is
    /// not probed (a late result after an operator switched probing off)
    /// or is Disabled.
    #[must_use]
    pub fn record_probe(&mut self, result: ProbeResult) -> Option<Transition> {
        self.urgent_probe = false;
        if !self.should_probe() || self.state == State::Disabled {
            return None;
        }
        if self.config.mode == ProbingMode::All {
            // Kamailio sets the flag with every result in mode 1 (after an
            // operator's `a` cleared it).
            self.probing = true;
        }
        let failure = match result {
            ProbeResult::Reply(code) if self.config.reply_codes.matches(code) => {
                let t = self.success(Reason::ProbeReplies {
                    count: 0, // filled in by `success`
                    last_code: code,
                });
                // Modes 0 and 2 probe until the node is reachable again.
                let until_back = matches!(
                    self.config.mode,
                    ProbingMode::UntilReachable | ProbingMode::Inactive
                );
                if until_back && self.state == State::Active {
                    self.probing = false;
                }
                return t;
            }
            ProbeResult::Reply(code) => Failure::BadCode(code),
            ProbeResult::Timeout(after) => Failure::Timeout(after),
            ProbeResult::TransportError => Failure::TransportError,
        };
        self.failure(failure)
    }

    /// A call to this node failed. The proxy reports timeouts and transport
    /// errors; a 5xx proves the node answers and goes to
    /// [`Health::record_call_reply`]. Takes the node out at once (inactive),
    /// as Kamailio's `ds_mark_dst("ip")` in a failure_route does: a node
    /// that just swallowed an INVITE must not get the next calls while
    /// probes count up to a threshold. Probes (or, with probing off, a call
    /// it answers) bring it back. Ignored when Disabled.
    ///
    /// [`Failure::Unreachable`] (an ICMP error) is the exception: it only
    /// makes the node suspect (see the module docs).
    pub fn record_call_failure(&mut self, failure: Failure) -> CallFailureOutcome {
        if self.state == State::Disabled {
            return CallFailureOutcome {
                transition: None,
                probe_now: false,
                stranded: false,
            };
        }
        if failure == Failure::Unreachable {
            return self.icmp_error();
        }
        self.reset_streaks();
        let transition = self.change(State::Inactive, Reason::CallFailure(failure));
        if self.config.mode == ProbingMode::Inactive {
            // Mode 2's reason to exist: probe what calls took out.
            self.probing = true;
        }
        let probe_now = self.should_probe() && !self.urgent_probe;
        self.urgent_probe |= probe_now;
        CallFailureOutcome {
            transition,
            probe_now,
            stranded: transition.is_some() && self.stranded(),
        }
    }

    /// An ICMP error for something sent to this Active or Trying node:
    /// suspect, and a probe to confirm or clear it. An Inactive node is
    /// probed by its rounds already; nothing changes.
    fn icmp_error(&mut self) -> CallFailureOutcome {
        let transition = match self.state {
            State::Active | State::Trying => {
                self.suspect = true;
                self.change(State::Trying, Reason::CallFailure(Failure::Unreachable))
            }
            State::Inactive | State::Disabled => None,
        };
        let probe_now = self.suspect && self.should_probe() && !self.urgent_probe;
        self.urgent_probe |= probe_now;
        CallFailureOutcome {
            transition,
            probe_now,
            stranded: false,
        }
    }

    /// A call to this node got a reply (any code). Ends a failure streak:
    /// Trying → Active. An Inactive node comes back this way only when it
    /// is not probed (nothing else would ever bring it back); a probed one
    /// waits for its probes (see the module docs).
    #[must_use]
    pub fn record_call_reply(&mut self, code: u16) -> Option<Transition> {
        match self.state {
            State::Trying => self.success(Reason::CallReply { code }),
            State::Inactive if !self.should_probe() => {
                self.reset_streaks();
                self.change(State::Active, Reason::CallReply { code })
            }
            _ => None,
        }
    }

    /// `dispatcher.set_state`. The only way into or out of Disabled. Both
    /// streaks restart from zero, even if the state does not change: the
    /// operator's word replaces whatever the node did before. (Kamailio
    /// keeps its counter here, so after `set_state a` on a node one failure
    /// from down, the next failure takes it down; that surprises.)
    #[must_use]
    pub fn set_state(&mut self, cmd: SetState) -> Option<Transition> {
        if let Some(probing) = cmd.probing {
            self.probing = probing;
        }
        self.reset_streaks();
        self.urgent_probe = false;
        self.change(cmd.state, Reason::Operator)
    }

    fn failure(&mut self, failure: Failure) -> Option<Transition> {
        match self.state {
            State::Active | State::Trying => {
                self.mixed = match self.last_failure {
                    Some(last) if self.failures > 0 => self.mixed || !last.same_kind(failure),
                    _ => false,
                };
                self.last_failure = Some(failure);
                self.failures = self.failures.saturating_add(1);
                let reason = Reason::Failures {
                    count: self.failures,
                    last: failure,
                    mixed: self.mixed,
                };
                if self.suspect {
                    // The probe confirms what the ICMP error said.
                    self.reset_streaks();
                    return self.change(State::Inactive, Reason::IcmpConfirmed(failure));
                }
                if self.failures >= self.config.failure_threshold {
                    self.reset_streaks();
                    self.change(State::Inactive, reason)
                } else {
                    self.change(State::Trying, reason)
                }
            }
            State::Inactive => {
                // Recovery needs consecutive successes.
                self.successes = 0;
                None
            }
            State::Disabled => None,
        }
    }

    fn success(&mut self, reason: Reason) -> Option<Transition> {
        match self.state {
            // One success ends a failure streak, whatever the success
            // threshold (Kamailio: trying → active on the first good reply).
            State::Active | State::Trying => {
                let reason = match reason {
                    Reason::ProbeReplies { last_code, .. } => Reason::ProbeReplies {
                        count: 1,
                        last_code,
                    },
                    other => other,
                };
                self.cleared_icmp_only = self.suspect && self.failures == 0;
                self.reset_streaks();
                self.change(State::Active, reason)
            }
            State::Inactive => {
                self.successes = self.successes.saturating_add(1);
                if self.successes < self.config.success_threshold {
                    return None;
                }
                let reason = match reason {
                    Reason::ProbeReplies { last_code, .. } => Reason::ProbeReplies {
                        count: self.successes,
                        last_code,
                    },
                    other => other,
                };
                self.reset_streaks();
                self.change(State::Active, reason)
            }
            State::Disabled => None,
        }
    }

    /// Also clears the ICMP suspicion: every caller has just confirmed or
    /// disproved it, or an operator spoke.
    fn reset_streaks(&mut self) {
        self.failures = 0;
        self.last_failure = None;
        self.mixed = false;
        self.successes = 0;
        self.suspect = false;
    }

    fn change(&mut self, to: State, reason: Reason) -> Option<Transition> {
        // Set by `success` before it resets the streaks; good for one call.
        let cleared_icmp_only = std::mem::take(&mut self.cleared_icmp_only);
        let from = self.state;
        if from == to {
            return None;
        }
        self.state = to;
        let icmp_only = match (to, reason) {
            (State::Trying, Reason::CallFailure(Failure::Unreachable)) => true,
            (State::Active, Reason::CallReply { .. } | Reason::ProbeReplies { .. }) => {
                cleared_icmp_only
            }
            _ => false,
        };
        Some(Transition {
            from,
            to,
            reason,
            icmp_only,
            failure_threshold: self.config.failure_threshold,
        })
    }
}

/// Whether a destination in `status` is probed under `mode`.
fn probed(mode: ProbingMode, status: Status) -> bool {
    match mode {
        ProbingMode::All => true,
        ProbingMode::UntilReachable | ProbingMode::Flagged => status.probing,
        ProbingMode::Inactive => status.probing && status.state == State::Inactive,
    }
}

/// Inactive and not probed under `mode`.
fn stranded(mode: ProbingMode, status: Status) -> bool {
    status.state == State::Inactive && !probed(mode, status)
}

/// A [`Health`] shared by the proxy's tasks. Every operation takes a
/// `std` mutex for a few instructions and never across an `.await` (there
/// is none inside). The hot-path reads ([`SharedHealth::accepts_new_calls`],
/// [`SharedHealth::status`]) and the common case of
/// [`SharedHealth::record_call_reply`] (node not Trying) take no lock: they
/// read a one-byte snapshot of the status, rewritten under the lock after
/// every change. Relaxed ordering is enough: the snapshot guards no other
/// data, and a reader that sees the previous status for a moment behaves as
/// if its call had come a moment earlier.
#[derive(Debug)]
pub struct SharedHealth {
    inner: Mutex<Health>,
    snapshot: AtomicU8,
    /// The config's mode, fixed for the machine's life: lets the lock-free
    /// reads decide what is probed.
    mode: ProbingMode,
}

const SNAP_PROBING: u8 = 1 << 2;

/// The snapshot byte: the state's index in [`State::ALL`], plus
/// [`SNAP_PROBING`].
fn encode(status: Status) -> u8 {
    let state = status.state as u8; // four states
    state | if status.probing { SNAP_PROBING } else { 0 }
}

fn decode(snapshot: u8) -> Status {
    Status {
        state: State::ALL[usize::from(snapshot & 3)],
        probing: snapshot & SNAP_PROBING != 0,
    }
}

impl SharedHealth {
    pub fn new(health: Health) -> SharedHealth {
        let snapshot = AtomicU8::new(encode(health.status()));
        SharedHealth {
            mode: health.config.mode,
            inner: Mutex::new(health),
            snapshot,
        }
    }

    /// Lock-free: may the dispatcher pick this node for a new call?
    pub fn accepts_new_calls(&self) -> bool {
        self.status().state.accepts_new_calls()
    }

    /// Lock-free state and probing flag.
    pub fn status(&self) -> Status {
        decode(self.snapshot.load(Relaxed))
    }

    /// Lock-free FLAGS string.
    pub fn flags(&self) -> FlagsStr {
        self.status().flags()
    }

    /// Lock-free: should the prober send this node OPTIONS?
    pub fn should_probe(&self) -> bool {
        probed(self.mode, self.status())
    }

    /// Lock-free [`Health::stranded`].
    pub fn stranded(&self) -> bool {
        stranded(self.mode, self.status())
    }

    /// A copy of the whole machine, streak counts included (for
    /// `dispatcher.list` and metrics).
    pub fn get(&self) -> Health {
        self.lock().clone()
    }

    #[must_use]
    pub fn record_probe(&self, result: ProbeResult) -> Option<Transition> {
        self.update(|h| h.record_probe(result))
    }

    pub fn record_call_failure(&self, failure: Failure) -> CallFailureOutcome {
        self.update(|h| h.record_call_failure(failure))
    }

    /// Called for every reply, so it locks only when the reply can change
    /// something: the node is Trying, or Inactive and not probed.
    #[must_use]
    pub fn record_call_reply(&self, code: u16) -> Option<Transition> {
        let status = self.status();
        let may_change = status.state == State::Trying || stranded(self.mode, status);
        if !may_change {
            return None;
        }
        self.update(|h| h.record_call_reply(code))
    }

    #[must_use]
    pub fn set_state(&self, cmd: SetState) -> Option<Transition> {
        self.update(|h| h.set_state(cmd))
    }

    fn update<R>(&self, f: impl FnOnce(&mut Health) -> R) -> R {
        let mut health = self.lock();
        let result = f(&mut health);
        let snapshot = encode(health.status());
        // Skip the store when nothing changed: most updates change no
        // status, and an unchanged cache line stays shared.
        if self.snapshot.load(Relaxed) != snapshot {
            self.snapshot.store(snapshot, Relaxed);
        }
        result
    }

    /// A poisoned lock is taken over: no `Health` method panics, so a
    /// panic elsewhere while holding it cannot have left it half-updated.
    fn lock(&self) -> MutexGuard<'_, Health> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `flags` column: the destination's initial state, as a bit field.
///
/// Kamailio (`dispatch.h`) defines five bits, [`Flags::KNOWN`]. Any other
/// bit is kept as written but means nothing: Kamailio stores the whole
/// `int` and never tests those bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u32);

impl Flags {
    /// `DS_INACTIVE_DST`: not used for new calls until it answers probes.
    pub const INACTIVE: Flags = Flags(1);
    /// `DS_TRYING_DST`: failing, on the way to inactive.
    pub const TRYING: Flags = Flags(2);
    /// `DS_DISABLED_DST`: switched off by the administrator.
    pub const DISABLED: Flags = Flags(4);
    /// `DS_PROBING_DST`: sent OPTIONS keepalives.
    pub const PROBING: Flags = Flags(8);
    /// `DS_NODNSARES_DST`: the host is not resolved to A/AAAA at load
    /// (for names that only have NAPTR/SRV records); such a destination
    /// can no longer be matched by source address (`ds_is_from_list`).
    pub const NO_DNS_A: Flags = Flags(16);
    /// `DS_STATES_ALL`: every bit Kamailio gives a meaning.
    pub const KNOWN: Flags = Flags(31);

    pub fn bits(self) -> u32 {
        self.0
    }

    /// True if every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_inactive(self) -> bool {
        self.contains(Flags::INACTIVE)
    }

    pub fn is_trying(self) -> bool {
        self.contains(Flags::TRYING)
    }

    pub fn is_disabled(self) -> bool {
        self.contains(Flags::DISABLED)
    }

    pub fn is_probing(self) -> bool {
        self.contains(Flags::PROBING)
    }

    pub fn skips_dns(self) -> bool {
        self.contains(Flags::NO_DNS_A)
    }

    /// Inactive or disabled: left out of selection (Kamailio
    /// `ds_skip_dst`).
    pub fn is_skipped(self) -> bool {
        !Status::from_list_flags(self.0).state.accepts_new_calls()
    }

    /// Bits outside [`Flags::KNOWN`], for a warning.
    pub fn unknown_bits(self) -> u32 {
        self.0 & !Flags::KNOWN.0
    }

    /// The two-letter `FLAGS` of Kamailio's `dispatcher.list` RPC: state
    /// (`I`nactive before `D`isabled before `T`rying, else `A`ctive), then
    /// `P`robing or `X`.
    pub fn rpc_letters(self) -> &'static str {
        Status::as_kamailio_prints(self.0).flags().as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_S: Duration = Duration::from_secs(2);
    const TIMEOUT: Failure = Failure::Timeout(TWO_S);

    fn config(failure_threshold: u32, success_threshold: u32) -> HealthConfig {
        HealthConfig::new(failure_threshold, success_threshold, ReplyCodes::default()).unwrap()
    }

    fn health(state: State, probing: bool) -> Health {
        Health::new(HealthConfig::default(), Status { state, probing })
    }

    fn with_codes(specs: &[ReplyCode]) -> Health {
        let codes = ReplyCodes::parse(specs).unwrap();
        Health::new(
            HealthConfig::new(3, 1, codes).unwrap(),
            Status::ACTIVE_PROBING,
        )
    }

    fn fail(h: &mut Health) -> Option<Transition> {
        h.record_probe(ProbeResult::Timeout(TWO_S))
    }

    fn down(h: &mut Health) {
        for _ in 0..h.config().failure_threshold() {
            let _ = h.record_probe(ProbeResult::Timeout(TWO_S));
        }
        assert_eq!(h.state(), State::Inactive);
    }

    #[test]
    fn defaults_are_three_failures_one_success_any_2xx() {
        let c = HealthConfig::default();
        assert_eq!(c.failure_threshold(), 3);
        assert_eq!(c.success_threshold(), 1);
        assert!(c.reply_codes().matches(200));
        assert!(c.reply_codes().matches(299));
        assert!(!c.reply_codes().matches(403));
    }

    #[test]
    fn zero_thresholds_are_refused() {
        let codes = ReplyCodes::default();
        assert_eq!(
            HealthConfig::new(0, 1, codes),
            Err(HealthConfigError::ZeroThreshold("failure_threshold"))
        );
        assert_eq!(
            HealthConfig::new(1, 0, codes),
            Err(HealthConfigError::ZeroThreshold("success_threshold"))
        );
        assert_eq!(
            HealthConfigError::ZeroThreshold("success_threshold").to_string(),
            "success_threshold must be at least 1"
        );
    }

    #[test]
    fn down_after_exactly_failure_threshold_with_trying_between() {
        let mut h = Health::new(config(3, 1), Status::ACTIVE_PROBING);
        let t = fail(&mut h).expect("active -> trying");
        assert_eq!((t.from, t.to), (State::Active, State::Trying));
        assert!(h.accepts_new_calls(), "trying still takes calls");
        assert_eq!(h.consecutive_failures(), 1);

        assert_eq!(fail(&mut h), None, "second failure: still trying");
        assert_eq!(h.state(), State::Trying);
        assert!(h.accepts_new_calls());
        assert_eq!(h.consecutive_failures(), 2);

        let t = fail(&mut h).expect("third failure: down");
        assert_eq!((t.from, t.to), (State::Trying, State::Inactive));
        assert!(!h.accepts_new_calls());
    }

    #[test]
    fn probe_failures_count_like_call_failures() {
        let mut h = Health::new(config(2, 1), Status::ACTIVE_PROBING);
        assert_eq!(
            h.record_probe(ProbeResult::TransportError).map(|t| t.to),
            Some(State::Trying)
        );
        assert_eq!(
            h.record_call_failure(TIMEOUT).transition.map(|t| t.to),
            Some(State::Inactive)
        );
    }

    #[test]
    fn threshold_one_goes_straight_down() {
        let mut h = Health::new(config(1, 1), Status::ACTIVE_PROBING);
        let t = fail(&mut h).unwrap();
        assert_eq!((t.from, t.to), (State::Active, State::Inactive));
    }

    #[test]
    fn a_success_in_between_resets_the_failure_count() {
        let mut h = Health::new(config(3, 5), Status::ACTIVE_PROBING);
        let _ = fail(&mut h);
        let _ = fail(&mut h);
        let t = h.record_probe(ProbeResult::Reply(200)).unwrap();
        assert_eq!(
            (t.from, t.to),
            (State::Trying, State::Active),
            "one success ends trying, whatever the success threshold"
        );
        assert_eq!(h.consecutive_failures(), 0);
        let _ = fail(&mut h);
        let _ = fail(&mut h);
        assert_eq!(h.state(), State::Trying, "count restarted");
        let _ = fail(&mut h);
        assert_eq!(h.state(), State::Inactive);
    }

    #[test]
    fn back_after_exactly_success_threshold() {
        let mut h = Health::new(config(1, 3), Status::ACTIVE_PROBING);
        down(&mut h);
        assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
        assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
        assert_eq!(h.state(), State::Inactive);
        assert_eq!(h.consecutive_successes(), 2);
        let t = h.record_probe(ProbeResult::Reply(200)).unwrap();
        assert_eq!((t.from, t.to), (State::Inactive, State::Active));
        assert_eq!(h.consecutive_successes(), 0);
    }

    #[test]
    fn a_failure_during_recovery_restarts_the_success_count() {
        let mut h = Health::new(config(1, 2), Status::ACTIVE_PROBING);
        down(&mut h);
        assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
        assert_eq!(h.record_probe(ProbeResult::Reply(503)), None);
        assert_eq!(h.consecutive_successes(), 0);
        assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
        assert_eq!(h.state(), State::Inactive);
        // A passive failure breaks the streak too.
        let _ = h.record_call_failure(Failure::TransportError);
        assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
        assert_eq!(
            h.record_probe(ProbeResult::Reply(200)).map(|t| t.to),
            Some(State::Active)
        );
    }

    #[test]
    fn only_active_and_trying_accept_new_calls() {
        assert!(State::Active.accepts_new_calls());
        assert!(State::Trying.accepts_new_calls());
        assert!(!State::Inactive.accepts_new_calls());
        assert!(!State::Disabled.accepts_new_calls());
    }

    #[test]
    fn reply_code_classes_and_single_codes() {
        use ReplyCode::{Class, Code};
        let codes = ReplyCodes::parse(&[Code(403), Class(3)]).unwrap();
        for yes in [200, 202, 299, 300, 302, 399, 403] {
            assert!(codes.matches(yes), "{yes}");
        }
        for no in [0, 99, 100, 199, 400, 404, 488, 500, 503, 699, 700, u16::MAX] {
            assert!(!codes.matches(no), "{no}");
        }
        let six = ReplyCodes::parse(&[Class(6), Code(100), Code(699)]).unwrap();
        assert!(six.matches(600) && six.matches(699) && six.matches(100));
        assert!(!six.matches(101) && !six.matches(700));
    }

    #[test]
    fn reply_code_specs_parse_from_strings() {
        use ReplyCode::{Class, Code};
        assert_eq!("403".parse(), Ok(Code(403)));
        assert_eq!("2xx".parse(), Ok(Class(2)));
        assert_eq!("3XX".parse(), Ok(Class(3)));
        assert_eq!(" 6xX ".parse(), Ok(Class(6)));
        assert_eq!("100".parse(), Ok(Code(100)));
        assert_eq!("699".parse(), Ok(Code(699)));
        assert_eq!(Code(403).to_string(), "403");
        assert_eq!(Class(2).to_string(), "2xx");
    }

    #[test]
    fn reply_codes_read_from_the_config() {
        // The config's two spellings, numbers and strings, in one type.
        let read = |json: &str| serde_json::from_str::<ReplyCode>(json).map_err(|e| e.to_string());
        assert_eq!(read("403"), Ok(ReplyCode::Code(403)));
        assert_eq!(read("\"404\""), Ok(ReplyCode::Code(404)));
        assert_eq!(read("\" 2XX \""), Ok(ReplyCode::Class(2)));
        for (bad, quoted) in [
            ("99", "99"),
            ("700", "700"),
            ("-1", "-1"),
            ("\"7xx\"", "\"7xx\""),
            ("\"2x\"", "\"2x\""),
        ] {
            let err = read(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("{quoted} is not a reply code or class; use e.g.")),
                "{bad}: {err}"
            );
        }
        assert!(ReplyCode::Class(2).matches(299));
        assert!(!ReplyCode::Class(2).matches(300));
        assert!(ReplyCode::Code(403).matches(403));
        assert!(!ReplyCode::Code(403).matches(404));
    }

    #[test]
    fn bad_reply_codes_are_refused_clearly() {
        use ReplyCode::{Class, Code};
        for bad in [
            "", "2x", "2xxx", "x2x", "abc", "4033", "+40", "40", "2 xx", "２xx",
        ] {
            assert_eq!(
                bad.parse::<ReplyCode>(),
                Err(ReplyCodesError::Syntax(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            "099".parse::<ReplyCode>(),
            Err(ReplyCodesError::CodeOutOfRange(99))
        );
        assert_eq!(
            "700".parse::<ReplyCode>(),
            Err(ReplyCodesError::CodeOutOfRange(700))
        );
        assert_eq!(
            "0xx".parse::<ReplyCode>(),
            Err(ReplyCodesError::ClassOutOfRange(0))
        );
        assert_eq!(
            "7xx".parse::<ReplyCode>(),
            Err(ReplyCodesError::ClassOutOfRange(7))
        );
        assert_eq!(
            ReplyCodes::parse(&[Code(200), Code(42)]),
            Err(ReplyCodesError::CodeOutOfRange(42))
        );
        assert_eq!(
            ReplyCodes::parse(&[Class(9)]),
            Err(ReplyCodesError::ClassOutOfRange(9))
        );
        assert_eq!(
            ReplyCodesError::Syntax("2x".into()).to_string(),
            "\"2x\" is not a reply code or class; write a code like 403 or a class like \"2xx\""
        );
        assert_eq!(
            ReplyCodesError::ClassOutOfRange(7).to_string(),
            "reply class 7xx does not exist; classes are 1xx-6xx"
        );
    }

    #[test]
    fn a_probe_reply_outside_reply_codes_is_a_failure() {
        let mut h = with_codes(&[]);
        let t = h.record_probe(ProbeResult::Reply(403)).unwrap();
        assert_eq!(t.to, State::Trying);
        assert_eq!(
            t.reason,
            Reason::Failures {
                count: 1,
                last: Failure::BadCode(403),
                mixed: false
            }
        );
        let mut h = with_codes(&[ReplyCode::Code(403)]);
        let _ = h.record_probe(ProbeResult::Timeout(TWO_S));
        let t = h.record_probe(ProbeResult::Reply(403)).unwrap();
        assert_eq!((t.from, t.to), (State::Trying, State::Active));
    }

    #[test]
    fn a_timeout_never_counts_as_a_reply() {
        use ReplyCode::{Class, Code};
        let mut h = with_codes(&[Code(408), Class(4), Class(5)]);
        for _ in 0..3 {
            let _ = h.record_probe(ProbeResult::Timeout(TWO_S));
        }
        assert_eq!(
            h.state(),
            State::Inactive,
            "408 in reply_codes keeps no one up"
        );
        assert_eq!(
            h.record_probe(ProbeResult::Reply(408)).map(|t| t.to),
            Some(State::Active),
            "a real 408 from the node does count"
        );
    }

    #[test]
    fn disabled_is_sticky_against_probes_and_calls() {
        let mut h = health(State::Disabled, true);
        assert!(h.should_probe(), "a drained node is still probed");
        assert!(!h.accepts_new_calls());
        for _ in 0..5 {
            assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
            assert_eq!(h.record_probe(ProbeResult::Timeout(TWO_S)), None);
        }
        let out = h.record_call_failure(TIMEOUT);
        assert_eq!(out.transition, None);
        assert!(!out.probe_now);
        assert_eq!(h.record_call_reply(200), None);
        assert_eq!(h.state(), State::Disabled);
        assert_eq!(h.consecutive_failures(), 0);

        let t = h.set_state("ap".parse().unwrap()).unwrap();
        assert_eq!((t.from, t.to), (State::Disabled, State::Active));
        assert_eq!(t.to_string(), "up: set by operator");
        assert!(h.accepts_new_calls());
    }

    #[test]
    fn disabled_without_probing_is_not_probed() {
        assert!(!health(State::Disabled, false).should_probe());
        assert!(health(State::Inactive, true).should_probe());
        assert!(!health(State::Active, false).should_probe());
    }

    #[test]
    fn set_state_parses_kamailio_forms() {
        let cases = [
            ("a", State::Active, false),
            ("A", State::Active, false),
            ("ap", State::Active, true),
            ("AP", State::Active, true),
            ("aP", State::Active, true),
            ("i", State::Inactive, false),
            ("Ip", State::Inactive, true),
            ("t", State::Trying, false),
            ("tp", State::Trying, true),
            ("d", State::Disabled, false),
            ("D", State::Disabled, false),
            ("dp", State::Disabled, true),
            ("1", State::Active, false),
            ("1p", State::Active, true),
            ("0", State::Inactive, false),
            ("3", State::Trying, false),
            ("2", State::Disabled, false),
        ];
        for (input, state, probing) in cases {
            assert_eq!(
                SetState::parse(input),
                Ok(SetState {
                    state,
                    probing: Some(probing)
                }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn set_state_refuses_bad_input() {
        assert_eq!(SetState::parse(""), Err(SetStateError::Empty));
        for bad in [
            "x", "p", "ax", "apx", "app", " a", "a ", "active", "4", "é", "ä",
        ] {
            assert_eq!(
                SetState::parse(bad),
                Err(SetStateError::UnknownState(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            SetStateError::UnknownState("x".into()).to_string(),
            "unknown state \"x\"; expected a, i, t or d, optionally followed by p"
        );
    }

    #[test]
    fn set_state_without_p_turns_probing_off() {
        let mut h = health(State::Active, true);
        assert_eq!(h.set_state("a".parse().unwrap()), None, "same state");
        assert_eq!(h.flags().as_str(), "AX");
        let _ = h.set_state("ip".parse().unwrap());
        assert_eq!(h.flags().as_str(), "IP");
        let _ = h.set_state(SetState {
            state: State::Trying,
            probing: None,
        });
        assert_eq!(h.flags().as_str(), "TP", "None leaves probing alone");
    }

    #[test]
    fn set_state_restarts_the_streaks() {
        let mut h = Health::new(config(3, 1), Status::ACTIVE_PROBING);
        let _ = fail(&mut h);
        let _ = fail(&mut h);
        let _ = h.set_state("tp".parse().unwrap());
        assert_eq!(h.consecutive_failures(), 0);
        let _ = fail(&mut h);
        let _ = fail(&mut h);
        assert_eq!(h.state(), State::Trying, "three more failures needed");
        let _ = fail(&mut h);
        assert_eq!(h.state(), State::Inactive);
    }

    #[test]
    fn flags_for_every_state_and_probing() {
        let cases = [
            (State::Active, true, "AP"),
            (State::Active, false, "AX"),
            (State::Trying, true, "TP"),
            (State::Trying, false, "TX"),
            (State::Inactive, true, "IP"),
            (State::Inactive, false, "IX"),
            (State::Disabled, true, "DP"),
            (State::Disabled, false, "DX"),
        ];
        for (state, probing, flags) in cases {
            let status = Status { state, probing };
            assert_eq!(status.flags().as_str(), flags);
            assert_eq!(health(state, probing).flags().to_string(), flags);
            assert_eq!(status.flags().as_str().chars().next(), Some(state.letter()));
        }
    }

    #[test]
    fn letters_and_names_are_one_table() {
        for &state in State::ALL {
            assert_eq!(State::from_letter(state.letter()), Some(state));
            assert_eq!(state.as_str(), state.to_string());
        }
        for other in ['a', 'P', 'X', 'N', ' '] {
            assert_eq!(State::from_letter(other), None, "{other:?}");
        }
    }

    #[test]
    fn kamailio_prints_several_state_bits_in_another_order() {
        // 5 = inactive + disabled: behaves disabled, printed inactive.
        assert_eq!(Status::from_list_flags(5).state, State::Disabled);
        assert_eq!(Status::as_kamailio_prints(5).state, State::Inactive);
        for bits in [0, 1, 2, 4, 8, 9, 10, 12, 16 | 8] {
            assert_eq!(
                Status::as_kamailio_prints(bits),
                Status::from_list_flags(bits),
                "{bits}"
            );
        }
        assert_eq!(Status::as_kamailio_prints(15).flags().as_str(), "IP");
        assert_eq!(Status::as_kamailio_prints(6).flags().as_str(), "DX");
    }

    #[test]
    fn list_flags_round_trip() {
        for state in [
            State::Active,
            State::Trying,
            State::Inactive,
            State::Disabled,
        ] {
            for probing in [false, true] {
                let status = Status { state, probing };
                assert_eq!(Status::from_list_flags(status.to_list_flags()), status);
            }
        }
        let expect = [
            (0, "AX"),
            (1, "IX"),
            (2, "TX"),
            (4, "DX"),
            (8, "AP"),
            (9, "IP"),
            (10, "TP"),
            (12, "DP"),
            // Several state bits: disabled, then inactive, then trying.
            (3, "IX"),
            (5, "DX"),
            (15, "DP"),
            // Bits that are not health are ignored.
            (16 | 8, "AP"),
            (!15, "AX"),
        ];
        for (bits, flags) in expect {
            assert_eq!(
                Status::from_list_flags(bits).flags().as_str(),
                flags,
                "{bits}"
            );
        }
        assert_eq!(health(State::Inactive, true).to_list_flags(), 9);
        assert_eq!(health(State::Disabled, false).to_list_flags(), 4);
        assert_eq!(health(State::Active, false).to_list_flags(), 0);
    }

    #[test]
    fn transition_log_lines() {
        let mut h = Health::new(config(3, 2), Status::ACTIVE_PROBING);
        let t = fail(&mut h).unwrap();
        assert_eq!(
            t.to_string(),
            "trying: timeout (2s), 1 of 3 failures before down"
        );
        let _ = fail(&mut h);
        assert_eq!(
            fail(&mut h).unwrap().to_string(),
            "down: 3 consecutive timeouts (2s)"
        );
        let _ = h.record_probe(ProbeResult::Reply(200));
        assert_eq!(
            h.record_probe(ProbeResult::Reply(202)).unwrap().to_string(),
            "up: 2 consecutive probe replies (last 202)"
        );

        let _ = h.record_probe(ProbeResult::TransportError);
        let _ = h.record_probe(ProbeResult::TransportError);
        assert_eq!(
            h.record_probe(ProbeResult::TransportError)
                .unwrap()
                .to_string(),
            "down: 3 consecutive transport errors"
        );

        let mut h = Health::new(config(3, 1), Status::ACTIVE_PROBING);
        let _ = h.record_probe(ProbeResult::Reply(503));
        let _ = h.record_probe(ProbeResult::Reply(500));
        assert_eq!(
            h.record_probe(ProbeResult::Reply(503)).unwrap().to_string(),
            "down: 3 consecutive unaccepted replies (last 503)"
        );
        assert_eq!(
            h.record_probe(ProbeResult::Reply(200)).unwrap().to_string(),
            "up: probe answered 200"
        );

        // Mixed once, mixed for the rest of the streak.
        let _ = h.record_probe(ProbeResult::Timeout(Duration::from_millis(1500)));
        let _ = h.record_probe(ProbeResult::TransportError);
        assert_eq!(
            h.record_probe(ProbeResult::TransportError)
                .unwrap()
                .to_string(),
            "down: 3 consecutive failures (last: transport error)"
        );

        let mut h = Health::new(config(1, 1), Status::ACTIVE_PROBING);
        assert_eq!(
            h.record_call_failure(Failure::Timeout(Duration::from_millis(500)))
                .transition
                .unwrap()
                .to_string(),
            "down: call failed: timeout (500ms)"
        );
        let _ = h.set_state("tp".parse().unwrap());
        assert_eq!(
            h.record_call_reply(180).unwrap().to_string(),
            "up: call reply 180"
        );
        assert_eq!(
            h.set_state("d".parse().unwrap()).unwrap().to_string(),
            "disabled: set by operator"
        );
        assert_eq!(
            h.set_state("i".parse().unwrap()).unwrap().to_string(),
            "down: set by operator"
        );
    }

    #[test]
    fn an_icmp_error_is_logged_as_such_not_as_a_call() {
        let mut h = health(State::Active, true);
        let t = h
            .record_call_failure(Failure::Unreachable)
            .transition
            .unwrap();
        assert_eq!(
            t.to_string(),
            "trying: ICMP unreachable, suspect until a probe answers"
        );
        assert!(t.icmp_only());
        assert_eq!(Failure::Unreachable.to_string(), "ICMP unreachable");
        let t = h.record_probe(ProbeResult::Timeout(TWO_S)).unwrap();
        assert_eq!(
            t.to_string(),
            "down: ICMP unreachable, confirmed by a probe: timeout (2s)"
        );
        assert!(!t.icmp_only(), "confirmed: worth the log");
    }

    /// ICMP is forgeable: any number of ICMP errors leave a node taking
    /// calls, whatever the threshold, and ask for one probe until a probe
    /// result comes in.
    #[test]
    fn icmp_errors_alone_never_take_a_node_down() {
        for threshold in [1, 3] {
            let mut h = Health::new(config(threshold, 1), Status::ACTIVE_PROBING);
            let first = h.record_call_failure(Failure::Unreachable);
            assert_eq!(
                first.transition.map(|t| (t.from, t.to)),
                Some((State::Active, State::Trying))
            );
            assert!(first.probe_now && !first.stranded);
            assert!(h.suspect());
            for _ in 0..10_000 {
                let again = h.record_call_failure(Failure::Unreachable);
                assert_eq!(again.transition, None);
                assert!(!again.probe_now, "one urgent probe outstanding at a time");
            }
            assert_eq!(h.state(), State::Trying);
            assert!(h.accepts_new_calls());
            assert_eq!(h.consecutive_failures(), 0, "ICMP does not count up");
        }
    }

    /// Any answer clears the suspicion: the probe's, or a call's.
    #[test]
    fn an_answer_clears_an_icmp_suspicion() {
        let mut h = health(State::Active, true);
        let _ = h.record_call_failure(Failure::Unreachable);
        let t = h.record_probe(OK).unwrap();
        assert_eq!((t.from, t.to), (State::Trying, State::Active));
        assert!(!h.suspect());
        // The next ICMP error may ask for a probe again (the prober
        // rate-limits them per node).
        assert!(h.record_call_failure(Failure::Unreachable).probe_now);
        let t = h.record_call_reply(100).unwrap();
        assert_eq!((t.from, t.to), (State::Trying, State::Active));
        assert!(!h.suspect());
        assert!(t.icmp_only(), "only a suspicion cleared");
        // A probe failure and then an ICMP error: the reply that ends the
        // streak is worth the log.
        let t = h.record_probe(ProbeResult::Timeout(TWO_S)).unwrap();
        assert!(!t.icmp_only());
        let _ = h.record_call_failure(Failure::Unreachable);
        let t = h.record_call_reply(200).unwrap();
        assert_eq!((t.from, t.to), (State::Trying, State::Active));
        assert!(!t.icmp_only());
        // Cleared: a single probe failure is one of the threshold again.
        let _ = h.record_probe(ProbeResult::Timeout(TWO_S));
        assert_eq!(h.state(), State::Trying);
        assert_eq!(h.consecutive_failures(), 1);
    }

    /// A second, independent failure confirms at once: a refused probe,
    /// a failed send, or a call that timed out; a probe failure before the
    /// ICMP error counts toward the threshold only.
    #[test]
    fn a_failure_of_another_kind_confirms_an_icmp_suspicion() {
        for confirm in [
            ProbeResult::Timeout(TWO_S),
            ProbeResult::TransportError,
            ProbeResult::Reply(503),
        ] {
            let mut h = health(State::Active, true);
            let _ = h.record_call_failure(Failure::Unreachable);
            let t = h.record_probe(confirm).unwrap();
            assert_eq!(
                (t.from, t.to),
                (State::Trying, State::Inactive),
                "{confirm:?}"
            );
            assert!(!h.suspect());
        }
        let mut h = health(State::Active, true);
        let _ = h.record_call_failure(Failure::Unreachable);
        let out = h.record_call_failure(Failure::Timeout(TWO_S));
        assert_eq!(out.transition.map(|t| t.to), Some(State::Inactive));
        // Already down: further ICMP errors change nothing and ask for no
        // extra probe (its rounds probe it).
        let out = h.record_call_failure(Failure::Unreachable);
        assert_eq!(out.transition, None);
        assert!(!out.probe_now && !h.suspect());
        // Disabled: ignored.
        let mut h = health(State::Disabled, true);
        let out = h.record_call_failure(Failure::Unreachable);
        assert!(out.transition.is_none() && !out.probe_now && !h.suspect());
    }

    /// The probing modes decide, as for any failure, whether a probe is
    /// asked for; an unprobed suspect waits for a failure of another kind,
    /// and the ICMP error never strands a node.
    #[test]
    fn icmp_suspicion_follows_the_probing_mode() {
        for (mode, probing, probe) in [
            (ProbingMode::All, false, true),
            (ProbingMode::UntilReachable, true, true),
            (ProbingMode::UntilReachable, false, false),
            (ProbingMode::Flagged, true, true),
            (ProbingMode::Flagged, false, false),
            // Mode 2 probes inactive nodes only.
            (ProbingMode::Inactive, true, false),
        ] {
            let mut h = in_mode(mode, State::Active, probing);
            let out = h.record_call_failure(Failure::Unreachable);
            assert_eq!(out.probe_now, probe, "{mode} probing={probing}");
            assert!(!out.stranded, "{mode}");
            assert_eq!(h.state(), State::Trying, "{mode}");
            assert_eq!(h.probing(), probing || mode == ProbingMode::All);
            let out = h.record_call_failure(Failure::Timeout(TWO_S));
            assert_eq!(h.state(), State::Inactive, "{mode}");
            assert_eq!(out.stranded, h.stranded(), "{mode}");
        }
    }

    #[test]
    fn failure_and_duration_display() {
        assert_eq!(Failure::Timeout(TWO_S).to_string(), "timeout (2s)");
        for (after, text) in [
            (Duration::from_millis(1500), "timeout (1.5s)"),
            (Duration::from_millis(2250), "timeout (2.25s)"),
            (Duration::from_millis(1001), "timeout (1.001s)"),
            (Duration::from_millis(250), "timeout (250ms)"),
            (Duration::from_micros(1500), "timeout (1.5ms)"),
        ] {
            assert_eq!(Failure::Timeout(after).to_string(), text);
        }
        assert_eq!(Failure::TransportError.to_string(), "transport error");
        assert_eq!(Failure::BadCode(404).to_string(), "reply 404 not accepted");
    }

    #[test]
    fn a_failed_call_takes_the_node_out_and_asks_for_a_probe_once() {
        let mut h = health(State::Active, true);
        let first = h.record_call_failure(TIMEOUT);
        assert!(
            first.probe_now,
            "a node a call found failing is probed at once"
        );
        let t = first.transition.unwrap();
        assert_eq!((t.from, t.to), (State::Active, State::Inactive));
        assert_eq!(t.reason, Reason::CallFailure(TIMEOUT));
        assert!(
            !h.accepts_new_calls(),
            "like ds_mark_dst(\"ip\"): out at once"
        );
        let second = h.record_call_failure(Failure::TransportError);
        assert!(!second.probe_now, "one urgent probe is already out");
        assert_eq!(second.transition, None, "already inactive");
        // The probe's result re-arms the signal, and one success (the
        // threshold here) brings the node back.
        let t = h.record_probe(ProbeResult::Reply(200)).unwrap();
        assert_eq!((t.from, t.to), (State::Inactive, State::Active));
        assert!(h.record_call_failure(TIMEOUT).probe_now);
        // A trying node (probe failures below the threshold) goes out too.
        let mut h = health(State::Active, true);
        let _ = h.record_probe(ProbeResult::Timeout(TWO_S));
        assert_eq!(h.state(), State::Trying);
        let _ = h.record_call_failure(Failure::TransportError);
        assert_eq!(h.state(), State::Inactive);
        // A disabled node stays disabled and is not probed for it.
        let mut h = health(State::Disabled, true);
        let out = h.record_call_failure(TIMEOUT);
        assert_eq!((out.transition, out.probe_now), (None, false));
        assert_eq!(h.state(), State::Disabled);
    }

    #[test]
    fn without_probing_a_failed_call_asks_no_probe_and_a_reply_revives() {
        let mut h = health(State::Active, false);
        let out = h.record_call_failure(TIMEOUT);
        assert!(!out.probe_now);
        assert_eq!(out.transition.map(|t| t.to), Some(State::Inactive));
        // Nothing else would ever bring an unprobed node back.
        let t = h.record_call_reply(200).unwrap();
        assert_eq!((t.from, t.to), (State::Inactive, State::Active));
        assert_eq!(t.to_string(), "up: call reply 200");
    }

    #[test]
    fn probe_results_are_ignored_when_probing_is_off() {
        let mut h = health(State::Trying, false);
        assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
        let mut h = Health::new(config(1, 1), Status::ACTIVE_PROBING);
        down(&mut h);
        let _ = h.set_state("i".parse().unwrap());
        assert_eq!(h.record_probe(ProbeResult::Reply(200)), None);
        assert_eq!(h.state(), State::Inactive);
    }

    #[test]
    fn call_replies_end_trying_but_never_revive_inactive() {
        let mut h = health(State::Active, true);
        assert_eq!(h.record_call_reply(200), None, "active stays active");
        let _ = fail(&mut h);
        let t = h.record_call_reply(503).unwrap();
        assert_eq!((t.from, t.to), (State::Trying, State::Active));
        assert_eq!(h.consecutive_failures(), 0);

        let mut h = health(State::Inactive, true);
        for code in [100, 180, 200, 503] {
            assert_eq!(h.record_call_reply(code), None);
        }
        assert_eq!(h.state(), State::Inactive);
        assert_eq!(h.consecutive_successes(), 0, "not even a step towards up");
    }

    #[test]
    fn shared_health_mirrors_the_machine_without_locking_reads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SharedHealth>();

        let shared = SharedHealth::new(Health::new(config(2, 1), Status::ACTIVE_PROBING));
        assert!(shared.accepts_new_calls());
        assert_eq!(shared.flags().as_str(), "AP");
        assert!(shared.should_probe());

        assert_eq!(
            shared
                .record_probe(ProbeResult::TransportError)
                .map(|t| t.to),
            Some(State::Trying)
        );
        assert_eq!(shared.flags().as_str(), "TP");
        assert!(shared.accepts_new_calls());
        let out = shared.record_call_failure(TIMEOUT);
        assert!(out.probe_now);
        assert_eq!(out.transition.map(|t| t.to), Some(State::Inactive));
        assert!(!shared.accepts_new_calls());
        assert_eq!(shared.flags().as_str(), "IP");
        assert_eq!(shared.record_call_reply(200), None);
        assert_eq!(shared.status().state, State::Inactive);

        let _ = shared.record_probe(ProbeResult::Reply(200));
        assert!(shared.accepts_new_calls());
        let _ = shared.record_probe(ProbeResult::Timeout(TWO_S));
        assert_eq!(
            shared.record_call_reply(183).map(|t| t.to),
            Some(State::Active),
            "the fast path still locks for a trying node"
        );

        assert_eq!(
            shared.set_state("d".parse().unwrap()).map(|t| t.to),
            Some(State::Disabled)
        );
        assert!(!shared.accepts_new_calls());
        assert!(!shared.should_probe());
        assert_eq!(shared.flags().as_str(), "DX");
        assert_eq!(shared.get().status(), shared.status());
    }

    #[test]
    fn snapshot_encoding_round_trips_and_decodes_any_byte() {
        for state in [
            State::Active,
            State::Trying,
            State::Inactive,
            State::Disabled,
        ] {
            for probing in [false, true] {
                let status = Status { state, probing };
                assert_eq!(decode(encode(status)), status);
            }
        }
        for byte in 0..=u8::MAX {
            let _ = decode(byte).flags();
        }
    }

    #[test]
    fn shared_health_across_threads() {
        let shared = SharedHealth::new(Health::new(config(40, 1), Status::ACTIVE_PROBING));
        let probes = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10 {
                        if shared.record_call_failure(TIMEOUT).probe_now {
                            probes.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(
            shared.status().state,
            State::Inactive,
            "exactly 40 failures"
        );
        assert_eq!(probes.load(Relaxed), 1, "one urgent probe for the burst");
    }

    fn in_mode(mode: ProbingMode, state: State, probing: bool) -> Health {
        Health::new(
            HealthConfig::default().with_mode(mode),
            Status { state, probing },
        )
    }

    const OK: ProbeResult = ProbeResult::Reply(200);

    /// Which node each mode probes, by flag and state (Kamailio's
    /// `ds_ping_result_helper`, Disabled aside: see the module docs).
    #[test]
    fn each_mode_probes_what_kamailio_probes() {
        use ProbingMode::*;
        for (mode, state, flag, probed) in [
            (UntilReachable, State::Active, true, true),
            (UntilReachable, State::Active, false, false),
            (UntilReachable, State::Inactive, false, false),
            (All, State::Active, false, true),
            (All, State::Inactive, false, true),
            (All, State::Trying, false, true),
            (Inactive, State::Active, true, false),
            (Inactive, State::Inactive, true, true),
            (Inactive, State::Inactive, false, false),
            (Flagged, State::Active, true, true),
            (Flagged, State::Inactive, false, false),
            (Flagged, State::Trying, true, true),
        ] {
            let h = in_mode(mode, state, flag);
            assert_eq!(h.should_probe(), probed, "{mode} {state:?} flag {flag}");
            assert_eq!(SharedHealth::new(h).should_probe(), probed, "shared");
        }
    }

    /// Mode 1 shows every node as probed (`P`) and keeps it so after an
    /// operator's `a` (the next result sets it again, as in Kamailio).
    #[test]
    fn mode_1_probes_everything_and_its_results_set_the_flag() {
        let mut h = in_mode(ProbingMode::All, State::Active, false);
        assert_eq!(h.flags().as_str(), "AP");
        let _ = h.set_state(SetState::parse("a").unwrap());
        assert_eq!(h.flags().as_str(), "AX");
        assert!(h.should_probe(), "mode 1 ignores the flag");
        let _ = h.record_probe(OK);
        assert_eq!(h.flags().as_str(), "AP");
        // A failed call takes it out; it is probed, so not stranded and
        // probed at once; only probes bring it back.
        let out = h.record_call_failure(Failure::Timeout(TWO_S));
        assert!(out.probe_now && !out.stranded);
        assert_eq!(h.record_call_reply(200), None, "probes decide");
        let _ = h.record_probe(OK);
        assert_eq!(h.state(), State::Active);
    }

    /// Mode 0 probes a flagged node until it answers, then no more.
    #[test]
    fn mode_0_probes_until_the_node_answers() {
        let mut h = in_mode(ProbingMode::UntilReachable, State::Inactive, true);
        assert!(h.should_probe());
        assert!(fail(&mut h).is_none(), "still inactive");
        assert!(h.should_probe(), "a failure keeps the flag");
        let t = h.record_probe(OK).expect("back");
        assert_eq!(t.to, State::Active);
        assert_eq!(h.flags().as_str(), "AX", "the flag is cleared");
        assert!(!h.should_probe());
        // A late result changes nothing now.
        assert_eq!(h.record_probe(ProbeResult::Timeout(TWO_S)), None);
        assert_eq!(h.state(), State::Active);
    }

    /// Mode 2: a call failure flags the node, probes bring it back and
    /// clear the flag; an active node is never probed.
    #[test]
    fn mode_2_probes_what_calls_took_out_until_it_is_back() {
        let mut h = in_mode(ProbingMode::Inactive, State::Active, false);
        assert!(!h.should_probe());
        let out = h.record_call_failure(Failure::TransportError);
        assert_eq!(h.flags().as_str(), "IP");
        assert!(out.probe_now, "probed at once");
        assert!(!out.stranded);
        let _ = h.record_probe(OK);
        assert_eq!(h.flags().as_str(), "AX");
        assert!(!h.should_probe());
    }

    /// Modes 0 and 3: a call failure on an unflagged node strands it,
    /// and the outcome says so once; a call reply on one of its dialogs
    /// (nothing else probes it) brings it back, and an operator can.
    #[test]
    fn an_unprobed_node_taken_out_by_a_call_is_stranded_and_says_so() {
        for mode in [ProbingMode::UntilReachable, ProbingMode::Flagged] {
            let mut h = in_mode(mode, State::Active, false);
            let out = h.record_call_failure(Failure::Timeout(TWO_S));
            assert!(out.stranded && !out.probe_now, "{mode}");
            assert!(h.stranded());
            assert!(SharedHealth::new(h.clone()).stranded());
            let again = h.record_call_failure(Failure::Timeout(TWO_S));
            assert!(!again.stranded, "said once, at the transition");
            let _ = h.set_state(SetState::parse("a").unwrap());
            assert!(!h.stranded());
            // A flagged node is probed back instead.
            let mut h = in_mode(mode, State::Active, true);
            let out = h.record_call_failure(Failure::Timeout(TWO_S));
            assert!(!out.stranded && out.probe_now, "{mode}");
        }
        let shared = SharedHealth::new(in_mode(ProbingMode::Flagged, State::Active, false));
        let _ = shared.record_call_failure(Failure::Unreachable);
        assert!(!shared.stranded(), "an ICMP error only makes it suspect");
        let _ = shared.record_call_failure(Failure::TransportError);
        assert!(shared.stranded());
        assert!(shared.record_call_reply(200).is_some(), "a dialog's reply");
        assert!(!shared.stranded());
    }

    #[test]
    fn probing_mode_reads_kamailio_numbers_only() {
        #[derive(Deserialize)]
        struct P {
            mode: ProbingMode,
        }
        for n in 0..=3u8 {
            let p: P = toml::from_str(&format!("mode = {n}")).unwrap();
            assert_eq!(p.mode.number(), n);
        }
        for bad in ["mode = 4", "mode = -1", "mode = \"all\""] {
            assert!(toml::from_str::<P>(bad).is_err(), "{bad}");
        }
        let err = toml::from_str::<P>("mode = 7").err().unwrap().to_string();
        assert!(err.contains("ds_probing_mode"), "{err}");
    }
}
