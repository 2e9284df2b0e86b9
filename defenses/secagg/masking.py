"""Masking in Z_2^32: the compiled ops ``torch.ops.flaudit.{chacha20, secagg_mask,
secagg_unmask}`` behind Python functions, each with its reference next to it.

A mask is the ChaCha20 keystream (RFC 8439) of a 32-byte seed, with the all-zero nonce and
counter 0, read as little-endian 32-bit words. A client's masked vector is its quantized update
plus every mask with its sign, modulo 2^32; the server adds the masked vectors and removes the
masks that do not cancel. The kernels (csrc/secagg_mask.{cpp,cu}) fuse quantization, mask
expansion and modular addition in one pass; the references expand the same keystreams with
``cryptography``'s ChaCha20 (OpenSSL) and do the arithmetic in numpy: they are the fallback when
the extension is not built and the oracle of the parity tests. All paths give the same integers.
"""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from flaudit.defenses.secagg.fixed_point import INT32_MAX, FixedPoint
from flaudit.core.errors import InvalidUpdateError
from flaudit.core.native import extension_available, has_cuda_kernels

__all__ = [
    "MaskedUpdate",
    "chacha20",
    "chacha20_reference",
    "mask_update",
    "quantize_and_mask",
    "secagg_mask_reference",
    "secagg_unmask_reference",
    "seeds_tensor",
    "unmask_sum",
]

SEED_BYTES = 32
MAX_STREAM_WORDS = 2**36  # 2**32 blocks of 16 words


@dataclass(frozen=True)
class MaskedUpdate:
    """A client's upload: the masked vector (int32 holding Z_2^32) and how many values were
    clipped to the quantizer's range (the client knows it; the server does not)."""

    masked: torch.Tensor
    clipped: int


# ---- ChaCha20 keystream -------------------------------------------------------------------


def chacha20(key: torch.Tensor, nonce: torch.Tensor, counter: int, n_words: int) -> torch.Tensor:
    """The RFC 8439 keystream of ``key`` (uint8[32]) and ``nonce`` (uint8[12]) from block
    ``counter`` on, as ``n_words`` little-endian 32-bit words in an int32 tensor."""
    if _use_kernel(key):
        return torch.ops.flaudit.chacha20(key, nonce, counter, n_words)
    return chacha20_reference(key, nonce, counter, n_words)


def chacha20_reference(key: torch.Tensor, nonce: torch.Tensor, counter: int, n_words: int) -> torch.Tensor:
    """``chacha20`` by ``cryptography`` (OpenSSL), with the op's checks."""
    _check_chacha20_inputs(key, nonce, counter, n_words)
    words = _keystream(_bytes_of(key), n_words, _bytes_of(nonce), counter)
    return torch.from_numpy(words.view(np.int32).copy()).to(key.device)


def _keystream(seed: bytes, n_words: int, nonce: bytes = bytes(12), counter: int = 0) -> np.ndarray:
    """uint32 keystream words; cryptography's ChaCha20 nonce is the 4-byte counter + the nonce."""
    encryptor = Cipher(algorithms.ChaCha20(seed, struct.pack("<I", counter) + nonce), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * n_words)), dtype="<u4").astype(np.uint32)


# ---- client side: quantize + mask ---------------------------------------------------------


def mask_update(
    update: torch.Tensor,
    seeds: Sequence[bytes],
    signs: Sequence[int],
    *,
    clip_range: float,
    quant_bits: int,
    weight: int = 1,
) -> torch.Tensor:
    """A client's masked vector in Z_2^32 (int32): ``update`` (float32, flat) clipped to
    ``[-clip_range, clip_range]``, times ``weight``, on the ``quant_bits`` fixed-point grid (see
    ``FixedPoint``), plus the ChaCha20 mask of every 32-byte seed with its sign (+1 / -1).

    Raises InvalidUpdateError for NaN/inf values. ``quantize_and_mask`` also returns the count of
    clipped values.
    """
    return quantize_and_mask(
        update, seeds, signs, fixed_point=FixedPoint(clip_range, quant_bits), weight=weight
    ).masked


def quantize_and_mask(
    update: torch.Tensor,
    seeds: Sequence[bytes],
    signs: Sequence[int],
    *,
    fixed_point: FixedPoint,
    weight: int = 1,
) -> MaskedUpdate:
    """``mask_update`` with the quantizer given as a FixedPoint; returns the clipped count too."""
    seed_rows = seeds_tensor(seeds)
    signs = _as_signs(signs)
    scale = fixed_point.scale(weight)
    if _use_kernel(update):
        masked, counts = torch.ops.flaudit.secagg_mask(
            update.contiguous(), seed_rows, signs, fixed_point.clip_range, scale
        )
    else:
        masked, counts = secagg_mask_reference(update, seed_rows, signs, fixed_point.clip_range, scale)
    clipped, non_finite = (int(c) for c in counts.tolist())
    if non_finite:
        raise InvalidUpdateError(f"update has {non_finite} non-finite values; it cannot be quantized")
    return MaskedUpdate(masked, clipped)


