"""Scale-MIA (Shi et al., NDSS 2025): the slides' tables re-measured with flaudit's ``scale_mia``.

The slides (``/work/shared/seeds/scale-mia-slides.txt``) report four tables: the batch size
32-512 on CelebA 256x256 (rate, PSNR, seconds), the number of clients 5-30 on CIFAR-10 (no
numbers: "rate and PSNR not affected, time linear"), the auxiliary data 500-50000 on CIFAR-10
at batch 128, and DP-SGD at three (epsilon, delta) on CelebA at batch 128. Here every row is one
FedAvg round of real local training (``LOCAL_EPOCHS`` epochs of momentum SGD in batches of at
most ``LOCAL_BATCH``, and at least two batches an epoch: several steps per client) against the
crafted model, on the bundled ``photo_patches`` (natural 32x32 colour crops; the CIFAR-10
stand-in, and CelebA's in the batch and DP tables) and ``lfw_subset`` faces (25x25 grayscale,
upscaled to 32x32: the closest bundled thing to CelebA, 160 training images, so only its small
batches fit). DP rows run the real defense (``defenses.dp``: Opacus, Poisson sampling, noise
calibrated to the budget over the round). Each row is scored as the audit scores a cell
(``running.jobs.score_cell``): identifiable recovery at the audit's PSNR threshold and margin,
against the attack's nulls on the same targets.

Everything is seeded (``SEED``; draws by ``derive_seed``), so a run is a function of the code
and the profile; ``full`` trains one autoencoder per (dataset, auxiliary size) with the attack's
default parameters, ``quick`` a short one on less data.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import torch

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.scale_mia import ScaleMia, ScaleMiaParams
from flaudit.auditor.attacks.toolkit.preparation import Preparations
from flaudit.auditor.metrics.measures import PSNR_CEILING
from flaudit.auditor.reproduce.registry import Measurement, Reproduction, RowDone, register_reproduction
from flaudit.auditor.reproduce.tables import Measured, Privacy, Published, Row, Table, setting_field
from flaudit.auditor.results.grids import comparison_rows, rows_png
from flaudit.auditor.running.config import AuditOptions
from flaudit.auditor.running.jobs import ATTACK_STEP, SEED_STREAM, SIMULATION_STEP, score_cell, seed_everything
from flaudit.core.errors import ConfigError
from flaudit.core.jsonable import to_json
from flaudit.core.tables import one_line
from flaudit.defenses.base import compose
from flaudit.defenses.dp import DPSGD, DPParams
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import ClientData, FLWorld, ScenarioConfig, build_world, derive_seed

SEED = 0
DRAW_STREAM = 31  # derive_seed(SEED, DRAW_STREAM, draw) picks a draw's images
LOCAL_EPOCHS = 2
LOCAL_BATCH = 8
PHOTOS, FACES = "photo_patches", "lfw_subset"
IMAGE_SIZE = {PHOTOS: None, FACES: 32}  # lfw_subset's 25x25 faces upscaled: the cnn halves 32 twice
GRID_IMAGES = 16
BUDGETS = ((1.0, 1e-5), (1.0, 1e-4), (5.0, 1e-5))  # the slides' (epsilon, delta)
CLIPPING_ONLY_SIGMA = 1e-6
AUDIT = AuditOptions()  # the audit's default criterion: psnr_threshold, identifiable_margin_db

S = TypeVar("S")


# ---- one attacked round ------------------------------------------------------------------------


@dataclass(frozen=True)
class Federation:
    """One attacked FedAvg round: ``clients`` x ``per_client`` images of ``dataset`` (the
    attacker holds ``auxiliary`` others), optionally with DP-SGD (``dp``)."""

    dataset: str
    auxiliary: int
    clients: int
    per_client: int
    dp: DPParams | None = None

    @property
    def local_batch(self) -> int:
        """At most LOCAL_BATCH, and at least two batches an epoch: every client takes several steps."""
        return max(1, min(LOCAL_BATCH, self.per_client // 2))


@dataclass(frozen=True)
class Attacked:
    measured: Measured
    grid_png: bytes | None


class Bench:
    """The worlds of a run by (dataset, auxiliary size), and one ``Preparations``, so each
    autoencoder trains once and serves every row with the same auxiliary data."""

    def __init__(self, params: ScaleMiaParams) -> None:
        self.params = params
        self.prepared = Preparations()
        self.worlds: dict[tuple[str, int], FLWorld] = {}
        self.autoencoder_seconds: dict[str, float] = {}
        self.attacked: dict[tuple[Federation, int], Attacked] = {}  # a setting two tables share runs once

    def world(self, dataset: str, auxiliary: int) -> FLWorld:
        """All of ``dataset``'s training images but the ``auxiliary`` ones in one pool (client 0)."""
        if (dataset, auxiliary) not in self.worlds:
            config = ScenarioConfig(
                dataset=dataset, image_size=IMAGE_SIZE[dataset], model="cnn", clients=1, partition="iid", rounds=1,
                auxiliary_samples=auxiliary, local_epochs=LOCAL_EPOCHS, seed=SEED,
            )
            self.worlds[dataset, auxiliary] = build_world(config)
        return self.worlds[dataset, auxiliary]

    def pool_size(self, dataset: str, auxiliary: int) -> int:
        return len(self.world(dataset, auxiliary).clients[0].train_indices)

    def train_size(self, dataset: str) -> int:
        return self.pool_size(dataset, 0)

    def federation(self, federation: Federation, draw: int) -> FLWorld:
        """``federation``'s clients, each holding ``per_client`` images of a seeded draw from the pool."""
        world = self.world(federation.dataset, federation.auxiliary)
        pool = world.clients[0].train_indices
        count, per = federation.clients * federation.per_client, federation.per_client
        if count > len(pool):
            raise ConfigError(f"{federation.dataset} holds {len(pool)} images besides the auxiliary ones; {count} asked")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(derive_seed(SEED, DRAW_STREAM, draw)))
        chosen = pool[order[:count]]
        clients = tuple(
            ClientData(i, chosen[i * per : (i + 1) * per].sort().values, pool[:0]) for i in range(federation.clients)
        )
        config = world.config.replace(clients=federation.clients, batch_size=federation.local_batch)
        return dataclasses.replace(world, clients=clients, config=config)

    def attack(self, federation: Federation, draw: int) -> Attacked:
        if (federation, draw) not in self.attacked:
            self.attacked[federation, draw] = self._attack(federation, draw)
        return self.attacked[federation, draw]

    def _attack(self, federation: Federation, draw: int) -> Attacked:
        """Prepare (shared), one FedAvg round with the crafted model, reconstruct, score."""
        world = self.federation(federation, draw)
        knowledge = AttackerKnowledge.of(world, self.prepared)
        attack = ScaleMia(self.params)
        dp = [DPSGD(federation.dp)] if federation.dp else []
        hooks = compose(dp, world)
        hooks.server_model = server = attack.prepare(knowledge)
        records: list[Any] = []
        seed_everything(derive_seed(SEED, SEED_STREAM, SIMULATION_STEP))
        FedAvgSimulation(world, hooks).run([records.append], progress=False)
        record = records[-1]
        self.autoencoder_seconds[f"{federation.dataset}, {federation.auxiliary} auxiliary"] = server.autoencoder[1]
        seed_everything(derive_seed(SEED, SEED_STREAM, ATTACK_STEP))
        began = time.perf_counter()
        output = attack.reconstruct(record.server_view, knowledge)
        seconds = time.perf_counter() - began
        cell = score_cell(attack, record.server_view, knowledge, output, world, record, SEED,
                          AUDIT.psnr_threshold, AUDIT.identifiable_margin_db)
        scores, leakage, matching = cell.scored.scores, cell.leakage, cell.scored.matching
        privacy = None
        if dp:
            with warnings.catch_warnings():  # RDP at a tiny sigma: its optimal order is the smallest one
                warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
                figures = dp[0].figures()
            privacy = Privacy(figures["epsilon"], figures["delta"], figures["noise_multiplier"])
        measured = Measured(
            rate=scores.recovery_rate or 0.0,
            null_rate=leakage.null_recovery_rate or 0.0,
            bound=float(output.diagnostics["isolation_bound"]),
            psnr=scores.psnr_recovered_mean,
            returned_psnr=float(matching.psnr.clamp(max=PSNR_CEILING).mean()) if matching is not None else None,
            seconds=seconds,
            targets=scores.n_targets,
            returned=scores.n_reconstructed,
            local_steps=max(len(trace.batches) for trace in record.ground_truth.values()),
            draws=1,
            privacy=privacy,
            diagnostics={k: float(v) for k, v in output.diagnostics.items()},
        )
        grid = None
        if matching is not None:
            grid = rows_png(comparison_rows(cell.scored.targets, cell.scored.reconstructions, matching, GRID_IMAGES))
        return Attacked(measured, grid)


