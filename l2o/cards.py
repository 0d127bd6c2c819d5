"""What a checkpoint is for, from its header: the summary `l2o list` prints and the horizon
`LearnedOptimizer` warns past.

A checkpoint's `info` (the trainer writes `config`, `suite`, `suite_spec`) may carry a card:

    info["card"] = {
        "domain": "what it is meant for, one line",            # e.g. "10-d quadratics only"
        "headline": "its headline held-out number, one line",  # with suite, horizon and reference
        "name": "lstm-quadratic10",                            # optional; default: the file's name
        "horizon": 100,                                        # optional; default: the config's
    }
    info["model_card"] = "checkpoints/<name>.md"                # optional; default: <file>.md beside it

Missing fields are derived (the domain from the training suite's description, the headline from an
`info["evaluation"]` record), so older checkpoints still list sensibly. docs/evaluation.md documents
the fields. Nothing here runs a user's code: a suite that lives in the user's files is named, not loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Optional

from l2o import checkpoints


@dataclasses.dataclass(frozen=True)
class CardSummary:
    name: str
    architecture: str
    suite: str  # the training suite, as the checkpoint records it
    domain: str
    horizon: str  # the training horizon as text: "100", or "100–2000 (log-uniform)"
    headline: str
    model_card: Optional[str]


def _card(info: Dict) -> Dict:
    card = info.get("card")
    return card if isinstance(card, dict) else {}


def checkpoint_name(path) -> str:
    """A checkpoint's name: `runs/x/checkpoint.safetensors` → `x`, `celo.safetensors` → `celo`."""
    p = Path(str(path))
    return p.parent.name if p.stem == "checkpoint" and p.parent.name else p.stem


def card_name(info: Dict, path) -> str:
    return str(_card(info).get("name") or checkpoint_name(path))


def _registered_suite(info: Dict):
    """The training suite if it is a registered one (never a user's file: listing runs no code)."""
    from l2o.task_distributions import get_suite, suite_names

    name = (info.get("config") or {}).get("suite") or info.get("suite")
    return get_suite(name) if isinstance(name, str) and name in suite_names() else None


def training_horizon(info: Dict) -> Optional[int]:
    """The longest inner horizon the checkpoint was meta-trained with (config `horizon`, 0 = its
    suite's); None when unknown."""
    card, config = _card(info), info.get("config") or {}
    for value in (card.get("horizon"), config.get("horizon")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    suite = _registered_suite(info)
    return suite.horizon if suite is not None else None


def _horizon_text(info: Dict) -> str:
    horizon = training_horizon(info)
    if horizon is None:
        return "unknown"
    config = info.get("config") or {}
    if config.get("horizon_schedule") == "log_uniform":
        low = config.get("horizon_min") or config.get("unroll_length")
        return f"{low}–{horizon} (log-uniform)"
    return str(horizon)


def _domain(info: Dict) -> str:
    if _card(info).get("domain"):
        return str(_card(info)["domain"])
    suite = _registered_suite(info)
    if suite is not None:
        return suite.description
    return f"the tasks of suite {info.get('suite_spec') or info.get('suite') or '?'}"


def _headline(info: Dict) -> str:
    """The card's headline, else one from an `evaluation` record {"horizon_N": {median_final,
    tuned_adam_median_final, won_vs_tuned_adam}, "suite", "split"} at its shortest horizon."""
    if _card(info).get("headline"):
        return str(_card(info)["headline"])
    evaluation = info.get("evaluation")
    if not isinstance(evaluation, dict):
        return "no held-out evaluation recorded"
    rows = sorted((int(k[8:]), v) for k, v in evaluation.items() if k.startswith("horizon_") and k[8:].isdigit())
    if not rows:
        return "no held-out evaluation recorded"
    steps, row = rows[0]
    where = f"{evaluation.get('split', 'heldout')} {evaluation.get('suite', '')}".strip()
    parts = [f"median final loss {row['median_final']:.3g}" if "median_final" in row else "evaluated"]
    if "tuned_adam_median_final" in row:
        parts[0] += f" vs tuned Adam {row['tuned_adam_median_final']:.3g}"
    if "won_vs_tuned_adam" in row:
        parts.append(f"won {row['won_vs_tuned_adam']:.0%}")
    return f"{where}, {steps} steps: {', '.join(parts)}"


def _model_card(info: Dict, path: Path) -> Optional[str]:
    if info.get("model_card"):
        return str(info["model_card"])
    beside = path.with_suffix(".md")
    return str(beside) if beside.is_file() else None


def summary(name_or_path) -> CardSummary:
    """The card summary of a checkpoint file or shipped name (reads the file's header)."""
    path = checkpoints.resolve(name_or_path)
    _, header = checkpoints.read_tensors(path)
    info = header.get("info") if isinstance(header.get("info"), dict) else {}
    return CardSummary(
        name=card_name(info, path),
        architecture=str(header.get("architecture", "?")),
        suite=str(info.get("suite") or (info.get("config") or {}).get("suite") or "?"),
        domain=_domain(info),
        horizon=_horizon_text(info),
        headline=_headline(info),
        model_card=_model_card(info, path),
    )
