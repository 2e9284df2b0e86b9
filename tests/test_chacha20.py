"""torch.ops.flaudit.chacha20: RFC 8439 test vectors, and bit-equality with `cryptography`'s
ChaCha20 for random keys, nonces, counters and lengths, on every CPU code path (SSE2, AVX2,
AVX-512 where the CPU has them), on CUDA where available, and in the fallback."""

from __future__ import annotations

import os
import struct
from unittest import mock

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flaudit.defenses.secagg import chacha20, chacha20_reference
from flaudit.defenses.secagg import masking
from flaudit.core import native

needs_kernels = pytest.mark.skipif(not native.extension_available(), reason="flaudit._C not built")
needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.has_cuda_kernels()),
    reason="needs a CUDA device and flaudit._C built with its CUDA kernels",
)


def as_tensor(data: bytes, device="cpu") -> torch.Tensor:
    return torch.tensor(list(data), dtype=torch.uint8, device=device)


def openssl_words(key: bytes, nonce: bytes, counter: int, n_words: int) -> np.ndarray:
    """The keystream by cryptography (OpenSSL): the oracle, independent of our code."""
    cipher = Cipher(algorithms.ChaCha20(key, struct.pack("<I", counter) + nonce), mode=None)
    return np.frombuffer(cipher.encryptor().update(bytes(4 * n_words)), dtype="<u4").view(np.int32)


def kernel(key: bytes, nonce: bytes, counter: int, n_words: int, device="cpu") -> np.ndarray:
    out = torch.ops.flaudit.chacha20(as_tensor(key, device), as_tensor(nonce, device), counter, n_words)
    assert out.dtype == torch.int32 and out.shape == (n_words,) and out.device.type == device
    return out.cpu().numpy()


# RFC 8439 Appendix A.1: the block function (key, nonce, counter) -> first 64 keystream bytes.
RFC_BLOCKS = [
    (bytes(32), bytes(12), 0,
     "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
     "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"),
    (bytes(32), bytes(12), 1,
     "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
     "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f"),
    (bytes(31) + b"\x01", bytes(12), 1,
     "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a"
     "8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0"),
    (b"\x00\xff" + bytes(30), bytes(12), 2,
     "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca"
     "13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096"),
    (bytes(32), bytes(11) + b"\x02", 0,
     "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7"
     "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d"),
]

# RFC 8439 section 2.3.2: the serialized block for key 00..1f, nonce 00000009 0000004a 00000000,
# counter 1, as words.
RFC_232_WORDS = [
    0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3, 0xC7F4D1C7, 0x0368C033, 0x9AAA2204, 0x4E6CD4C3,
    0x466482D2, 0x09AA9F07, 0x05D7C214, 0xA2028BD9, 0xD19C12B5, 0xB94E16DE, 0xE883D0CB, 0x4E3C50A2,
]

# RFC 8439 section 2.4.2: encryption of the sunscreen text (counter 1), 114 bytes over two blocks.
RFC_242_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
RFC_242_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)


def rfc_cases():
    return [
        *[(key, nonce, counter, 16, bytes.fromhex(block)) for key, nonce, counter, block in RFC_BLOCKS],
        (bytes(range(32)), bytes.fromhex("000000090000004a00000000"), 1, 16,
         struct.pack("<16I", *RFC_232_WORDS)),
    ]


def check_rfc_vectors(stream) -> None:
    for key, nonce, counter, n_words, expected in rfc_cases():
        assert stream(key, nonce, counter, n_words).tobytes() == expected
    key, nonce = bytes(range(32)), bytes.fromhex("000000000000004a00000000")
    words = stream(key, nonce, 1, (len(RFC_242_PLAINTEXT) + 3) // 4)
    keystream = words.astype("<i4").tobytes()[: len(RFC_242_PLAINTEXT)]
    assert bytes(a ^ b for a, b in zip(RFC_242_PLAINTEXT, keystream)) == RFC_242_CIPHERTEXT


def test_rfc8439_vectors_cpu_kernel(isa):
    check_rfc_vectors(kernel)


def test_rfc8439_vectors_reference():
    check_rfc_vectors(lambda k, n, c, w: chacha20_reference(as_tensor(k), as_tensor(n), c, w).numpy())


@needs_cuda_kernels
def test_rfc8439_vectors_cuda_kernel():
    check_rfc_vectors(lambda k, n, c, w: kernel(k, n, c, w, device="cuda"))


counters = st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 40, 2**32 - 1), st.integers(0, 40))


