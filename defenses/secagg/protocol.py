"""The secure-aggregation protocol of Bonawitz et al. (CCS 2017) among in-process parties; on
a sparse neighbour graph it is SecAgg+ (Bell et al., CCS 2020).

Stages (a client that drops stops answering; the server aborts when fewer than t answer):

0. AdvertiseKeys: every client sends two X25519 public keys, for its channel and its masks.
1. ShareKeys: every client draws a self-mask seed b_u and splits it, and its mask private key
   s_u, t-out-of-m (Shamir) among its share holders (its neighbours and itself); each holder's
   shares travel through the server encrypted under the channel key the two agreed.
2. MaskedInputCollection: every client uploads
   y_u = q_u + PRG(b_u) + sum_{v in N(u), v shared} sign(u, v) PRG(s_uv)   (mod 2^32),
   q_u its weighted, quantized update and s_uv the seed it agreed with v (sign +1 if u < v).
3. Unmasking: told which clients sent inputs (U3), every survivor returns, for each neighbour
   that shared with it, its share of b_v if v is in U3 and of s_v if not, never both. The server
   reconstructs every secret it needs (or aborts: no partial result) and removes the self masks
   of U3 and the pairwise masks left by clients lost after sharing; what remains is
   sum_{u in U3} q_u, exactly.

This is the semi-honest variant: the signatures and the consistency-check round that guard
against an actively malicious server are not simulated. The server learns the masked vectors,
who dropped when, and the sum; the result's ``transcript`` is that view.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from flaudit.defenses.secagg import shamir
from flaudit.defenses.secagg.dropouts import DropoutPlan, Stage
from flaudit.defenses.secagg.fixed_point import FixedPoint
from flaudit.defenses.secagg.graph import NeighbourGraph
from flaudit.defenses.secagg.keys import KeyPair, channel_key, open_sealed, pairwise_mask_seed, seal
from flaudit.defenses.secagg.masking import quantize_and_mask, unmask_sum
from flaudit.core.errors import ConfigError, FlauditError, InvalidUpdateError

SEED_BYTES = 32


class AggregationAborted(FlauditError):
    """Too few clients (or share holders) are left to finish the round; it produced no result."""


@dataclass(frozen=True)
class ProtocolConfig:
    fixed_point: FixedPoint
    threshold: int  # shares needed to reconstruct a secret, and clients needed at every stage
    graph: NeighbourGraph
    session: int = 0  # the FL round: keys agreed in one round are useless in another


@dataclass(frozen=True)
class ClientInput:
    client_id: int
    weight: int  # its sample count: the server learns sum(weight * update) / sum(weight)
    update: torch.Tensor


# ---- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertisedKeys:
    client_id: int
    channel_public: bytes
    mask_public: bytes


@dataclass(frozen=True)
class SealedShares:
    sender: int
    recipient: int
    sealed: bytes  # the sender's shares of (s_sender, b_sender) for the recipient, encrypted


@dataclass(frozen=True)
class UnmaskingShares:
    client_id: int
    self_mask_shares: Mapping[int, shamir.Share]  # of b_v, for v in U3
    key_shares: Mapping[int, shamir.Share]  # of s_v, for v lost after sharing


# ---- the client -----------------------------------------------------------------------------


class SecAggClient:
    """One client's side of the protocol; its secrets never leave it unencrypted or unshared."""

    def __init__(self, data: ClientInput, config: ProtocolConfig) -> None:
        self.id = data.client_id
        self.weight = data.weight
        self.update = data.update
        self.config = config
        self.clipped = 0
        self._channel: KeyPair | None = None
        self._mask: KeyPair | None = None
        self._self_mask_seed = b""
        self._roster: Mapping[int, AdvertisedKeys] = {}
        self._own_shares: tuple[shamir.Share, shamir.Share] | None = None
        self._channel_keys: dict[int, bytes] = {}  # agreed once per peer, used both ways
        self._inbox: dict[int, SealedShares] = {}

    def advertise_keys(self) -> AdvertisedKeys:
        self._channel, self._mask = KeyPair.generate(), KeyPair.generate()
        return AdvertisedKeys(self.id, self._channel.public, self._mask.public)

    def share_keys(self, roster: Mapping[int, AdvertisedKeys]) -> list[SealedShares]:
        """``roster``: the advertised keys of this client's share holders (itself included)."""
        t, session = self.config.threshold, self.config.session
        holders = sorted(roster)
        if len(holders) < t:
            raise AggregationAborted(
                f"client {self.id} cannot share its keys: {len(holders)} of its share holders "
                f"(itself included) advertised keys, the threshold is {t}"
            )
        self._roster = roster
        self._self_mask_seed = os.urandom(SEED_BYTES)
        points = [h + 1 for h in holders]
        key_shares = shamir.split(self._mask.private_bytes(), points, t)
        seed_shares = shamir.split(self._self_mask_seed, points, t)
        outbox = []
        for holder in holders:
            key_share, seed_share = key_shares[holder + 1], seed_shares[holder + 1]
            if holder == self.id:
                self._own_shares = (key_share, seed_share)
                continue
            key = channel_key(self._channel.private, roster[holder].channel_public, session, self.id, holder)
            self._channel_keys[holder] = key
            plaintext = key_share.to_bytes() + seed_share.to_bytes()
            outbox.append(SealedShares(self.id, holder, seal(key, session, self.id, holder, plaintext)))
        return outbox

    def masked_input(self, inbox: Sequence[SealedShares]) -> torch.Tensor:
        """y_u; ``inbox`` holds the shares of the neighbours that shared (their masks apply)."""
        self._inbox = {sealed.sender: sealed for sealed in inbox}
        seeds, signs = [self._self_mask_seed], [1]
        for peer in sorted(self._inbox):
            peer_public = self._roster[peer].mask_public
            seeds.append(pairwise_mask_seed(self._mask.private, peer_public, self.config.session, self.id, peer))
            signs.append(1 if self.id < peer else -1)
        result = quantize_and_mask(
            self.update, seeds, signs, fixed_point=self.config.fixed_point, weight=self.weight
        )
        self.clipped = result.clipped
        return result.masked

    def unmask(self, survivors: frozenset[int]) -> UnmaskingShares:
        """Shares of b_v for surviving v and of s_v for the others, one kind per client."""
        if len(survivors) < self.config.threshold:
            raise AggregationAborted(
                f"client {self.id} refuses to unmask: {len(survivors)} clients sent inputs, the "
                f"threshold is {self.config.threshold}"
            )
        session = self.config.session
        self_mask_shares = {self.id: self._own_shares[1]}
        key_shares = {}
        for peer, sealed in self._inbox.items():
            plaintext = open_sealed(self._channel_keys[peer], session, peer, self.id, sealed.sealed)
            size = shamir.SHARE_BYTES
            if peer in survivors:
                self_mask_shares[peer] = shamir.Share.from_bytes(self.id + 1, plaintext[size:])
            else:
                key_shares[peer] = shamir.Share.from_bytes(self.id + 1, plaintext[:size])
        return UnmaskingShares(self.id, self_mask_shares, key_shares)


