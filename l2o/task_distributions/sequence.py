"""Tiny causal transformer language models on generated sequences: a random Markov chain per task.

Transformers are where hand-designed optimizers are most fragile (Adam's ε and warmup, layer-wise
scale differences), and VeLO (Metz et al. 2022) meta-trained on many small ones. Here each task draws
its own chain P = softmax(s·Z) over a small vocabulary (Z Gaussian, sharpness s sampled: sharper
chains have lower entropy and are easier to predict), generates a pool of training sequences and a
disjoint pool of evaluation sequences from it, and trains a pre-LayerNorm GPT-style model (Radford
et al. 2019) written as pure functions (no nn.Module), so `vmap` and `grad` compose. The best
achievable loss is the chain's entropy rate, so progress is measurable.

OOD tasks have 2× longer contexts and 2× wider models than training saw.
"""

from __future__ import annotations

import functools
import math
from typing import Hashable, Optional

import torch
import torch.nn.functional as F

from l2o.task_distributions import space
from l2o.task_distributions.base import Task, TaskFamily, task_seed
from l2o.task_distributions.sampling import MinibatchSampler, TensorData
from l2o.task_distributions.seeds import CONSTANTS, HYPER, STRUCTURE, generator

_OOD_FACTOR = 2  # longer contexts and wider models


def markov_chain(gen: torch.Generator, vocab: int, sharpness: float) -> torch.Tensor:
    """(vocab, vocab) row-stochastic transition matrix softmax(sharpness · Z), Z ~ N(0, 1)."""
    return torch.softmax(sharpness * torch.randn(vocab, vocab, generator=gen, dtype=torch.float64), dim=1)