@st.composite
def stream_requests(draw):
    """Random key, nonce, counter (often near 2**32) and a length the counter can reach."""
    key, nonce = draw(st.binary(min_size=32, max_size=32)), draw(st.binary(min_size=12, max_size=12))
    counter = draw(counters)
    max_words = min(700, 16 * (2**32 - counter))
    return key, nonce, counter, draw(st.integers(0, max_words))


@needs_kernels
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=stream_requests())
def test_cpu_kernel_equals_cryptography(isa, request):
    key, nonce, counter, n_words = request
    assert np.array_equal(kernel(key, nonce, counter, n_words), openssl_words(key, nonce, counter, n_words))


@needs_kernels
@pytest.mark.parametrize("n_words", [16 * 4096, 16 * 4096 + 7, 1_000_003])
def test_cpu_kernel_long_streams_split_across_threads(isa, n_words):
    key, nonce = os.urandom(32), os.urandom(12)
    counter = 2**32 - (n_words + 15) // 16  # the last block is block 2**32 - 1
    assert np.array_equal(kernel(key, nonce, counter, n_words), openssl_words(key, nonce, counter, n_words))


@needs_cuda_kernels
@settings(max_examples=30, deadline=None)
@given(request=stream_requests())
def test_cuda_kernel_equals_cryptography(request):
    key, nonce, counter, n_words = request
    assert np.array_equal(kernel(key, nonce, counter, n_words, "cuda"), openssl_words(key, nonce, counter, n_words))


def test_fallback_without_extension_equals_cryptography():
    key, nonce = os.urandom(32), os.urandom(12)
    with mock.patch.object(masking, "extension_available", return_value=False):
        out = chacha20(as_tensor(key), as_tensor(nonce), 7, 1000)
    assert np.array_equal(out.numpy(), openssl_words(key, nonce, 7, 1000))


BAD_INPUTS = [
    # (key, nonce, counter, n_words, exception, message)
    (torch.zeros(32, dtype=torch.int32), torch.zeros(12, dtype=torch.uint8), 0, 4, TypeError, "key must be uint8"),
    (torch.zeros(31, dtype=torch.uint8), torch.zeros(12, dtype=torch.uint8), 0, 4, ValueError, "key must hold 32 bytes"),
    (torch.zeros(32, dtype=torch.uint8), torch.zeros(16, dtype=torch.uint8), 0, 4, ValueError, "nonce must hold 12 bytes"),
    (torch.zeros(32, dtype=torch.uint8), torch.zeros(12, dtype=torch.uint8), -1, 4, ValueError, "counter must be in"),
    (torch.zeros(32, dtype=torch.uint8), torch.zeros(12, dtype=torch.uint8), 2**32, 4, ValueError, "counter must be in"),
    (torch.zeros(32, dtype=torch.uint8), torch.zeros(12, dtype=torch.uint8), 0, -1, ValueError, "n_words must be >= 0"),
    (torch.zeros(32, dtype=torch.uint8), torch.zeros(12, dtype=torch.uint8), 2**32 - 1, 17, ValueError,
     "block counter would overflow"),
]


@pytest.mark.parametrize("key,nonce,counter,n_words,exc,message", BAD_INPUTS)
def test_bad_inputs_raise_the_same_errors_on_every_path(key, nonce, counter, n_words, exc, message):
    with pytest.raises(exc, match=message):
        chacha20_reference(key, nonce, counter, n_words)
    if native.extension_available():
        with pytest.raises(exc, match=message):
            torch.ops.flaudit.chacha20(key, nonce, counter, n_words)


def test_counter_limit_matches_cryptography():
    """Block 2**32 - 1 is the last one: both refuse to go past it, neither wraps silently."""
    key, nonce = os.urandom(32), os.urandom(12)
    last = openssl_words(key, nonce, 2**32 - 1, 16)
    assert np.array_equal(chacha20(as_tensor(key), as_tensor(nonce), 2**32 - 1, 16).numpy(), last)
    with pytest.raises(ValueError, match="overflow"):
        openssl_words(key, nonce, 2**32 - 1, 17)
    with pytest.raises(ValueError, match="overflow"):
        chacha20(as_tensor(key), as_tensor(nonce), 2**32 - 1, 17)