def mean_of(draws: list[Measured]) -> Measured:
    """The draws' mean (PSNRs over the draws that have one)."""

    def mean(get: Callable[[Measured], float]) -> float:
        return sum(get(m) for m in draws) / len(draws)

    def mean_known(get: Callable[[Measured], float | None]) -> float | None:
        known = [get(m) for m in draws if get(m) is not None]
        return sum(known) / len(known) if known else None

    return dataclasses.replace(
        draws[0], rate=mean(lambda m: m.rate), null_rate=mean(lambda m: m.null_rate), bound=mean(lambda m: m.bound),
        psnr=mean_known(lambda m: m.psnr), returned_psnr=mean_known(lambda m: m.returned_psnr), seconds=mean(lambda m: m.seconds),
        targets=round(mean(lambda m: m.targets)), returned=round(mean(lambda m: m.returned)), draws=len(draws),
    )


# ---- the tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How much of the slides a run measures."""

    name: str
    attack: ScaleMiaParams
    auxiliary: int  # photo_patches auxiliary images, every table but the auxiliary one
    face_auxiliary: int
    draws: int  # independent draws of the clients' images per row (where the pool allows)
    batches: tuple[int, ...]
    face_batches: tuple[int, ...]
    client_counts: tuple[int, ...]
    client_total: int  # the round's images, split over the clients
    auxiliary_sizes: tuple[int, ...]
    budgets: tuple[tuple[float, float], ...]
    clients: int = 4  # of every table but the clients one
    fixed_batch: int = 128  # the auxiliary and DP tables' (the paper's)


