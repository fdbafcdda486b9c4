//! Certificates and inclusion receipts as files, verified offline against the charter.
//!
//! A certificate bundle carries the signed charter, the signed proposal, the registry version the
//! proposal pins (when it is not the charter's own; its content hash must equal the pin) and the
//! signed attestations. [`verify_certificate`] checks every signature, recomputes each attester's
//! weight and the eligible weight from that registry, and accepts only if the attesters of one
//! key hold at least 2/3 of it. A receipt bundle adds one signed ballot and its Merkle path to
//! the certified votes root.

use std::collections::{BTreeMap, BTreeSet};

use kos_protocol::{DecodeError, Message, Payload, PublicKey, payload::*};
use serde::{Deserialize, Serialize};

use crate::{
    FinalKey, ProofStep, finality::two_thirds, registry::Registry, verify_merkle_proof,
    voting_config,
};

/// The `kind` of a certificate bundle.
pub const CERTIFICATE_KIND: &str = "kos-certificate/1";
/// The `kind` of a receipt bundle.
pub const RECEIPT_KIND: &str = "kos-receipt/1";

/// A certificate as a file (JSON): signed messages as lowercase hex of their exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateBundle {
    /// Always [`CERTIFICATE_KIND`].
    pub kind: String,
    /// The CHARTER envelope.
    pub charter: String,
    /// The PROPOSAL envelope.
    pub proposal: String,
    /// The pinned registry version (deterministic CBOR), unless it is the charter's own.
    pub registry: Option<String>,
    /// The TALLY_ATTESTATION envelopes.
    pub attestations: Vec<String>,
}

/// A receipt as a file (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBundle {
    /// Always [`RECEIPT_KIND`].
    pub kind: String,
    /// The certificate the ballot is counted under.
    pub certificate: CertificateBundle,
    /// The counted ballot envelope (VOTE, or VOTE_COMMIT for secret ballots).
    pub ballot: String,
    /// The Merkle path from the ballot's leaf to the certified votes root.
    pub proof: Vec<ProofStep>,
}

/// What a valid certificate proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCertificate {
    /// The federation (charter id).
    pub federation: FederationId,
    /// The proposal.
    pub proposal: ProposalId,
    /// The certified result.
    pub key: FinalKey,
    /// Weight of the attesters of that result.
    pub weight: u64,
    /// Total eligible weight.
    pub eligible: u64,
    /// Number of distinct attesters of that result.
    pub attesters: usize,
}

/// What a valid receipt proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The certificate.
    pub certificate: VerifiedCertificate,
    /// The voter.
    pub voter: PublicKey,
    /// The counted ballot.
    pub ballot: MessageId,
}