def secagg_mask_reference(
    update: torch.Tensor, seeds: torch.Tensor, signs: Sequence[int], clip_range: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.flaudit.secagg_mask`` in numpy: (masked int32, counts int64 [clipped,
    non-finite]); non-finite values quantize to 0."""
    _check_mask_inputs(update, seeds, signs, clip_range, scale)
    x = update.detach().cpu().numpy().astype(np.float64)
    finite = np.isfinite(x)
    clipped = np.clip(x, -clip_range, clip_range)
    n_clipped = int(np.count_nonzero(finite & (clipped != x)))
    quantized = np.where(finite, np.rint(clipped * scale), 0.0)
    acc = quantized.astype(np.int64).astype(np.uint32)
    _add_masks(acc, seeds, signs)
    counts = torch.tensor([n_clipped, int(np.count_nonzero(~finite))], dtype=torch.int64)
    return torch.from_numpy(acc.view(np.int32)).to(update.device), counts.to(update.device)


# ---- server side: sum + unmask + dequantize -----------------------------------------------


def unmask_sum(
    masked: torch.Tensor, seeds: Sequence[bytes], signs: Sequence[int], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's unmasking: ``masked`` [K, N] int32 (one masked vector per row) summed,
    plus each seed's mask with its sign, modulo 2^32. Returns (the sum as int32, the sum read
    as a signed integer times ``scale``, float32)."""
    seed_rows = seeds_tensor(seeds)
    signs = _as_signs(signs)
    if _use_kernel(masked):
        return torch.ops.flaudit.secagg_unmask(masked.contiguous(), seed_rows, signs, float(scale))
    return secagg_unmask_reference(masked, seed_rows, signs, float(scale))


def secagg_unmask_reference(
    masked: torch.Tensor, seeds: torch.Tensor, signs: Sequence[int], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.flaudit.secagg_unmask`` in numpy."""
    _check_unmask_inputs(masked, seeds, signs, scale)
    rows = masked.detach().cpu().numpy().view(np.uint32)
    acc = np.zeros(rows.shape[1], dtype=np.uint32)
    for row in rows:
        acc += row
    _add_masks(acc, seeds, signs)
    signed = acc.view(np.int32)
    value = (signed.astype(np.float64) * scale).astype(np.float32)
    return torch.from_numpy(signed).to(masked.device), torch.from_numpy(value).to(masked.device)


def _add_masks(acc: np.ndarray, seeds: torch.Tensor, signs: Sequence[int]) -> None:
    """acc += sign * PRG(seed) for every seed, in place, modulo 2^32 (uint32 wraps)."""
    for seed, sign in zip(seeds.cpu().numpy(), signs):
        mask = _keystream(seed.tobytes(), acc.size)
        if sign > 0:
            acc += mask
        else:
            acc -= mask


# ---- inputs ---------------------------------------------------------------------------------


def seeds_tensor(seeds: Sequence[bytes]) -> torch.Tensor:
    """32-byte seeds as the ops take them: a uint8 tensor [M, 32]."""
    if isinstance(seeds, (bytes, bytearray)):
        raise TypeError("seeds must be a list of 32-byte seeds, got a single bytes object")
    rows = []
    for i, seed in enumerate(seeds):
        if not isinstance(seed, (bytes, bytearray)):
            raise TypeError(f"seeds[{i}] must be bytes, got {type(seed).__name__}")
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seeds[{i}] must be {SEED_BYTES} bytes long, got {len(seed)}")
        rows.append(bytes(seed))
    if not rows:
        return torch.empty(0, SEED_BYTES, dtype=torch.uint8)
    return torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).view(len(rows), SEED_BYTES)


def _as_signs(signs: Sequence[int]) -> list[int]:
    out = []
    for i, sign in enumerate(signs):
        if isinstance(sign, bool) or not isinstance(sign, numbers.Integral) or sign not in (1, -1):
            raise ValueError(f"signs[{i}] must be +1 or -1, got {sign!r}")
        out.append(int(sign))
    return out


def _use_kernel(tensor: object) -> bool:
    if not isinstance(tensor, torch.Tensor) or not extension_available():
        return False
    if tensor.device.type == "cuda":
        return has_cuda_kernels()
    return tensor.device.type == "cpu"


def _bytes_of(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().numpy().tobytes()


def _check_chacha20_inputs(key: object, nonce: object, counter: int, n_words: int) -> None:
    """Mirror of flaudit::check_chacha20_inputs (csrc/secagg_mask.cpp)."""
    for name, t in (("key", key), ("nonce", nonce)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"chacha20: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.uint8:
            raise TypeError(f"chacha20: {name} must be uint8, got {t.dtype}")
    for name, t, size in (("key", key, 32), ("nonce", nonce, 12)):
        if t.dim() != 1 or t.numel() != size:
            raise ValueError(f"chacha20: {name} must hold {size} bytes (shape [{size}]), got shape {list(t.shape)}")
    if key.device != nonce.device:
        raise ValueError(
            f"chacha20: key and nonce must be on the same device, got key on {key.device} and nonce on {nonce.device}"
        )
    if not 0 <= counter <= 0xFFFFFFFF:
        raise ValueError(f"chacha20: counter must be in [0, 2**32 - 1], got {counter}")
    if n_words < 0:
        raise ValueError(f"chacha20: n_words must be >= 0, got {n_words}")
    if counter + (n_words + 15) // 16 > 2**32:
        raise ValueError(
            "chacha20: the 32-bit block counter would overflow: counter + ceil(n_words / 16) must be "
            f"<= 2**32, got counter={counter} and n_words={n_words}"
        )


def _check_seeds_and_signs(op: str, seeds: torch.Tensor, signs: Sequence[int]) -> None:
    if seeds.dtype != torch.uint8:
        raise TypeError(f"{op}: seeds must be uint8, got {seeds.dtype}")
    if seeds.dim() != 2 or seeds.shape[1] != SEED_BYTES:
        raise ValueError(f"{op}: seeds must have shape [M, 32] (one 32-byte seed per row), got shape {list(seeds.shape)}")
    if len(signs) != seeds.shape[0]:
        raise ValueError(f"{op}: signs must have one entry per seed, got {len(signs)} signs for {seeds.shape[0]} seeds")
    for m, sign in enumerate(signs):
        if sign not in (1, -1):
            raise ValueError(f"{op}: signs must be +1 or -1, got {sign} at position {m}")


def _check_mask_inputs(update: object, seeds: torch.Tensor, signs: Sequence[int], clip_range: float, scale: float) -> None:
    """Mirror of flaudit::check_secagg_mask_inputs (csrc/secagg_mask.cpp)."""
    if not isinstance(update, torch.Tensor):
        raise TypeError(f"secagg_mask: update must be a torch.Tensor, got {type(update).__name__}")
    if update.dtype != torch.float32:
        raise TypeError(f"secagg_mask: update must be float32, got {update.dtype}")
    if update.dim() != 1:
        raise ValueError(f"secagg_mask: update must be a 1-D tensor, got shape {list(update.shape)}")
    if update.numel() >= MAX_STREAM_WORDS:
        raise ValueError("secagg_mask: update has more than 2**36 values, beyond one keystream")
    _check_seeds_and_signs("secagg_mask", seeds, signs)
    if not (math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"secagg_mask: clip_range must be a positive finite number, got {clip_range}")
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"secagg_mask: scale must be a finite number >= 0, got {scale}")
    if clip_range * scale > INT32_MAX:
        raise ValueError(
            "secagg_mask: clip_range * scale must be <= 2**31 - 1 so that every quantized value fits in "
            f"int32, got {clip_range * scale}"
        )


def _check_unmask_inputs(masked: object, seeds: torch.Tensor, signs: Sequence[int], scale: float) -> None:
    """Mirror of flaudit::check_secagg_unmask_inputs (csrc/secagg_mask.cpp)."""
    if not isinstance(masked, torch.Tensor):
        raise TypeError(f"secagg_unmask: masked must be a torch.Tensor, got {type(masked).__name__}")
    if masked.dtype != torch.int32:
        raise TypeError(f"secagg_unmask: masked must be int32, got {masked.dtype}")
    if masked.dim() != 2:
        raise ValueError(
            f"secagg_unmask: masked must be a 2-D tensor [K, N] (one masked vector per row), got shape {list(masked.shape)}"
        )
    if masked.shape[1] >= MAX_STREAM_WORDS:
        raise ValueError("secagg_unmask: masked rows have more than 2**36 values, beyond one keystream")
    _check_seeds_and_signs("secagg_unmask", seeds, signs)
    if not math.isfinite(scale):
        raise ValueError(f"secagg_unmask: scale must be finite, got {scale}")
