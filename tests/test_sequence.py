"""Tiny causal transformer LMs on Markov chains (l2o/task_distributions/sequence.py)."""

import math

import torch

from l2o.task_distributions import Choice, MarkovLMFamily
from l2o.task_distributions.checks import adam_curve, check_family
from l2o.task_distributions.seeds import CONSTANTS, generator
from l2o.task_distributions.sequence import entropy_rate, lm_init, lm_logits, markov_chain, markov_sequences


def test_generated_sequences_follow_the_chain():
    gen = torch.Generator().manual_seed(0)
    chain = markov_chain(gen, 5, sharpness=2.0)
    assert torch.allclose(chain.sum(1), torch.ones(5, dtype=chain.dtype))
    seqs = markov_sequences(gen, chain, 2000, 20)
    assert seqs.shape == (2000, 20) and seqs.min() >= 0 and seqs.max() < 5
    counts = torch.zeros(5, 5, dtype=torch.float64)
    pairs = (seqs[:, :-1].reshape(-1), seqs[:, 1:].reshape(-1))
    counts.index_put_(pairs, torch.ones(2000 * 19, dtype=torch.float64), accumulate=True)
    empirical = counts / counts.sum(1, keepdim=True)
    assert (empirical - chain).abs().max() < 0.03


def test_entropy_rate_is_log_vocab_for_a_uniform_chain_and_lower_for_sharp_ones():
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    assert abs(entropy_rate(uniform) - math.log(4)) < 1e-9
    sharp = markov_chain(torch.Generator().manual_seed(1), 4, sharpness=8.0)
    assert entropy_rate(sharp) < 0.8 * math.log(4)


def test_the_model_is_causal():
    params = lm_init(torch.Generator().manual_seed(0), (8, 12, 16, 2, 2), scale=50.0)  # large init: real mixing
    tokens = torch.randint(8, (3, 12), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 8
    a, b = lm_logits(params, tokens, 2, 2), lm_logits(params, changed, 2, 2)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_family_contract_with_sampled_widths():
    family = MarkovLMFamily(vocab=8, context=8, d_model=Choice(8, 16), batch_size=4, pool=32, eval_sequences=8)
    check_family(family, tasks=2)
    assert {family.sample_structure("train", i)[1] for i in range(20)} == {8, 16}


def test_heldout_chains_and_sequences_differ_from_train():
    family = MarkovLMFamily(vocab=8, context=8, pool=16, eval_sequences=4)
    train = [family.sample("train", i).evaluation_batch()["tokens"] for i in range(10)]
    heldout = [family.sample("heldout", i).evaluation_batch()["tokens"] for i in range(10)]
    assert not any(torch.equal(a, b) for a in train for b in heldout)
    task = family.sample("train", 0)  # evaluation sequences are separate draws, never trained on
    assert not set(task.sampler.rows.tolist()) & set(task.sampler.eval_rows.tolist())
    assert task.sampler.indices(range(50)).max() < 16


def test_ood_tasks_have_longer_contexts_and_wider_models():
    task = MarkovLMFamily(vocab=8, context=8, d_model=16, pool=16, eval_sequences=4).sample("ood", 0)
    assert task.batch(0)["tokens"].shape[1] == 17 and task.init_params()["tok"].shape == (8, 32)


def test_loss_decreases_under_adam_toward_the_entropy_rate():
    family = MarkovLMFamily(vocab=8, context=16, d_model=16, batch_size=16, sharpness=4.0, pool=256, eval_sequences=64)
    task = family.sample("heldout", 0)
    best = entropy_rate(markov_chain(generator(task.seed, CONSTANTS), 8, 4.0))  # the chain the task drew
    curve = adam_curve(task, steps=100, lr=3e-3)
    assert curve[-1] - best < 0.25 * (curve[0] - best), (curve[[0, -1]], best)
