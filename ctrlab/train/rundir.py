"""RUN/: the one owner of a training run directory's layout. Every other module (the trainer,
``ctrlab train`` / ``eval``, bundle export, the experiments, their charts and tables) asks a
:class:`RunDir` for a path or a record and never spells a file name itself::

    RUN/config.yaml                 the resolved config (written before the first epoch)
    RUN/checkpoints/epoch_K.pt      model weights after epoch K ({"model": state_dict, "epoch": K};
                                    weights_only loadable)
    RUN/checkpoints/last.pt         full training state after the last complete epoch (resume)
    RUN/epochs.jsonl, epochs.csv    one record per epoch (replaced whole after every epoch)
    RUN/steps.jsonl                 training loss every ``train.log_every`` steps (appended)
    RUN/summary.json                written last: best epoch, its metrics, test metrics; a run
                                    without one is unfinished
    RUN/tensorboard/                event files when ``train.tensorboard`` is on
    RUN/lineage.json                a run on a partitioned store: the store, its vocabulary version and
                                    spec fingerprint, the partitions trained / validated / tested on, and
                                    for a continued run (``train.continue_from``) its parent (run dir,
                                    epoch, vocabulary version) and the progressive metrics
    RUN/store/                      the store prepared from ``data.train`` when no ``data.store`` is set
    RUN/scores_<split>.npz          experiments: the chosen epoch's per-row probabilities on the
                                    valid and test splits (``labels`` uint8[n], ``scores`` f32[n])

Everything written here is replaced whole or not at all (:mod:`ctrlab.fileio`), except
steps.jsonl, which is appended to; its readers drop a torn last line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..fileio import write_bytes_atomic, write_json_atomic

CONFIG = "config.yaml"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pt"
EPOCHS_JSONL = "epochs.jsonl"
EPOCHS_CSV = "epochs.csv"
STEPS_JSONL = "steps.jsonl"
TENSORBOARD = "tensorboard"
STORE = "store"
LINEAGE = "lineage.json"


def read_records(path: Path, key: str, *, skip_unreadable: bool = False) -> list[dict[str, Any]]:
    """The records of a RUN/*.jsonl log, each a JSON object with an integer ``key`` ("epoch",
    "step"); [] when the file does not exist.

    A torn last line (the process was killed while appending it) is dropped. Any other unreadable
    line is a ValueError naming the file and line, unless ``skip_unreadable`` (charts draw what they
    can read)."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get(key), int):
                raise ValueError(f"no integer {key!r}")
        except ValueError as exc:
            if skip_unreadable or (number == len(lines) and not line.endswith("\n")):
                continue
            raise ValueError(f"{path}:{number}: not a {key} record ({exc}); fix or remove the line") from None
        records.append(record)
    return records


class RunDir:
    """The files of one training run directory (nothing is created until something is written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ----------------------------------------------------------------------------------------
    # paths
    # ----------------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def epochs_jsonl(self) -> Path:
        return self.path / EPOCHS_JSONL

    @property
    def epochs_csv(self) -> Path:
        return self.path / EPOCHS_CSV

    @property
    def steps(self) -> Path:
        return self.path / STEPS_JSONL

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def lineage(self) -> Path:
        return self.path / LINEAGE

    def read_lineage(self) -> dict[str, Any] | None:
        """lineage.json (a run on a partitioned store), or None."""
        if not self.lineage.is_file():
            return None
        with open(self.lineage, encoding="utf-8") as fh:
            return json.load(fh)

    def write_lineage(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.lineage, record, indent=1)

    @property
    def store(self) -> Path:
        return self.path / STORE

    def checkpoint(self, epoch: int) -> Path:
        """The weights saved after ``epoch`` (1-based)."""
        return self.checkpoints / f"epoch_{epoch}.pt"

    def scores(self, split: str) -> Path:
        """Per-row probabilities of the chosen epoch on ``split`` ("valid" or "test")."""
        return self.path / f"scores_{split}.npz"

    # ----------------------------------------------------------------------------------------
    # state
    # ----------------------------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether training has left a record here (a summary or an epoch or step log)."""
        return any(path.is_file() for path in (self.summary, self.epochs_jsonl, self.steps))

    def saved_epochs(self) -> list[int]:
        """The epochs with a weights checkpoint, ascending."""
        numbers = (p.stem.split("_", 1)[1] for p in self.checkpoints.glob("epoch_*.pt"))
        return sorted(int(n) for n in numbers if n.isdigit())

    def chosen_epoch(self) -> int:
        """The epoch a run stands for: summary.json's best epoch, else the last epoch record's, else
        the last saved one. FileNotFoundError when no epoch was saved."""
        best = (self.read_summary() or {}).get("best_epoch")
        if best:
            return int(best)
        history = self.epoch_records()
        if history and history[-1].get("best_epoch"):
            return int(history[-1]["best_epoch"])
        epochs = self.saved_epochs()
        if not epochs:
            raise FileNotFoundError(f"{self.path}: no saved epochs in {CHECKPOINTS}/ (train first)")
        return epochs[-1]

    # ----------------------------------------------------------------------------------------
    # records
    # ----------------------------------------------------------------------------------------

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json, or None while the run is unfinished."""
        if not self.summary.is_file():
            return None
        with open(self.summary, encoding="utf-8") as fh:
            return json.load(fh)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary, summary, indent=1)

    def epoch_records(self, *, skip_unreadable: bool = False) -> list[dict[str, Any]]:
        return read_records(self.epochs_jsonl, "epoch", skip_unreadable=skip_unreadable)

    def step_records(self, *, skip_unreadable: bool = False) -> list[dict[str, Any]]:
        return read_records(self.steps, "step", skip_unreadable=skip_unreadable)

    def write_steps(self, records: list[dict[str, Any]]) -> None:
        """Replace steps.jsonl whole (resume trims it to the steps its checkpoint covers)."""
        write_bytes_atomic(self.steps, "".join(json.dumps(r) + "\n" for r in records).encode())

    def write_epoch_logs(self, history: list[dict[str, Any]]) -> None:
        """epochs.jsonl and epochs.csv from the epoch records (each replaced whole; none without
        epochs)."""
        if not history:
            self.epochs_jsonl.unlink(missing_ok=True)
            self.epochs_csv.unlink(missing_ok=True)
            return
        write_bytes_atomic(self.epochs_jsonl, "".join(json.dumps(rec) + "\n" for rec in history).encode())
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        write_bytes_atomic(self.epochs_csv, table.getvalue().encode())

    def clear_training_outputs(self) -> None:
        """Remove what an earlier run left (checkpoints, logs, summary, TensorBoard events), so that
        nothing of it is mistaken for a new run's (the caller writes config.yaml next)."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        for path in (self.steps, self.epochs_jsonl, self.epochs_csv, self.summary, self.lineage):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.tensorboard, ignore_errors=True)
