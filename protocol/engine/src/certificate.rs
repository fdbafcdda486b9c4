//! Certificates and inclusion receipts as files, verified offline against the charter.
//!
//! A certificate bundle carries the signed charter, the signed proposal, the registry version the
//! proposal pins (when it is not the charter's own: its exact deterministic CBOR, whose content
//! hash is the pin) and the signed commits. [`verify_certificate`] checks every signature, hashes
//! the registry bytes as they are in the file, recomputes each committer's weight and the
//! eligible weight from that registry, and accepts only if the commits of one round for one key
//! come from members holding more than 2/3 of it (`docs/protocol.md` §10, `docs/governance.md`
//! §6). Nothing is re-encoded. A receipt bundle adds one signed ballot and its Merkle path to the
//! certified votes root.

use std::collections::{BTreeMap, BTreeSet};

use kos_protocol::{CborError, DecodeError, Message, Payload, PublicKey, payload::*};
use serde::{Deserialize, Serialize};

use crate::{
    FinalKey, ProofStep,
    finality::over_two_thirds,
    registry::{Registry, non_canonical_reason},
    verify_merkle_proof, voting_config,
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
    /// The pinned registry version, unless it is the charter's own: exactly the bytes whose
    /// hash is the pin ([`Registry::encode`]).
    pub registry: Option<String>,
    /// The TALLY_ATTESTATION envelopes: the commits of the certificate's round.
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
    /// The attestation round whose commits certify it.
    pub round: u32,
    /// The certified result.
    pub key: FinalKey,
    /// Weight of the members who committed that result in that round.
    pub weight: u64,
    /// Total eligible weight.
    pub eligible: u64,
    /// Number of distinct members who committed that result in that round.
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
    /// The registry in the file is not a registry version in its deterministic CBOR: the file
    /// must carry exactly the bytes that were hashed, so no other encoding is accepted.
    #[error("the registry in the file is not the deterministic CBOR of a registry version: {0}")]
    RegistryEncoding(String),
    /// The registry bytes in the file hash to another version than the one the proposal pins.
    #[error("the registry in the file hashes to {found}, not to the proposal's pin {pin}")]
    RegistryMismatch {
        /// The proposal's pin.
        pin: Digest,
        /// `SHA-256(REGISTRY_DOMAIN ‖ bytes)` of the bytes in the file.
        found: Digest,
    },
    /// An attestation's author has no weight in the pinned registry.
    #[error("attestation {0} is by a key with no weight in the pinned registry")]
    NotMember(usize),
    /// An attestation was signed before its round's attestations were allowed.
    #[error(
        "attestation {index} (round {round}) was signed at {}, {} before its round opened at {}",
        kos_protocol::time::date_ms(*signed_ms),
        kos_protocol::time::duration_ms(opens_ms - signed_ms),
        kos_protocol::time::date_ms(*opens_ms)
    )]
    TooEarly {
        /// Position in the file.
        index: usize,
        /// Its round.
        round: u32,
        /// Its signed time.
        signed_ms: u64,
        /// The earliest time for its round: `earliest + round × grace_ms`.
        opens_ms: u64,
    },
    /// No result has commits in one round from more than 2/3 of the eligible weight.
    #[error(
        "no result has commits in one round from more than 2/3 of the eligible weight \
         ({weight} of {eligible})"
    )]
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

/// The registry version a certificate file names: the charter's own if it is the pin, else the
/// bytes in the file, hashed as they are and decoded only if they are exactly a registry
/// version's deterministic CBOR.
fn pinned_registry(
    charter: &Charter,
    pin: Digest,
    file: Option<&str>,
) -> Result<Registry, CertificateError> {
    let base = Registry::from_charter(charter);
    if base.hash() == pin {
        return Ok(base);
    }
    let hex_str = file.ok_or(CertificateError::RegistryMissing(pin))?;
    let bytes = hex::decode(hex_str).map_err(|_| CertificateError::Hex("registry"))?;
    let reg = Registry::decode(&bytes).map_err(|e| {
        CertificateError::RegistryEncoding(match e {
            CborError::NonCanonical => non_canonical_reason(&bytes).to_owned(),
            other => other.to_string(),
        })
    })?;
    let found = Registry::hash_bytes(&bytes);
    if found != pin {
        return Err(CertificateError::RegistryMismatch { pin, found });
    }
    Ok(reg)
}

/// Verifies a certificate offline: signatures, membership and weights against the pinned registry
/// version (the charter's, or the exact bytes in the file whose hash is the pin), each
/// attestation's round window, and commits of one round for one result from more than 2/3 of
/// the eligible weight. Prepares are checked like commits and never counted.
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
    let registry = pinned_registry(charter, proposal.registry.hash, bundle.registry.as_deref())?;
    let config = voting_config(charter, proposal);
    let weight_of =
        |k: &PublicKey| registry.member(k).map_or(0, |m| registry.weight(m, config.weighting));
    let eligible = registry
        .members
        .values()
        .fold(0u64, |a, m| a.saturating_add(registry.weight(m, config.weighting)));
    let close = proposal.timeline.reveal_end_ms.unwrap_or(proposal.timeline.voting_end_ms);
    let earliest = if config.early_close { proposal.timeline.discussion_end_ms } else { close };
    let grace = charter.timing.grace_ms;
    let earliest = earliest.saturating_add(grace);
    let mut by_round: BTreeMap<(u32, FinalKey), BTreeSet<PublicKey>> = BTreeMap::new();
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
        let opens_ms = earliest.saturating_add(u64::from(att.round).saturating_mul(grace));
        let signed_ms = msg.header().created_ms;
        if signed_ms < opens_ms {
            return Err(CertificateError::TooEarly {
                index: i,
                round: att.round,
                signed_ms,
                opens_ms,
            });
        }
        if att.phase != AttestationPhase::Commit {
            continue;
        }
        let key = FinalKey {
            revision: att.revision,
            votes_root: att.votes_root,
            outcome: att.outcome,
            winner: att.winner,
        };
        by_round.entry((att.round, key)).or_default().insert(msg.author());
    }
    let weighed = by_round.into_iter().map(|(slot, who)| {
        let w = who.iter().fold(0u64, |a, k| a.saturating_add(weight_of(k)));
        (slot, w, who.len())
    });
    // The heaviest; among equals the lowest (round, key), so the answer is one function of the
    // file whatever the order of its attestations.
    let best = weighed.max_by_key(|(slot, w, _)| (*w, std::cmp::Reverse(*slot)));
    match best {
        Some(((round, key), weight, attesters)) if over_two_thirds(weight, eligible) => {
            Ok(VerifiedCertificate {
                federation,
                proposal: proposal_msg.id(),
                round,
                key,
                weight,
                eligible,
                attesters,
            })
        }
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
