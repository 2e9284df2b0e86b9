"""``flaudit verify DIR``: does the scorecard still say what its run folder holds?

It re-checks, against the manifest's tamper evidence (``running.provenance``): the config kept
beside the scorecard (its SHA-256, and the config hash it parses to), every stored job result
and artifact (SHA-256, none missing or added), and then rebuilds the scorecard from the stored
results with the plan the config gives and names every value that differs from the file
(a cell edited by hand shows here even if its job file was edited to match, unless the
manifest was too). The code that wrote it is compared with the installed one, as a note: the
rebuild runs today's scoring code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from flaudit.auditor.results import scorecard
from flaudit.auditor.running.results import JobResult
from flaudit.core.errors import FlauditError

LISTED = 20  # differences named at most


@dataclass(frozen=True)
class Verification:
    differences: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def verified(self) -> bool:
        return not self.differences


def _label(item: Any, index: int) -> str:
    if isinstance(item, Mapping):
        if "id" in item:
            return str(item["id"])
        if "scenario" in item and "defense" in item:
            return f"{item['scenario']}/{item['defense']}"
        if "label" in item:
            return str(item["label"])
    return str(index)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(written: Any, rebuilt: Any, path: str) -> Iterator[str]:
    """Paths where two JSON values differ, as ``path: scorecard X, run folder Y``."""
    if isinstance(written, Mapping) and isinstance(rebuilt, Mapping):
        for key in sorted(set(written) | set(rebuilt)):
            if key not in rebuilt:
                yield f"{path}.{key}: in the scorecard only"
            elif key not in written:
                yield f"{path}.{key}: missing from the scorecard"
            else:
                yield from differences(written[key], rebuilt[key], f"{path}.{key}")
    elif isinstance(written, list) and isinstance(rebuilt, list) and len(written) == len(rebuilt):
        for i, (a, b) in enumerate(zip(written, rebuilt)):
            yield from differences(a, b, f"{path}[{_label(b, i)}]")
    elif written != rebuilt:
        yield f"{path}: scorecard {_short(written)}, run folder {_short(rebuilt)}"


def _stored_results(folder: Path) -> dict[str, JobResult]:
    """Every stored result that parses, by its key (one that does not: its digest check names it)."""
    from flaudit.auditor.running.store import stored

    return {record["key"]: result for _, record, result in stored(folder)}


def _outputs(folder: Path, recorded: Mapping[str, str]) -> list[str]:
    from flaudit.auditor.running.provenance import outputs
    from flaudit.auditor.running.store import ARTIFACTS, CELLS

    present = outputs(folder, (CELLS, ARTIFACTS))
    found = [f"{p}: missing from the run folder" for p in sorted(set(recorded) - set(present))]
    found += [f"{p}: not in the manifest" for p in sorted(set(present) - set(recorded))]
    found += [f"{p}: SHA-256 differs from the manifest's" for p in sorted(set(recorded) & set(present)) if recorded[p] != present[p]]
    return found


def verify(path: Path, catalog: Any = None) -> Verification:
    """``path``: a run folder or its scorecard. Unusable input raises FlauditError."""
    from flaudit.auditor.running import catalog as catalogs
    from flaudit.auditor.running.config import audit_from_document
    from flaudit.auditor.running.plan import build_plan
    from flaudit.auditor.running.provenance import code_identity, read_config_copy, sha256_bytes

    document = scorecard.load(path)
    folder = scorecard.scorecard_path(path).parent
    manifest, audit = document["manifest"], document["audit"]
    inputs = manifest.get("inputs")
    if not inputs or "outputs" not in manifest:
        return Verification(("manifest: no tamper evidence recorded (inputs, outputs), nothing to verify against",), ())
    found = _outputs(folder, manifest["outputs"])
    copy = folder / inputs["config_file"]
    if not copy.is_file():
        return Verification((*found, f"{inputs['config_file']}: the config as written is missing"), ())
    text = copy.read_bytes()
    if sha256_bytes(text) != inputs["config_sha256"]:
        found.append(f"{inputs['config_file']}: SHA-256 differs from the manifest's")
    try:
        config = audit_from_document(read_config_copy(inputs["config_file"], text), audit["source"], audit["profile"])
    except (UnicodeDecodeError, ValueError, FlauditError) as exc:  # TOMLDecodeError, JSONDecodeError: ValueErrors
        return Verification((*found, f"{inputs['config_file']}: cannot be read as an audit config ({exc})"), ())
    if config.config_hash != audit["config_hash"]:
        found.append(f"audit.config_hash: scorecard {audit['config_hash'][:12]}, config as written {config.config_hash[:12]}")
    plan = build_plan(config, catalog or catalogs.registered())
    results = _stored_results(folder)
    missing = [job for job in plan.jobs if job.key not in results]
    found += [f"cells/{job.key}.json: the result of a planned job is missing" for job in missing]
    if not missing:
        rebuilt = scorecard.build(plan, results, manifest)
        for key in sorted(set(document) - {"manifest"}):
            found += differences(document[key], rebuilt.get(key), key)
    notes = ()
    if manifest.get("code", {}).get("package_sha256") != code_identity()["package_sha256"]:
        notes = ("the installed flaudit code differs from the code that ran (the rebuild used today's scoring)",)
    return Verification(tuple(found), notes)


def describe(result: Verification) -> str:
    lines = [*result.differences[:LISTED]]
    if len(result.differences) > LISTED:
        lines.append(f"... and {len(result.differences) - LISTED} more")
    return "\n".join(lines)
