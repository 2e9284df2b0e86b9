"""What the matrix, the summary and the report show of a cell, read once from its scorecard
entry into typed figures (``flaudit.scorecard/2``, or the older ``/1``, which has no nulls).

Counts, not percentages, say how much was recovered ("3/1338, null 5/1338"), summed over
seeds, so a level never stands beside a rate that rounds to 0%; the leakage (recovery above
the null) is what the level was read from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from flaudit.auditor.results import risk


@dataclass(frozen=True)
class Stat:
    """A quantity over seeds: mean and 95% interval (None with one seed)."""

    mean: float
    ci95: tuple[float, float] | None

    @classmethod
    def of(cls, raw: Mapping[str, Any] | None) -> "Stat | None":
        if not raw:
            return None
        return cls(raw["mean"], tuple(raw["ci95"]) if raw.get("ci95") else None)


@dataclass(frozen=True)
class ErrorInfo:
    """One failed job: its seed (None where the scorecard does not say), type, message, traceback."""

    seed: int | None
    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "ErrorInfo":
        return cls(raw.get("seed"), raw["type"], raw["message"], raw.get("traceback", ""))


@dataclass(frozen=True)
class Artifact:
    """A cell's reconstruction grid at one seed, relative to the run folder."""

    seed: int
    grid: str


def _total(metrics: Mapping[str, Any], name: str) -> int | None:
    stat = metrics.get(name)
    return None if not stat else int(round(sum(stat["values"])))


@dataclass(frozen=True)
class ImageFigures:
    """Targets identifiably recovered by the attack and by its larger null (None before v2),
    out of ``trials``; ``psnr_hits``: by the PSNR threshold alone (None before v2)."""

    hits: int
    null_hits: int | None
    psnr_hits: int | None
    trials: int
    rate: Stat | None  # identifiable recovery rate over seeds
    leakage: Stat | None
    psnr_mean: Stat | None
    psnr_recovered: Stat | None
    ssim_mean: Stat | None
    rated: bool = True  # False: the cell's risk was not read from its images (v2 records which)


@dataclass(frozen=True)
class LabelFigures:
    accuracy: Stat
    null: Stat | None
    leakage: Stat | None
    rated: bool  # False: another row reports this attack's label step


@dataclass(frozen=True)
class CellFigures:
    cell_id: str
    risk: str
    status: str
    reason: str | None
    images: ImageFigures | None
    labels: LabelFigures | None
    errors: tuple[ErrorInfo, ...]
    scenario: str = ""
    defense: str = ""
    attack: str = ""
    dp_violation: bool = False
    artifacts: tuple[Artifact, ...] = ()
    measured: bool = False  # some seed finished (its metrics exist, scored or not)

    @property
    def failed(self) -> int:
        return len(self.errors)

    @property
    def first_error(self) -> str | None:
        return self.errors[0].message if self.errors else None


    @property
    def rated_leakage(self) -> float:
        """The largest mean leakage the cell is rated by (0 when none), for ordering cells."""
        values = [f.leakage.mean for f in (self.images, self.labels) if f is not None and f.leakage is not None and f.rated]
        return max(values, default=0.0)

    @classmethod
    def of(cls, cell: Mapping[str, Any]) -> "CellFigures":
        metrics = cell.get("metrics") or {}
        rated = {r["output"] for r in cell.get("rated", [])}
        images = labels = None
        trials, hits = _total(metrics, "n_targets"), _total(metrics, "n_recovered")
        if metrics.get("recovery_rate") and trials is not None:
            images = ImageFigures(
                hits or 0, _total(metrics, "n_null_recovered"), _total(metrics, "n_psnr_recovered"), trials,
                Stat.of(metrics.get("recovery_rate")), Stat.of(metrics.get("leakage")), Stat.of(metrics.get("psnr_mean")),
                Stat.of(metrics.get("psnr_recovered_mean")), Stat.of(metrics.get("ssim_mean")),
                "images" in rated or "rated" not in cell,
            )
        if metrics.get("label_accuracy"):
            labels = LabelFigures(
                Stat.of(metrics["label_accuracy"]), Stat.of(metrics.get("label_null_accuracy")),
                Stat.of(metrics.get("label_leakage")), "labels" in rated or "rated" not in cell,
            )
        errors = tuple(ErrorInfo.of(e) for e in cell.get("errors") or [])
        artifacts = tuple(Artifact(a["seed"], a["grid"]) for a in cell.get("artifacts") or [])
        return cls(cell["id"], cell["risk"], cell["status"], cell.get("reason"), images, labels, errors,
                   cell.get("scenario", ""), (cell.get("defense") or {}).get("label", ""),
                   (cell.get("attack") or {}).get("label", ""), bool(cell.get("dp_violation")), artifacts,
                   bool(metrics))


def _mean(stat: Stat | None) -> float:
    return float("-inf") if stat is None else stat.mean


def worst_cells(cells: Iterable[CellFigures], count: int) -> list[CellFigures]:
    """Scored cells ordered by leakage: risk, then image and label leakage, recovery rate, mean PSNR."""

    def leakage(cell: CellFigures) -> tuple:
        images, labels = cell.images, cell.labels
        return (risk.rank(cell.risk), _mean(images and images.leakage), _mean(labels and labels.leakage),
                _mean(images and images.rate), _mean(images and images.psnr_mean))

    return sorted((c for c in cells if c.measured), key=leakage, reverse=True)[:count]


def signed_percent(stat: Stat | None) -> str:
    return "–" if stat is None else f"{100 * stat.mean:+.1f}%"


def counts_text(images: ImageFigures) -> str:
    """``3/64 recovered, null 5/64`` (the null only where the scorecard has one)."""
    text = f"{images.hits}/{images.trials} recovered"
    return text if images.null_hits is None else f"{text}, null {images.null_hits}/{images.trials}"


def labels_text(labels: LabelFigures) -> str:
    """``labels 100% (null 50%, leakage +50.0%)``; a label step another row reports shows only
    its accuracy and where it is rated."""
    text = f"labels {100 * labels.accuracy.mean:.0f}%"
    if not labels.rated:
        return text + " (rated in the labels row)"
    if labels.null is not None:
        text += f" (null {100 * labels.null.mean:.0f}%, leakage {signed_percent(labels.leakage)})"
    return text
