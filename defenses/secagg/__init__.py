"""Secure aggregation: the Bonawitz et al. (2017) protocol and its SecAgg+ variant with real
cryptography (X25519 + HKDF, ChaCha20 masks, ChaCha20-Poly1305 channels, Shamir sharing), and
the fused ``secagg_mask`` kernel behind ``mask_update``. Importing it registers ``secagg`` and
``secagg_plus``.
"""

from flaudit.defenses.secagg.defense import SecAgg, SecAggParams, SecAggPlus, SecAggPlusParams
from flaudit.defenses.secagg.fixed_point import FixedPoint
from flaudit.defenses.secagg.masking import (
    MaskedUpdate,
    chacha20,
    chacha20_reference,
    mask_update,
    quantize_and_mask,
    secagg_mask_reference,
    secagg_unmask_reference,
    unmask_sum,
)
from flaudit.defenses.secagg.protocol import AggregationAborted, ClientInput, ProtocolConfig, run_secure_aggregation

__all__ = [
    "AggregationAborted",
    "ClientInput",
    "FixedPoint",
    "MaskedUpdate",
    "ProtocolConfig",
    "SecAgg",
    "SecAggParams",
    "SecAggPlus",
    "SecAggPlusParams",
    "chacha20",
    "chacha20_reference",
    "mask_update",
    "quantize_and_mask",
    "run_secure_aggregation",
    "secagg_mask_reference",
    "secagg_unmask_reference",
    "unmask_sum",
]