# ---- the server and the result ---------------------------------------------------------------


@dataclass(frozen=True)
class SecAggResult:
    """The outcome of a completed round."""

    mean: torch.Tensor  # float32: sum(weight * clipped update) / sum(weight), over the survivors
    sum: torch.Tensor  # int32 holding sum_{u in U3} q_u mod 2^32: the unmasked integer sum
    masked: Mapping[int, torch.Tensor]  # y_u, as the server received them
    survivors: tuple[int, ...]  # U3: the clients whose inputs are in the sum
    dropouts: Mapping[str, tuple[int, ...]]  # stage -> clients lost at it
    total_weight: int
    error_bound: float  # |mean - exact weighted mean of the clipped updates| <= this, per entry
    clipped: int  # values clipped by the survivors (known to the clients, not the server)
    config: ProtocolConfig = field(repr=False)

    @property
    def dropout_count(self) -> int:
        return sum(len(c) for c in self.dropouts.values())

    def transcript(self) -> dict[str, Any]:
        """What the server saw: masked vectors, who dropped when, the sum; no client secret."""
        fixed_point = self.config.fixed_point
        return {
            "masked_vectors": dict(self.masked),
            "sum": self.sum,
            "survivors": self.survivors,
            "dropouts": dict(self.dropouts),
            "total_weight": self.total_weight,
            "threshold": self.config.threshold,
            "neighbours": self.config.graph.as_lists(),
            "quantization": {
                "clip_range": fixed_point.clip_range,
                "quant_bits": fixed_point.quant_bits,
                "step": fixed_point.step,
                "error_bound": self.error_bound,
            },
        }