/// Why a certificate or receipt does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The `kind` field is not the expected one.
    #[error("not a {expected} file (kind {found:?})")]
    Kind {
        /// Expected kind.
        expected: &'static str,
        /// Found kind.
        found: String,
    },
    /// A field is not hex.
    #[error("{0} is not hex")]
    Hex(&'static str),
    /// A message does not decode or its signature is invalid.
    #[error("{field}: {source}")]
    Message {
        /// Which field.
        field: &'static str,
        /// Why.
        source: DecodeError,
    },
    /// A message is not of the expected type.
    #[error("{0} is not of the expected message type")]
    WrongType(&'static str),
    /// The charter's author is not a founding member.
    #[error("charter author is not a founding member")]
    CharterAuthor,
    /// A message belongs to another federation or proposal.
    #[error("{0} belongs to another federation or proposal")]
    Mismatch(&'static str),
    /// The proposal pins a registry version that is not in the file.
    #[error("the proposal pins registry {0}, which the file does not contain")]
    RegistryMissing(Digest),
    /// The registry in the file does not decode or does not hash to the pin.
    #[error("the registry in the file does not match the proposal's pin {0}")]
    RegistryMismatch(Digest),
    /// An attestation's author has no weight in the pinned registry.
    #[error("attestation {0} is by a key with no weight in the pinned registry")]
    NotMember(usize),
    /// An attestation was signed before the proposal's grace period ended.
    #[error("attestation {0} was signed before attestations were allowed")]
    TooEarly(usize),
    /// No result has attestations from 2/3 of the eligible weight.
    #[error("no result has 2/3 of the eligible weight ({weight} of {eligible})")]
    NoQuorum {
        /// Best weight found.
        weight: u64,
        /// Eligible weight.
        eligible: u64,
    },
    /// The ballot is not a ballot of this proposal, or its path does not lead to the root.
    #[error("the ballot is not under the certified votes root")]
    NotIncluded,
}

fn decode(field: &'static str, hex_str: &str) -> Result<Message, CertificateError> {
    let bytes = hex::decode(hex_str).map_err(|_| CertificateError::Hex(field))?;
    Message::decode(&bytes).map_err(|source| CertificateError::Message { field, source })
}

/// Verifies a certificate offline: signatures, membership and weights against the pinned registry
/// version (the charter's, or the one in the file whose hash equals the pin), and 2/3 agreement.
pub fn verify_certificate(
    bundle: &CertificateBundle,
) -> Result<VerifiedCertificate, CertificateError> {
    if bundle.kind != CERTIFICATE_KIND {
        return Err(CertificateError::Kind {
            expected: CERTIFICATE_KIND,
            found: bundle.kind.clone(),
        });
    }
    let charter_msg = decode("charter", &bundle.charter)?;
    let Payload::Charter(charter) = charter_msg.payload() else {
        return Err(CertificateError::WrongType("charter"));
    };
    if !charter.members.iter().any(|m| m.key == charter_msg.author()) {
        return Err(CertificateError::CharterAuthor);
    }
    let federation = charter_msg.id();
    let proposal_msg = decode("proposal", &bundle.proposal)?;
    let Payload::Proposal(proposal) = proposal_msg.payload() else {
        return Err(CertificateError::WrongType("proposal"));
    };
    if proposal.federation != federation {
        return Err(CertificateError::Mismatch("proposal"));
    }
    let pin = proposal.registry.hash;
    let base = Registry::from_charter(charter);
    let registry = if base.hash() == pin {
        base
    } else {
        let hex_str = bundle.registry.as_ref().ok_or(CertificateError::RegistryMissing(pin))?;
        let bytes = hex::decode(hex_str).map_err(|_| CertificateError::Hex("registry"))?;
        let reg: Registry =
            kos_protocol::from_cbor(&bytes).map_err(|_| CertificateError::RegistryMismatch(pin))?;
        if reg.hash() != pin {
            return Err(CertificateError::RegistryMismatch(pin));
        }
        reg
    };
    let config = voting_config(charter, proposal);
    let weight_of =
        |k: &PublicKey| registry.member(k).map_or(0, |m| registry.weight(m, config.weighting));
    let eligible = registry
        .members
        .values()
        .fold(0u64, |a, m| a.saturating_add(registry.weight(m, config.weighting)));
    let close = proposal.timeline.reveal_end_ms.unwrap_or(proposal.timeline.voting_end_ms);
    let earliest = if config.early_close { proposal.timeline.discussion_end_ms } else { close };
    let earliest = earliest.saturating_add(charter.timing.grace_ms);
    let mut by_key: BTreeMap<FinalKey, BTreeSet<PublicKey>> = BTreeMap::new();
    for (i, a) in bundle.attestations.iter().enumerate() {
        let msg = decode("attestation", a)?;
        let Payload::TallyAttestation(att) = msg.payload() else {
            return Err(CertificateError::WrongType("attestation"));
        };
        if att.federation != federation || att.proposal != proposal_msg.id() {
            return Err(CertificateError::Mismatch("attestation"));
        }
        if weight_of(&msg.author()) == 0 {
            return Err(CertificateError::NotMember(i));
        }
        if msg.header().created_ms < earliest {
            return Err(CertificateError::TooEarly(i));
        }
        let key = FinalKey {
            revision: att.revision,
            votes_root: att.votes_root,
            outcome: att.outcome,
            winner: att.winner,
        };
        by_key.entry(key).or_default().insert(msg.author());
    }
    let weighed = by_key.into_iter().map(|(key, who)| {
        let w = who.iter().fold(0u64, |a, k| a.saturating_add(weight_of(k)));
        (key, w, who.len())
    });
    let best = weighed.max_by_key(|(key, w, _)| (*w, std::cmp::Reverse(*key)));
    match best {
        Some((key, weight, attesters)) if two_thirds(weight, eligible) => Ok(VerifiedCertificate {
            federation,
            proposal: proposal_msg.id(),
            key,
            weight,
            eligible,
            attesters,
        }),
        best => Err(CertificateError::NoQuorum { weight: best.map_or(0, |b| b.1), eligible }),
    }
}

/// Verifies a receipt offline: its certificate, then that the ballot is a signed ballot of the
/// certified proposal whose leaf leads to the certified votes root.
pub fn verify_receipt(bundle: &ReceiptBundle) -> Result<VerifiedReceipt, CertificateError> {
    if bundle.kind != RECEIPT_KIND {
        return Err(CertificateError::Kind { expected: RECEIPT_KIND, found: bundle.kind.clone() });
    }
    let certificate = verify_certificate(&bundle.certificate)?;
    let ballot = decode("ballot", &bundle.ballot)?;
    let proposal = match ballot.payload() {
        Payload::Vote(v) => v.proposal,
        Payload::VoteCommit(v) => v.proposal,
        _ => return Err(CertificateError::WrongType("ballot")),
    };
    if proposal != certificate.proposal {
        return Err(CertificateError::Mismatch("ballot"));
    }
    if !verify_merkle_proof(&ballot.id(), &bundle.proof, &certificate.key.votes_root) {
        return Err(CertificateError::NotIncluded);
    }
    Ok(VerifiedReceipt { voter: ballot.author(), ballot: ballot.id(), certificate })
}