def markov_sequences(gen: torch.Generator, chain: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """(count, length) int64 token sequences: uniform first token, then the chain (inverse-CDF draws)."""
    vocab = len(chain)
    cdf = chain.cumsum(dim=1)
    u = torch.rand(length, count, 1, generator=gen, dtype=torch.float64)
    tokens = [torch.randint(vocab, (count,), generator=gen)]
    for t in range(1, length):
        nxt = torch.searchsorted(cdf[tokens[-1]], u[t]).squeeze(1)
        tokens.append(nxt.clamp_max(vocab - 1))  # u above a row's rounded total
    return torch.stack(tokens, dim=1)


def entropy_rate(chain: torch.Tensor, steps: int = 200) -> float:
    """The chain's entropy rate in nats (the best next-token loss), from its stationary distribution."""
    pi = torch.full((len(chain),), 1.0 / len(chain), dtype=chain.dtype)
    for _ in range(steps):
        pi = pi @ chain
    return float(-(pi[:, None] * chain * chain.clamp_min(1e-300).log()).sum())


def lm_init(gen: torch.Generator, sizes, scale: float = 1.0):
    """GPT-2's init: N(0, 0.02·scale) weights, residual projections shrunk by 1/sqrt(2·layers)."""
    vocab, length, d, layers, _ = sizes
    std = 0.02 * scale
    resid = std / math.sqrt(2 * layers)

    def normal(*shape, s=std):
        return torch.randn(*shape, generator=gen) * s

    params = {"tok": normal(vocab, d), "pos": normal(length, d)}
    for i in range(layers):
        params.update(
            {
                f"ln1_g{i}": torch.ones(d),
                f"ln1_b{i}": torch.zeros(d),
                f"qkv{i}": normal(d, 3 * d),
                f"proj{i}": normal(d, d, s=resid),
                f"ln2_g{i}": torch.ones(d),
                f"ln2_b{i}": torch.zeros(d),
                f"fc{i}": normal(d, 4 * d),
                f"fc_b{i}": torch.zeros(4 * d),
                f"out{i}": normal(4 * d, d, s=resid),
                f"out_b{i}": torch.zeros(d),
            }
        )
    params.update({"lnf_g": torch.ones(d), "lnf_b": torch.zeros(d), "head": normal(d, vocab)})
    return params


def lm_logits(params, tokens, layers: int, heads: int):
    """(batch, T, vocab) next-token logits of a pre-LN causal transformer."""
    batch, length = tokens.shape
    d = params["tok"].shape[1]
    hd = d // heads
    h = F.embedding(tokens, params["tok"]) + params["pos"][:length]
    causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    for i in range(layers):
        a = F.layer_norm(h, (d,), params[f"ln1_g{i}"], params[f"ln1_b{i}"])
        q, k, v = (a @ params[f"qkv{i}"]).split(d, dim=-1)
        q, k, v = (z.reshape(batch, length, heads, hd).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = torch.where(causal, scores, torch.finfo(scores.dtype).min)
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, d)
        h = h + y @ params[f"proj{i}"]
        m = F.layer_norm(h, (d,), params[f"ln2_g{i}"], params[f"ln2_b{i}"])
        h = h + F.gelu(m @ params[f"fc{i}"] + params[f"fc_b{i}"]) @ params[f"out{i}"] + params[f"out_b{i}"]
    return F.layer_norm(h, (d,), params["lnf_g"], params["lnf_b"]) @ params["head"]


@functools.lru_cache(maxsize=None)
def lm_loss(layers: int, heads: int):
    """Mean next-token cross-entropy: one function object per (layers, heads)."""

    def loss(params, batch):
        tokens = batch["tokens"]
        logits = lm_logits(params, tokens[:, :-1], layers, heads)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    return loss


class MarkovLMFamily(TaskFamily):
    """Causal transformer LMs (default: 1 layer, d=32, 2 heads, context 32) on random Markov chains.

    `d_model`, `layers`, `batch_size`, `sharpness` and `init_scale` take constants or distributions;
    the first three fix shapes and are drawn per task group. Each task trains on `pool` sequences
    and is evaluated on `eval_sequences` others from the same chain.
    """

    def __init__(
        self,
        vocab: int = 16,
        context: int = 32,
        d_model=32,
        layers=1,
        heads: int = 2,
        batch_size=16,
        sharpness=space.Uniform(1.0, 4.0),
        init_scale=1.0,
        pool: int = 512,
        eval_sequences: int = 128,
        name: Optional[str] = None,
    ):
        for d in space.options(d_model):
            if d % heads or d < heads:
                raise ValueError(f"d_model ({d}) must be a positive multiple of heads ({heads})")
        if vocab < 2 or context < 1 or pool < 1 or eval_sequences < 1:
            raise ValueError("need vocab ≥ 2 and context, pool, eval_sequences ≥ 1")
        self.vocab, self.context, self.d_model, self.layers, self.heads = vocab, context, d_model, layers, heads
        self.batch_size, self.sharpness, self.init_scale = batch_size, sharpness, init_scale
        self.pool, self.eval_sequences = pool, eval_sequences
        self.name = name or (
            f"markov_lm_v{vocab}_t{context}_d{space.name_label(d_model)}_l{space.name_label(layers)}"
        )
        self.description = (
            f"causal transformer LM (d {space.label(d_model)}, {space.label(layers)} layer(s), {heads} heads) "
            f"on vocab-{vocab} Markov chains, context {context}, sharpness {space.label(sharpness)}"
        )
        self.splits = {
            "train": "chains and sequences from train seeds",
            "heldout": "other chains and sequences (disjoint seeds)",
            "ood": f"context {_OOD_FACTOR * context}, d_model ×{_OOD_FACTOR}, disjoint seeds",
        }

    def _space(self, split: str):
        if split == "ood":
            wider = space.map_value(self.d_model, lambda d: d * _OOD_FACTOR)
            return self.context * _OOD_FACTOR, wider, self.layers, self.batch_size
        return self.context, self.d_model, self.layers, self.batch_size

    def sample_structure(self, split: str, index: int) -> Optional[Hashable]:
        values = self._space(split)
        if all(space.is_fixed(v) for v in values):
            return None
        gen = generator(task_seed(self.name, split, index), STRUCTURE)
        return tuple(int(space.draw(v, gen)) for v in values)

    def sample(self, split: str, index: int, structure: Optional[Hashable] = None) -> Task:
        seed = task_seed(self.name, split, index)
        if structure is None:
            structure = self.sample_structure(split, index)
        if structure is None:
            structure = tuple(int(space.fixed_value(v)) for v in self._space(split))
        context, d_model, layers, batch_size = structure
        hyper = generator(seed, HYPER)
        sharpness, scale = space.draw(self.sharpness, hyper), space.draw(self.init_scale, hyper)
        gen = generator(seed, CONSTANTS)
        chain = markov_chain(gen, self.vocab, sharpness)
        tokens = markov_sequences(gen, chain, self.pool + self.eval_sequences, context + 1)
        sampler = MinibatchSampler(
            TensorData({"tokens": tokens}, self.name),
            torch.arange(self.pool),
            batch_size,
            seed,
            eval_rows=torch.arange(self.pool, self.pool + self.eval_sequences),
        )
        sizes = (self.vocab, context, d_model, layers, self.heads)
        return Task(
            family=self.name,
            seed=seed,
            init=functools.partial(lm_init, sizes=sizes, scale=scale),
            loss=lm_loss(layers, self.heads),
            batch=sampler.batch,
            shape_key=sizes + (batch_size,),
            sampler=sampler,
        )
