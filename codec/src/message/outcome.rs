//! The outcome of a query or watch (§5.2.1): what an Answer or Notify ends
//! with, its classes and error reasons, and how B can be reached.

use bytes::BufMut;

use crate::error::DecodeError;
use crate::reader::Reader;

/// How B can be reached while attached (§5.2.2): a non-empty set of
/// {packet data, SMS}. Invariant: bits 0-1 only, at least one set.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reachability(u8);

impl Reachability {
    /// Reachable over packet data only.
    pub const PACKET_DATA: Reachability = Reachability(0x01);
    /// Reachable by SMS only.
    pub const SMS: Reachability = Reachability(0x02);
    /// Reachable over packet data and by SMS.
    pub const PACKET_DATA_AND_SMS: Reachability = Reachability(0x03);

    /// The set for a wire byte, if valid.
    pub const fn from_bits(bits: u8) -> Option<Reachability> {
        match bits {
            0x01..=0x03 => Some(Reachability(bits)),
            _ => None,
        }
    }
    /// The wire byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Reachable over packet data.
    pub const fn packet_data(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// Reachable by SMS.
    pub const fn sms(self) -> bool {
        self.0 & 0x02 != 0
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Reachability {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Reachability> {
        Ok(Reachability(u.int_in_range(0x01..=0x03)?))
    }
}

impl core::fmt::Debug for Reachability {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match (self.packet_data(), self.sms()) {
            (true, true) => "PacketDataAndSms",
            (true, false) => "PacketData",
            _ => "Sms",
        })
    }
}

/// Why a query failed (§5.2.3).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorReason {
    /// The OGPS found no network for the target (step 5).
    UnknownNetwork = 0x01,
    /// A forwarding role received hop limit 0.
    HopLimitExceeded = 0x02,
    /// The WA's deadline passed with no answer (step 13).
    Timeout = 0x03,
    /// The WA could not authenticate A (step 2).
    Unauthenticated = 0x04,
    /// A's prepay credit does not cover the query (step 2).
    CreditExhausted = 0x05,
    /// The PS could not make the charge record durable (step 11).
    ChargingUnavailable = 0x06,
    /// Policy refused it (wrong link, spoofed watcher).
    Refused = 0x07,
    /// Any other failure in the answering network.
    Internal = 0x08,
}

impl ErrorReason {
    /// The reason for a code, if defined.
    pub const fn from_code(code: u8) -> Option<ErrorReason> {
        Some(match code {
            0x01 => ErrorReason::UnknownNetwork,
            0x02 => ErrorReason::HopLimitExceeded,
            0x03 => ErrorReason::Timeout,
            0x04 => ErrorReason::Unauthenticated,
            0x05 => ErrorReason::CreditExhausted,
            0x06 => ErrorReason::ChargingUnavailable,
            0x07 => ErrorReason::Refused,
            0x08 => ErrorReason::Internal,
            _ => return None,
        })
    }

    /// Stable label (metrics, logs, charge-record dumps).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorReason::UnknownNetwork => "unknown_network",
            ErrorReason::HopLimitExceeded => "hop_limit_exceeded",
            ErrorReason::Timeout => "timeout",
            ErrorReason::Unauthenticated => "unauthenticated",
            ErrorReason::CreditExhausted => "credit_exhausted",
            ErrorReason::ChargingUnavailable => "charging_unavailable",
            ErrorReason::Refused => "refused",
            ErrorReason::Internal => "internal",
        }
    }
}

/// The result of a query or watch (§5.2.1).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// B is attached and reachable as given; confirmed `confirmed_age_s` ago.
    Attached {
        /// How B can be reached.
        reach: Reachability,
        /// Seconds since a device of B last confirmed the status.
        confirmed_age_s: u32,
    },
    /// B is detached; confirmed `confirmed_age_s` ago.
    Detached {
        /// Seconds since a device of B last confirmed the status.
        confirmed_age_s: u32,
    },
    /// No such subscriber, or not permitted: deliberately one outcome.
    NotAvailable,
    /// The answering side sheds load; retry no sooner than `retry_after_ms`.
    Overloaded {
        /// Milliseconds to wait before retrying.
        retry_after_ms: u32,
    },
    /// The query failed for the reason given.
    Error(ErrorReason),
}

const OUTCOME_ATTACHED: u8 = 0x01;
const OUTCOME_DETACHED: u8 = 0x02;
const OUTCOME_NOT_AVAILABLE: u8 = 0x03;
const OUTCOME_OVERLOADED: u8 = 0x04;
const OUTCOME_ERROR: u8 = 0x05;

/// What an outcome tells A, in five classes: the one classification that
/// metrics, charge-record dumps, the simulation and the load harness count
/// by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutcomeClass {
    /// B's status: attached.
    Attached,
    /// B's status: detached.
    Detached,
    /// Not available (unknown, or not permitted).
    NotAvailable,
    /// Shed for load, with a retry-after.
    Overloaded,
    /// Failed for a reason.
    Error,
}