@dataclass(frozen=True)
class Planned(Generic[S]):
    """A row to measure; ``federation`` None for a paper row this machine cannot run (``note``)."""

    setting: S
    published: Published | None
    federation: Federation | None
    note: str = ""


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    setup: Callable[[Profile], str]
    differences: str
    plan: Callable[[Profile, Bench], list[Planned[Any]]]


@dataclass(frozen=True)
class BatchSetting:
    batch: int = setting_field("batch (all clients)")
    dataset: str = setting_field("our data")


@dataclass(frozen=True)
class ClientsSetting:
    clients: int = setting_field("clients")
    per_client: int = setting_field("images per client")


@dataclass(frozen=True)
class AuxiliarySetting:
    auxiliary: int = setting_field("auxiliary images")


@dataclass(frozen=True)
class DpSetting:
    budget: str = setting_field("privacy budget (ε, δ)")


PAPER_BATCH = {32: Published(0.95, 23.41, 0.068), 64: Published(0.92, 23.30, 0.095), 128: Published(0.87, 23.19, 0.154),
               256: Published(0.76, 23.12, 0.224), 512: Published(0.60, 22.64, 0.332)}
PAPER_CLIENTS = Published("not affected", "not affected", "linear in clients, small")
PAPER_AUXILIARY = {500: Published(0.95, 23.41), 1500: Published(0.92, 23.30), 5000: Published(0.87, 23.19),
                   50000: Published(0.76, 23.12)}
PAPER_DP = {None: Published(0.87, 23.19), (1.0, 1e-5): Published(0.86, 23.16), (1.0, 1e-4): Published(0.86, 22.86),
            (5.0, 1e-5): Published(0.85, 22.66)}
PAPER_CLIENT_RANGE = (5, 30)


