"""`LearnedOptimizer` inside the frameworks users train with: PyTorch Lightning and the Hugging Face
`Trainer` (each trained, checkpointed, resumed and compared bitwise with an uninterrupted run),
`torch.compile` and mixed precision with a `GradScaler`. Tiny models, CPU, no network."""

import warnings

import lightning as L  # the test extra installs lightning, transformers and accelerate (Trainer needs it)
import torch
import torch.nn.functional as F
import transformers

import l2o

CHECKPOINT = "lstm-quadratic10"  # a shipped learned optimizer with recurrent per-parameter state


def _assert_same_training_state(a_params, b_params, a_opt, b_opt):
    for (name, p), q in zip(a_params, b_params):
        assert torch.equal(p, q), name
    state_a, state_b = a_opt.state_dict(), b_opt.state_dict()
    assert [g["lr"] for g in state_a["param_groups"]] == [g["lr"] for g in state_b["param_groups"]]

    def leaves(tree, prefix=""):
        if isinstance(tree, dict):
            for k, v in sorted(tree.items(), key=lambda kv: str(kv[0])):
                yield from leaves(v, f"{prefix}/{k}")
        else:
            yield prefix, tree

    pairs = list(zip(leaves(state_a["state"]), leaves(state_b["state"])))
    assert pairs and all(ka == kb and torch.equal(va, vb) for (ka, va), (kb, vb) in pairs)


# ----------------------------------------------------------------------------------------------
# PyTorch Lightning.

class _Regression(L.LightningModule):
    """configure_optimizers returns the learned optimizer plus a per-step LR scheduler."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def training_step(self, batch, _):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = l2o.LearnedOptimizer(self.parameters(), checkpoint=CHECKPOINT)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _regression_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.1 * torch.randn(32, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)


def _fit(root, epochs, ckpt_path=None, save=False):
    model = _Regression()
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)] if save else []
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=save,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, _regression_data(), ckpt_path=ckpt_path)
    return model, trainer


def test_lightning_trains_and_resumes_from_its_checkpoint_bitwise(tmp_path):
    whole, whole_trainer = _fit(tmp_path / "whole", epochs=4)
    first, _ = _fit(tmp_path / "part", epochs=2, save=True)
    resumed, resumed_trainer = _fit(tmp_path / "part", 4, ckpt_path=str(tmp_path / "part" / "last.ckpt"), save=True)
    assert resumed_trainer.global_step == whole_trainer.global_step == 16
    opt, whole_opt = resumed_trainer.optimizers[0], whole_trainer.optimizers[0]
    assert isinstance(opt, l2o.LearnedOptimizer) and opt.param_groups[0]["lr"] == 0.5**5  # StepLR moved on
    _assert_same_training_state(
        list(whole.named_parameters()), [p for _, p in resumed.named_parameters()], whole_opt, opt
    )
    moved = [not torch.equal(p, q) for p, q in zip(first.parameters(), resumed.parameters())]
    assert all(moved)  # the resumed run trained on (a resume that did nothing would also "match" nothing)
    x, y = _regression_data().dataset.tensors
    with torch.no_grad():
        assert F.mse_loss(whole.net(x), y) < F.mse_loss(_Regression().net(x), y)


# ----------------------------------------------------------------------------------------------
# Hugging Face transformers' Trainer.

def _tiny_lm():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def _token_data():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 16, (20, 8), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def _hf_train(out, resume_from=None):
    model = _tiny_lm()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=CHECKPOINT)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + 0.1 * step))
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=6,
        per_device_train_batch_size=4,  # 5 batches per epoch: the resume below is mid-epoch
        save_strategy="steps",
        save_steps=3,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_token_data(), optimizers=(opt, sched))
    trainer.train(resume_from_checkpoint=resume_from)
    return model, trainer


def test_hf_trainer_trains_and_resumes_from_checkpoint_bitwise(tmp_path):
    whole, whole_trainer = _hf_train(tmp_path / "whole")
    start = _tiny_lm()
    resumed, trainer = _hf_train(tmp_path / "resumed", resume_from=str(tmp_path / "whole" / "checkpoint-3"))
    assert trainer.state.global_step == whole_trainer.state.global_step == 6
    opt, whole_opt = trainer.optimizer.optimizer, whole_trainer.optimizer.optimizer  # inside accelerate's wrapper
    assert isinstance(opt, l2o.LearnedOptimizer)
    _assert_same_training_state(list(whole.named_parameters()), [p for _, p in resumed.named_parameters()], whole_opt, opt)
    assert not torch.equal(next(start.parameters()), next(resumed.parameters()))


# ----------------------------------------------------------------------------------------------
# torch.compile and mixed precision.


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _batches(n=5):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def test_a_compiled_model_trains_like_the_eager_one():
    results = []
    for compiled in (False, True):
        model = _mlp()
        forward = torch.compile(model, backend="aot_eager") if compiled else model  # no C++ compiler needed
        opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=CHECKPOINT)
        for x, y in _batches():
            opt.zero_grad()
            F.cross_entropy(forward(x), y).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_autocast_with_a_grad_scaler_steps_as_unscaled_and_skips_nonfinite_steps():
    def train(scaler, bad_step=None):
        """5 steps under bf16 autocast; at `bad_step` the loss is inf: the scaler must skip that step
        (the plain loop skips it by hand)."""
        model = _mlp()
        opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=CHECKPOINT)
        for i, (x, y) in enumerate(_batches()):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            if scaler is None:
                loss.backward()
                if i != bad_step:
                    opt.step()
            else:
                scaler.scale(loss * (float("inf") if i == bad_step else 1.0)).backward()
                scaler.step(opt)
                scaler.update()
        return [p.detach().clone() for p in model.parameters()]

    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)

    for bad_step in (None, 2):  # a power-of-two scale is undone exactly; a skipped step leaves no trace
        for a, b in zip(train(None, bad_step), train(scaler(), bad_step)):
            assert torch.equal(a, b)
