"""What a checkpoint is for (l2o/cards.py): `l2o list`'s summaries and the horizon warning."""

import warnings

import pytest
import torch

import l2o
from l2o import cards, checkpoints, optimizers, torch_optim
from l2o.cli import main
from l2o.task_distributions import get_suite

CARD = {"domain": "small MLPs on tabular data", "headline": "heldout tab-mlp, 200 steps: median speedup 1.4×, won 70%"}


def _save(path, info):
    lopt = optimizers.build("lstm", hidden=4)
    return checkpoints.save(path, lopt, lopt.init_meta(torch.Generator().manual_seed(0)), info)


def test_the_shipped_checkpoint_is_summarized_from_its_header():
    _, header = checkpoints.read_tensors(checkpoints.resolve("lstm-quadratic10"))
    info = header["info"]
    card = cards.summary("lstm-quadratic10")
    assert (card.name, card.architecture, card.suite) == ("lstm-quadratic10", header["architecture"], info["suite"])
    assert card.horizon == str(info["config"]["horizon"])
    assert (card.domain, card.headline) == (info["card"]["domain"], info["card"]["headline"])
    assert "quadratics only" in card.domain  # what it is not for, where `l2o list` shows it
    assert card.model_card == info["model_card"]


def test_without_card_fields_the_summary_comes_from_the_suite_and_the_evaluation(tmp_path):
    _, header = checkpoints.read_tensors(checkpoints.resolve("lstm-quadratic10"))
    info = {k: v for k, v in header["info"].items() if k != "card"}
    card = cards.summary(_save(tmp_path / "bare.safetensors", info))
    assert card.domain == get_suite(info["suite"]).description
    first = info["evaluation"]["horizon_100"]
    assert f"{first['median_final']:.3g}" in card.headline and f"{first['tuned_adam_median_final']:.3g}" in card.headline


def test_card_fields_win_and_a_log_uniform_horizon_reads_as_a_range(tmp_path):
    config = {"horizon": 2000, "horizon_schedule": "log_uniform", "horizon_min": 100, "suite": "mlp-small"}
    path = _save(tmp_path / "tab.safetensors", {"config": config, "suite": "mlp-small", "card": CARD})
    card = cards.summary(path)
    assert (card.domain, card.headline, card.horizon) == (CARD["domain"], CARD["headline"], "100–2000 (log-uniform)")
    assert card.model_card is None and cards.training_horizon({"config": config}) == 2000
    (tmp_path / "tab.md").write_text("# card")
    assert cards.summary(path).model_card == str(tmp_path / "tab.md")
    user = _save(tmp_path / "run" / "checkpoint.safetensors", {"config": {"horizon": 0, "suite": "t.py:S"}, "suite": "t.py:S"})
    card = cards.summary(user)  # a suite in the user's files is named, never run, by a listing
    assert card.name == "run" and card.horizon == "unknown" and "t.py:S" in card.domain
    assert card.headline == "no held-out evaluation recorded"


def test_list_shows_new_checkpoints_without_code_changes(tmp_path, monkeypatch, capsys):
    _save(tmp_path / "tab-mlp.safetensors", {"config": {"horizon": 200, "suite": "mlp-small"}, "card": CARD})
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(checkpoints, "shipped_dir", lambda: tmp_path)
    assert main(["list"]) == 0
    out = capsys.readouterr().out.split("shipped checkpoints")[1]
    assert "tab-mlp            lstm, meta-trained on suite mlp-small, horizon 200" in out
    assert f"for:      {CARD['domain']}" in out and f"held-out: {CARD['headline']}" in out
    assert "broken             unreadable: " in out  # one bad file does not hide the others


def test_far_past_the_training_horizon_warns_once_naming_the_card(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_optim, "_WARNED_PAST_HORIZON", set())
    path = _save(tmp_path / "quad.safetensors", {"config": {"horizon": 100}, "card": {"name": "quad-card"}})
    params = [torch.nn.Parameter(torch.zeros(3))]
    limit = torch_optim.HORIZON_WARNING_FACTOR * 100
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        l2o.LearnedOptimizer(params, checkpoint=path, num_steps=limit)  # at the limit: quiet
        l2o.LearnedOptimizer(params, checkpoint=path)  # no num_steps: nothing to compare
        l2o.LearnedOptimizer(params, optimizer="adam", num_steps=10**6)  # no checkpoint, no horizon
        for _ in range(3):
            l2o.LearnedOptimizer(params, checkpoint=path, num_steps=100 * 100)
    messages = [str(w.message) for w in caught if issubclass(w.category, torch_optim.HorizonWarning)]
    assert len(messages) == 1 and messages[0].startswith("quad-card was meta-trained for 100-step runs")
    assert "100×" in messages[0] and f"--checkpoint {path}" in messages[0]
    assert caught[-1].filename == __file__  # points at the user's line, not at l2o


def test_unknown_horizon_never_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_optim, "_WARNED_PAST_HORIZON", set())
    path = _save(tmp_path / "x.safetensors", {"config": {"horizon": 0, "suite": "elsewhere.py:S"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l2o.LearnedOptimizer([torch.nn.Parameter(torch.zeros(2))], checkpoint=path, num_steps=10**6)


@pytest.mark.parametrize("horizon", [None, "100", -5])
def test_malformed_card_horizons_fall_back_to_the_config(horizon):
    assert cards.training_horizon({"card": {"horizon": horizon}, "config": {"horizon": 40}}) == 40