def _split(profile: Profile, batch: int, dataset: str, auxiliary: int) -> Federation:
    return Federation(dataset, auxiliary, profile.clients, batch // profile.clients)


def _not_in(profile: Profile) -> str:
    return f"not in the {profile.name} profile"


def _batch_plan(profile: Profile, bench: Bench) -> list[Planned[Any]]:
    rows = [
        Planned(BatchSetting(b, PHOTOS), PAPER_BATCH.get(b),
                _split(profile, b, PHOTOS, profile.auxiliary) if b in profile.batches else None,
                "" if b in profile.batches else _not_in(profile))
        for b in sorted(set(PAPER_BATCH) | set(profile.batches))
    ]
    face_pool = bench.pool_size(FACES, profile.face_auxiliary)
    for b in profile.face_batches:
        fits = b <= face_pool
        note = "" if fits else f"lfw_subset holds {face_pool} images besides the auxiliary ones"
        federation = _split(profile, b, FACES, profile.face_auxiliary) if fits else None
        rows.append(Planned(BatchSetting(b, FACES), PAPER_BATCH.get(b), federation, note))
    return rows


def _clients_plan(profile: Profile, bench: Bench) -> list[Planned[Any]]:
    return [
        Planned(ClientsSetting(n, profile.client_total // n),
                PAPER_CLIENTS if PAPER_CLIENT_RANGE[0] <= n <= PAPER_CLIENT_RANGE[1] else None,
                Federation(PHOTOS, profile.auxiliary, n, profile.client_total // n))
        for n in profile.client_counts
    ]


def _auxiliary_plan(profile: Profile, bench: Bench) -> list[Planned[Any]]:
    rows = []
    pool = bench.train_size(PHOTOS)
    for size in sorted(set(profile.auxiliary_sizes) | set(PAPER_AUXILIARY)):
        fits, measured = size + profile.fixed_batch <= pool, size in profile.auxiliary_sizes
        federation = _split(profile, profile.fixed_batch, PHOTOS, size) if fits and measured else None
        note = "" if federation else _not_in(profile) if fits else f"photo_patches holds {pool} training images: not run"
        rows.append(Planned(AuxiliarySetting(size), PAPER_AUXILIARY.get(size), federation, note))
    return rows


def _budget_label(budget: tuple[float, float] | None) -> str:
    return "no defense" if budget is None else f"({budget[0]:g}, {budget[1]:g})"


def _dp_plan(profile: Profile, bench: Bench) -> list[Planned[Any]]:
    """The slides' budgets, and a row they lack: the clipping and Poisson sampling without the
    noise, which tells the noise's share of what DP does to the attack from theirs."""
    base = _split(profile, profile.fixed_batch, PHOTOS, profile.auxiliary)
    rows = [
        Planned(DpSetting(_budget_label(budget)), PAPER_DP.get(budget),
                dataclasses.replace(base, dp=None if budget is None else DPParams(target_epsilon=budget[0], delta=budget[1])))
        for budget in (None, *profile.budgets)
    ]
    clipping = DPParams(noise_multiplier=CLIPPING_ONLY_SIGMA, accountant="rdp")  # PRV's grid would need petabytes
    rows.append(Planned(DpSetting(f"clipping only (σ = {CLIPPING_ONLY_SIGMA:g})"), None, dataclasses.replace(base, dp=clipping),
                        "not in the slides, not private: per-sample clipping and Poisson sampling without the noise"))
    return rows


def _local(profile: Profile) -> str:
    return (f"Local training: {LOCAL_EPOCHS} epochs of SGD (lr 0.05, momentum 0.9) in batches of "
            f"min({LOCAL_BATCH}, images/2) per client, one FedAvg round, the cnn model (K = 512 bins); "
            f"{profile.draws} seeded draw(s) of the clients' images per row, averaged.")


TABLES = (
    TableSpec(
        "batch_size", "Reconstruction vs batch size (slides: CelebA 256x256)",
        lambda p: f"{p.clients} clients share the batch; {p.auxiliary} auxiliary photo_patches images "
                  f"({p.face_auxiliary} lfw_subset faces for the face rows). " + _local(p),
        "our images are 32x32 (photo_patches crops; lfw_subset's 160 training images, half faces, half non-faces, "
        "upscaled from 25x25 grayscale), not CelebA 256x256; clients train several local steps (the slides' number of local epochs per table is not given); "
        "times are our CPU's, for 32x32 images.",
        _batch_plan,
    ),
    TableSpec(
        "clients", "Clients 5-30 (slides: CIFAR-10; no numbers, \"rate and PSNR not affected, time linear\")",
        lambda p: f"{p.client_total} images per round split over the clients; {p.auxiliary} auxiliary images. "
                  + _local(p),
        "photo_patches instead of CIFAR-10; the slides do not say whether the batch per client or per round is "
        "fixed: we fix the round's.",
        _clients_plan,
    ),
    TableSpec(
        "auxiliary", "Auxiliary data size (slides: CIFAR-10 32x32, batch 128)",
        lambda p: f"Batch 128 over {p.clients} clients; one autoencoder per auxiliary size, the same epochs "
                  f"({p.attack.ae_epochs}) for each. " + _local(p),
        "photo_patches instead of CIFAR-10, so at most ~1100 auxiliary images; the slides' rates and PSNRs for this "
        "table repeat the batch-size table's digit for digit (likely a slide error); 'recover size 10000' of the "
        "slides is many batches, ours one round.",
        _auxiliary_plan,
    ),
    TableSpec(
        "dp", "DP-SGD via Opacus (slides: CelebA 256x256, batch 128)",
        lambda p: f"Batch 128 over {p.clients} clients, {p.auxiliary} auxiliary images; defense 'dp' with "
                  "target_epsilon/delta over the round (per-sample clip 1.0, Poisson sampling, PRV accountant). "
                  + _local(p),
        "photo_patches 32x32 instead of CelebA 256x256; the slides do not give the clip norm or how the budget "
        "was accounted; ours is Opacus' own calibration for this round's steps.",
        _dp_plan,
    ),
)
TABLE_NAMES = tuple(t.name for t in TABLES)

QUICK = Profile(
    name="quick", attack=ScaleMiaParams(ae_epochs=30), auxiliary=200, face_auxiliary=96, draws=1,
    batches=(32, 128), face_batches=(32,), client_counts=(5, 10), client_total=40, auxiliary_sizes=(100, 200),
    budgets=BUDGETS,
)
FULL = Profile(
    name="full", attack=ScaleMiaParams(), auxiliary=500, face_auxiliary=96, draws=2,
    batches=(32, 64, 128, 256, 512), face_batches=(32, 64), client_counts=(5, 10, 15, 20, 30), client_total=120,
    auxiliary_sizes=(250, 500, 1000), budgets=BUDGETS,
)


def grid_name(table: str, setting: Any) -> str:
    """``batch_size-32-photo_patches.png``: the table and the setting's values, file-name safe."""
    values = "-".join(str(v) for v in to_json(setting).values())
    return f"{table}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', values).strip('_')}.png"


class ScaleMiaReproduction(Reproduction):
    title = "Scale-MIA (Shi et al., NDSS 2025)"
    source = "the authors' slides (/work/shared/seeds/scale-mia-slides.txt)"
    tables = TABLE_NAMES

    def describe(self, quick: bool) -> dict[str, Any]:
        profile = QUICK if quick else FULL
        return {"profile": to_json(profile), "seed": SEED, "local_epochs": LOCAL_EPOCHS, "local_batch": LOCAL_BATCH,
                "psnr_threshold": AUDIT.psnr_threshold, "identifiable_margin_db": AUDIT.identifiable_margin_db}

    def measure(self, tables: tuple[str, ...], quick: bool, row_done: RowDone) -> Measurement:
        profile = QUICK if quick else FULL
        bench = Bench(profile.attack)
        done: list[Table[Any]] = []
        grids: dict[str, bytes] = {}
        for spec in (t for t in TABLES if t.name in tables):
            rows = []
            for planned in spec.plan(profile, bench):
                row, grid = self._row(bench, profile, planned)
                rows.append(row)
                row_done(spec.name, row)
                if grid is not None:
                    grids[grid_name(spec.name, planned.setting)] = grid
            done.append(Table(spec.name, spec.title, spec.setup(profile), spec.differences, tuple(rows)))
        notes = {"autoencoder_seconds": bench.autoencoder_seconds}
        return Measurement(done, grids, notes)

    @staticmethod
    def _row(bench: Bench, profile: Profile, planned: Planned[Any]) -> tuple[Row[Any], bytes | None]:
        federation = planned.federation
        if federation is None:
            return Row(planned.setting, planned.published, None, planned.note), None
        pool = bench.pool_size(federation.dataset, federation.auxiliary)
        draws = max(1, min(profile.draws, pool // (federation.clients * federation.per_client)))
        try:
            attacked = [bench.attack(federation, draw) for draw in range(draws)]
        except Exception as exc:  # noqa: BLE001 - a failed row is recorded, as the audit records a cell's error
            return Row(planned.setting, planned.published, None, f"error: {type(exc).__name__}: {one_line(str(exc))}"), None
        return Row(planned.setting, planned.published, mean_of([a.measured for a in attacked]), planned.note), attacked[0].grid_png


register_reproduction("scale-mia", "Scale-MIA's slides: batch size, clients, auxiliary size, DP-SGD")(ScaleMiaReproduction())
