"""``metrics.jsonl``: an accelerate tracker writing one JSON line per logged step.

Training logs through ``accelerator.log`` to this and to TensorBoard (``tb/``); a record is
``{"step", "loss", "lr": {group: lr}, "grad_norm", "samples_per_s", "tokens_per_s", "time", ...}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

from vlgraft.files import write_text_atomic


def _finite(value):
    """JSON has no NaN / inf: such a number is written as null (with the rest of the record)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class JSONLTracker(GeneralTracker):
    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.file = None

    @property
    def tracker(self):
        return self.file

    @on_main_process
    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a")

    @on_main_process
    def store_init_configuration(self, values: dict):
        pass  # the run folder's recipe.yaml holds the configuration

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        self.file.write(json.dumps({"step": step, **_finite(values)}) + "\n")
        self.file.flush()

    @on_main_process
    def finish(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records after ``step`` from a metrics file (a resumed run logs those steps again); a
    torn last line (the process was killed while writing it) goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))