impl OutcomeClass {
    /// Every class, in counter order.
    pub const ALL: [OutcomeClass; 5] = [
        OutcomeClass::Attached,
        OutcomeClass::Detached,
        OutcomeClass::NotAvailable,
        OutcomeClass::Overloaded,
        OutcomeClass::Error,
    ];

    /// Stable label.
    pub const fn name(self) -> &'static str {
        match self {
            OutcomeClass::Attached => "attached",
            OutcomeClass::Detached => "detached",
            OutcomeClass::NotAvailable => "not_available",
            OutcomeClass::Overloaded => "overloaded",
            OutcomeClass::Error => "error",
        }
    }

    /// Position in [`OutcomeClass::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl Outcome {
    /// Its class.
    pub const fn class(&self) -> OutcomeClass {
        match self {
            Outcome::Attached { .. } => OutcomeClass::Attached,
            Outcome::Detached { .. } => OutcomeClass::Detached,
            Outcome::NotAvailable => OutcomeClass::NotAvailable,
            Outcome::Overloaded { .. } => OutcomeClass::Overloaded,
            Outcome::Error(_) => OutcomeClass::Error,
        }
    }

    /// Whether it shows B's status: what a charge record is raised for
    /// (step 11).
    pub const fn shows_status(&self) -> bool {
        matches!(self, Outcome::Attached { .. } | Outcome::Detached { .. })
    }

    /// A label naming the class, or for an error its reason.
    pub const fn name(&self) -> &'static str {
        match self {
            Outcome::Error(reason) => reason.name(),
            other => other.class().name(),
        }
    }

    /// Bytes of code and detail on the wire.
    pub const fn encoded_len(&self) -> usize {
        match self {
            Outcome::Attached { .. } => 6,
            Outcome::Detached { .. } | Outcome::Overloaded { .. } => 5,
            Outcome::NotAvailable => 1,
            Outcome::Error(_) => 2,
        }
    }

    /// Detail size for a code, if the code is defined.
    const fn detail_len(code: u8) -> Option<usize> {
        match code {
            OUTCOME_ATTACHED => Some(5),
            OUTCOME_DETACHED | OUTCOME_OVERLOADED => Some(4),
            OUTCOME_NOT_AVAILABLE => Some(0),
            OUTCOME_ERROR => Some(1),
            _ => None,
        }
    }

    /// Decodes code and detail filling `r` exactly; the caller has checked the
    /// body length against [`Outcome::detail_len`] of the code.
    fn decode(code: u8, r: &mut Reader<'_>) -> Result<Outcome, DecodeError> {
        let short = DecodeError::UnknownOutcome(code);
        Ok(match code {
            OUTCOME_ATTACHED => {
                let bits = r.u8().ok_or(short)?;
                let reach =
                    Reachability::from_bits(bits).ok_or(DecodeError::InvalidReachability(bits))?;
                Outcome::Attached {
                    reach,
                    confirmed_age_s: r.u32().ok_or(short)?,
                }
            }
            OUTCOME_DETACHED => Outcome::Detached {
                confirmed_age_s: r.u32().ok_or(short)?,
            },
            OUTCOME_NOT_AVAILABLE => Outcome::NotAvailable,
            OUTCOME_OVERLOADED => Outcome::Overloaded {
                retry_after_ms: r.u32().ok_or(short)?,
            },
            OUTCOME_ERROR => {
                let reason = r.u8().ok_or(short)?;
                Outcome::Error(
                    ErrorReason::from_code(reason)
                        .ok_or(DecodeError::UnknownErrorReason(reason))?,
                )
            }
            _ => return Err(short),
        })
    }

    pub(super) fn encode<B: BufMut>(&self, buf: &mut B) {
        match *self {
            Outcome::Attached {
                reach,
                confirmed_age_s,
            } => {
                buf.put_u8(OUTCOME_ATTACHED);
                buf.put_u8(reach.bits());
                buf.put_u32(confirmed_age_s);
            }
            Outcome::Detached { confirmed_age_s } => {
                buf.put_u8(OUTCOME_DETACHED);
                buf.put_u32(confirmed_age_s);
            }
            Outcome::NotAvailable => buf.put_u8(OUTCOME_NOT_AVAILABLE),
            Outcome::Overloaded { retry_after_ms } => {
                buf.put_u8(OUTCOME_OVERLOADED);
                buf.put_u32(retry_after_ms);
            }
            Outcome::Error(reason) => {
                buf.put_u8(OUTCOME_ERROR);
                buf.put_u8(reason as u8);
            }
        }
    }
}

/// Decodes the outcome that ends an Answer or Notify body: the code, then a
/// detail that must fill the rest exactly.
pub(super) fn decode_outcome(
    r: &mut Reader<'_>,
    bad_len: DecodeError,
) -> Result<Outcome, DecodeError> {
    let code = r.u8().ok_or(bad_len)?;
    let detail_len = Outcome::detail_len(code).ok_or(DecodeError::UnknownOutcome(code))?;
    if r.remaining() != detail_len {
        return Err(bad_len);
    }
    Outcome::decode(code, r)
}
