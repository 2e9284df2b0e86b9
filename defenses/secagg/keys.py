"""Key agreement and the client-to-client channel of secure aggregation.

Every client makes two X25519 key pairs per round: one for the channel that carries its secret
shares to the other clients through the server (ChaCha20-Poly1305 under a key agreed with the
recipient), one for the pairwise masks (a 32-byte mask seed agreed with each neighbour). Agreed
secrets go through HKDF-SHA256 with the purpose, the session and the pair in its info, so the
two uses, rounds and pairs never share a key.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flaudit.core.errors import FlauditError

KEY_BYTES = 32
NONCE_BYTES = 12
CHANNEL_PURPOSE = b"flaudit/secagg/channel"
MASK_PURPOSE = b"flaudit/secagg/pairwise-mask"


class ChannelError(FlauditError, ValueError):
    """A ciphertext failed authentication or was addressed to someone else."""


@dataclass(frozen=True)
class KeyPair:
    private: X25519PrivateKey
    public: bytes  # raw 32-byte public key

    @classmethod
    def generate(cls) -> "KeyPair":
        return cls.from_private_bytes(os.urandom(KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> "KeyPair":
        private = X25519PrivateKey.from_private_bytes(data)
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private, public)

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: bytes, session: int, a: int, b: int) -> bytes:
    """A 32-byte key shared by clients ``a`` and ``b`` (either order) for ``purpose``."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    low, high = sorted((a, b))
    info = purpose + struct.pack(">QQQ", session, low, high)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def pairwise_mask_seed(private: X25519PrivateKey, peer_public: bytes, session: int, a: int, b: int) -> bytes:
    return agree(private, peer_public, MASK_PURPOSE, session, a, b)


def _associated_data(session: int, sender: int, recipient: int) -> bytes:
    return struct.pack(">QQQ", session, sender, recipient)


def seal(key: bytes, session: int, sender: int, recipient: int, plaintext: bytes) -> bytes:
    """nonce || ChaCha20-Poly1305 ciphertext, bound to (session, sender, recipient)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, _associated_data(session, sender, recipient))


def open_sealed(key: bytes, session: int, sender: int, recipient: int, sealed: bytes) -> bytes:
    nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, _associated_data(session, sender, recipient))
    except InvalidTag:
        raise ChannelError(f"the shares sent by client {sender} to client {recipient} failed authentication") from None


def channel_key(private: X25519PrivateKey, peer_public: bytes, session: int, a: int, b: int) -> bytes:
    return agree(private, peer_public, CHANNEL_PURPOSE, session, a, b)