class SecAggServer:
    """Runs the stages, routes messages, enforces the threshold and unmasks the sum."""

    def __init__(self, config: ProtocolConfig) -> None:
        self.config = config

    def run(self, clients: Mapping[int, SecAggClient], plan: DropoutPlan) -> SecAggResult:
        graph = self.config.graph
        ids = sorted(clients)

        advertised = {c: clients[c].advertise_keys() for c in ids if plan.answers(c, Stage.ADVERTISE_KEYS)}
        self._require(len(advertised), Stage.ADVERTISE_KEYS)

        inboxes: dict[int, list[SealedShares]] = {c: [] for c in advertised}
        shared = []
        for c in advertised:
            if not plan.answers(c, Stage.SHARE_KEYS):
                continue
            roster = {h: advertised[h] for h in graph.holders(c) if h in advertised}
            for sealed in clients[c].share_keys(roster):
                inboxes[sealed.recipient].append(sealed)
            shared.append(c)
        self._require(len(shared), Stage.SHARE_KEYS)
        shared_set = set(shared)

        masked = {
            c: clients[c].masked_input([s for s in inboxes[c] if s.sender in shared_set])
            for c in shared
            if plan.answers(c, Stage.MASKED_INPUT)
        }
        survivors = tuple(sorted(masked))
        self._require(len(survivors), Stage.MASKED_INPUT)

        survivor_set = frozenset(survivors)
        responses = [clients[c].unmask(survivor_set) for c in survivors if plan.answers(c, Stage.UNMASKING)]
        self._require(len(responses), Stage.UNMASKING)

        seeds, signs = self._masks_to_remove(advertised, shared, survivors, responses)
        total_weight = sum(clients[c].weight for c in survivors)  # sample counts are public
        if total_weight == 0:
            raise InvalidUpdateError("the surviving clients hold no samples; their weighted mean is undefined")
        fixed_point = self.config.fixed_point
        rows = torch.stack([masked[c] for c in survivors])
        total, mean = unmask_sum(rows, seeds, signs, fixed_point.mean_scale(total_weight))
        return SecAggResult(
            mean=mean,
            sum=total,
            masked=masked,
            survivors=survivors,
            dropouts={stage.label: plan.dropped_at(stage, ids) for stage in Stage},
            total_weight=total_weight,
            error_bound=fixed_point.error_bound(len(survivors), total_weight),
            clipped=sum(clients[c].clipped for c in survivors),
            config=self.config,
        )

    def _require(self, answered: int, stage: Stage) -> None:
        if answered < self.config.threshold:
            raise AggregationAborted(
                f"secure aggregation aborted at stage {stage.label}: {answered} clients answered, "
                f"the threshold is {self.config.threshold}; the round produced no result"
            )

    def _masks_to_remove(
        self,
        advertised: Mapping[int, AdvertisedKeys],
        shared: Sequence[int],
        survivors: Sequence[int],
        responses: Sequence[UnmaskingShares],
    ) -> tuple[list[bytes], list[int]]:
        """Every secret is reconstructed before anything is unmasked, so that a missing one
        aborts the round with no partial result."""
        seeds, signs = [], []
        for client in survivors:
            shares = [r.self_mask_shares[client] for r in responses if client in r.self_mask_shares]
            seeds.append(self._reconstruct(client, "self-mask seed", shares))
            signs.append(-1)
        survivor_set = set(survivors)
        session = self.config.session
        for lost in sorted(set(shared) - survivor_set):
            shares = [r.key_shares[lost] for r in responses if lost in r.key_shares]
            key = KeyPair.from_private_bytes(self._reconstruct(lost, "mask key", shares))
            if key.public != advertised[lost].mask_public:
                raise AggregationAborted(f"the shares of client {lost}'s mask key are inconsistent with its public key")
            for peer in sorted(self.config.graph.of(lost) & survivor_set):
                seeds.append(pairwise_mask_seed(key.private, advertised[peer].mask_public, session, lost, peer))
                signs.append(-1 if peer < lost else 1)  # undo sign(peer, lost) in y_peer
        return seeds, signs

    def _reconstruct(self, owner: int, what: str, shares: Sequence[shamir.Share]) -> bytes:
        t = self.config.threshold
        if len(shares) < t:
            raise AggregationAborted(
                f"secure aggregation aborted: client {owner}'s {what} needs {t} shares and only "
                f"{len(shares)} of its share holders answered the unmasking stage; the round "
                "produced no result"
            )
        return shamir.combine(shares, t)


def run_secure_aggregation(
    inputs: Sequence[ClientInput], config: ProtocolConfig, plan: DropoutPlan | None = None
) -> SecAggResult:
    """One round of the protocol among ``inputs`` with the dropouts of ``plan``.

    Raises AggregationAborted when the dropouts leave fewer than ``config.threshold`` clients at
    any stage (or, on a sparse graph, fewer than that many holders of a secret that is needed).
    """
    ids = [i.client_id for i in inputs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"client ids must be distinct, got {ids}")
    if set(ids) != set(config.graph.neighbours):
        raise ConfigError("the neighbour graph must cover exactly the participating clients")
    if not 1 <= config.threshold <= len(ids):
        raise ConfigError(f"threshold must be in [1, {len(ids)}] for {len(ids)} clients, got {config.threshold}")
    config.fixed_point.check_total_weight(sum(i.weight for i in inputs), "the clients' total weight")
    clients = {i.client_id: SecAggClient(i, config) for i in inputs}
    return SecAggServer(config).run(clients, plan or DropoutPlan())
