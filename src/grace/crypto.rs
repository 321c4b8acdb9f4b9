//! Keys for the journal: AES-256-GCM for bodies at rest, Ed25519 for receipts.
//!
//! Bodies carry the card number and the patient's settlement details, so with `body_key_file`
//! they are sealed before they reach the disk (design invariant 10); the receipt id is the
//! associated data, so a sealed body cannot be moved to another item. The card number also
//! becomes a keyed SHA-256 reference (`card_ref`) used for lanes and limits, so the plain number
//! never sits in an index.
//!
//! Receipts are signed with Ed25519 over their canonical JSON (keys sorted, no whitespace —
//! `serde_json`'s default map is ordered) so an auditor can check a printed receipt offline with
//! the public key alone: `lifeline grace verify --public-key KEY receipt.json`.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// Reads 32 key bytes from a file holding 64 hex characters or base64.
pub fn read_key32(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    parse_key32(text.trim())
        .ok_or_else(|| format!("key file {} must hold 32 bytes as 64 hex chars or base64", path.display()))
}

pub fn parse_key32(text: &str) -> Option<[u8; 32]> {
    let bytes = if text.len() == 64 { hex::decode(text).ok()? } else { B64.decode(text).ok()? };
    bytes.try_into().ok()
}

/// Seals and opens journaled bodies.
pub struct BodyCipher {
    cipher: Aes256Gcm,
    card_salt: [u8; 32],
}

impl BodyCipher {
    pub fn new(key: &[u8; 32]) -> BodyCipher {
        let salt: [u8; 32] = Sha256::new().chain_update(b"lifeline card_ref").chain_update(key).finalize().into();
        BodyCipher { cipher: Aes256Gcm::new(key.into()), card_salt: salt }
    }

    /// `nonce (12 bytes) || ciphertext+tag`.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: aad.as_bytes() })
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < 12 + 16 {
            return Err("sealed body is too short".into());
        }
        let (nonce, ct) = sealed.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| "cannot decrypt the journaled body (wrong body_key_file?)".to_string())
    }
}

/// The lane/limit key of a card: keyed when a body key exists, so it is not a plain hash of a
/// guessable number.
pub fn card_ref(cipher: Option<&BodyCipher>, card: &str) -> String {
    let mut h = Sha256::new();
    if let Some(c) = cipher {
        h.update(c.card_salt);
    }
    h.update(b"card:");
    h.update(card.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Signs receipts.
pub struct ReceiptSigner {
    key: SigningKey,
    pub key_id: String,
}

impl ReceiptSigner {
    pub fn from_seed(seed: &[u8; 32]) -> ReceiptSigner {
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(&key.verifying_key());
        ReceiptSigner { key, key_id }
    }

    pub fn public_key_b64(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> String {
        B64.encode(self.key.sign(msg).to_bytes())
    }
}

/// First 8 bytes of SHA-256 of the public key, hex: names the key in every receipt.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A fresh random 32-byte seed.
pub fn random_seed() -> [u8; 32] {
    rand::random()
}

/// Checks an Ed25519 signature (base64) over `msg` with a public key (base64 or hex, 32 bytes).
pub fn verify(public_key: &str, msg: &[u8], signature_b64: &str) -> Result<(), String> {
    let pk = parse_key32(public_key.trim()).ok_or("the public key must be 32 bytes as hex or base64")?;
    let vk = VerifyingKey::from_bytes(&pk).map_err(|_| "not a valid Ed25519 public key")?;
    let sig = B64.decode(signature_b64.trim()).map_err(|_| "the signature is not base64")?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| "the signature must be 64 bytes")?;
    vk.verify(msg, &Signature::from_bytes(&sig)).map_err(|_| "signature does not match".to_string())
}

/// SHA-256 fingerprint of a request body (the idempotency-key binding).
pub fn fingerprint(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let c = BodyCipher::new(&[7u8; 32]);
        let sealed = c.seal("r1", b"card 110101199003071234").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"110101"));
        assert_eq!(c.open("r1", &sealed).unwrap(), b"card 110101199003071234");
        assert!(c.open("r2", &sealed).is_err());
        assert!(BodyCipher::new(&[8u8; 32]).open("r1", &sealed).is_err());
    }

    #[test]
    fn signatures_verify_offline_and_detect_tampering() {
        let s = ReceiptSigner::from_seed(&[1u8; 32]);
        let sig = s.sign(b"{\"amount_fen\":100}");
        verify(&s.public_key_b64(), b"{\"amount_fen\":100}", &sig).unwrap();
        assert!(verify(&s.public_key_b64(), b"{\"amount_fen\":900}", &sig).is_err());
    }

    #[test]
    fn card_refs_are_stable_keyed_and_not_the_number() {
        let c = BodyCipher::new(&[7u8; 32]);
        let a = card_ref(Some(&c), "110101199003071234");
        assert_eq!(a, card_ref(Some(&c), "110101199003071234"));
        assert_ne!(a, card_ref(None, "110101199003071234"));
        assert_eq!(parse_key32(&"ab".repeat(32)), Some([0xab; 32]));
    }
}
