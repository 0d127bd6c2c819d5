"""Write an evaluation's files: results.json (raw curves), results.md, results.csv, PNG plots, TensorBoard.

JSON has no NaN or infinity, so non-finite numbers (a diverged run's curve) are written as null and
read back as NaN by `metrics.as_curves`. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from l2o.checkpoints import atomic_write
from l2o.errors import OutputError, RunDirectoryError
from l2o.evaluate.plots import curve_bands, plot_curves, plot_speedups
from l2o.evaluate.report import CSV_COLUMNS, csv_rows, markdown_table


def jsonable(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def to_csv(results: Dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results):
        writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_tensorboard(results: Dict, directory: Path) -> None:
    """Median and interquartile loss curves as scalars: one run directory per optimizer,
    tags `loss/<steps>_steps/<family>/{median,q25,q75}`."""
    from torch.utils.tensorboard import SummaryWriter

    for name, entry in results["optimizers"].items():
        writer = SummaryWriter(str(directory / name.replace("/", "_")))
        try:
            for n, fams in entry["runs"].items():
                for fam, run in fams.items():
                    for key, values in curve_bands(run["curves"]).items():
                        for t, value in enumerate(values.tolist()):
                            if math.isfinite(value):
                                writer.add_scalar(f"loss/{n}_steps/{fam}/{key}", value, t)
        finally:
            writer.close()


def check_out_dir(out: Path, overwrite: bool = False) -> None:
    """Fail before any work when `out` cannot take the results: a file, a folder that cannot be
    written (tried with a temp file, which also creates `out`), or one holding an earlier
    evaluation's results unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    if (out / "results.json").exists() and not overwrite:
        raise RunDirectoryError(
            f"{out} holds the results of an earlier evaluation; pass --overwrite to replace them or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write to --out {out}: {err.strerror or err}") from None


def _remove_previous(out: Path) -> None:
    """An earlier evaluation's plots and TensorBoard runs, which new results replace (TensorBoard
    would otherwise show old and new curves together)."""
    if not (out / "results.json").exists():
        return
    for path in [*out.glob("curves_*_steps.png"), out / "speedup.png"]:
        path.unlink(missing_ok=True)
    if (out / "tb").is_dir():
        shutil.rmtree(out / "tb")


def write_outputs(results: Dict, out: Path, plots: bool = True, tensorboard: bool = True) -> List[Path]:
    """All output files of `results` under `out`; returns their paths. A write the system refuses
    (disk full, ...) raises an OutputError."""
    try:
        return _write_outputs(results, out, plots, tensorboard)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot write the results to {out}: {err.strerror or err}") from None


def _write_outputs(results: Dict, out: Path, plots: bool, tensorboard: bool) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    written = [out / "results.json", out / "results.md", out / "results.csv"]
    atomic_write(written[0], json.dumps(jsonable(results), allow_nan=False).encode())
    atomic_write(written[1], markdown_table(results).encode())
    atomic_write(written[2], to_csv(results).encode())
    if plots:
        for n in results["horizons"]:
            written.append(plot_curves(results, str(n), out / f"curves_{n}_steps.png"))
        written.append(plot_speedups(results, out / "speedup.png"))
    if tensorboard:
        write_tensorboard(results, out / "tb")
        written.append(out / "tb")
    return written
