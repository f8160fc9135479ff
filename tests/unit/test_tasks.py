"""Tasks: every built-in task learns end to end, its metrics and loss match a direct computation,
distillation leaves the teacher alone, and custom losses and step functions work."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surefit as sf
from surefit.config import TaskConfig
from surefit.tasks import build_task
from tests.conftest import make_classification, mlp


# -- helpers ---------------------------------------------------------------------------------------
def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def split(n_train: int, *tensors: torch.Tensor) -> tuple[tuple, tuple]:
    """(train, val) tuples: the first ``n_train`` rows and the rest."""
    return tuple(t[:n_train] for t in tensors), tuple(t[n_train:] for t in tensors)


def task_obj(name: str, teacher: nn.Module | None = None, **options):
    return build_task(TaskConfig(name=name, **options), teacher=teacher)


def untrained(model: nn.Module, val: tuple, task: str, teacher=None, **options) -> dict:
    """Validation loss and metrics of the model before training, with the same task options."""
    return sf.evaluate(
        model, val, task=task_obj(task, teacher, **options), prefix="val", device="cpu"
    )


def train(model: nn.Module, train_data: tuple, val: tuple, **kw) -> sf.FitResult:
    kw = {
        "epochs": 8,
        "batch_size": 32,
        "lr": 2e-2,
        "schedule": "constant",
        "clip_norm": None,
        "weight_decay": 0.0,
        "seed": 0,
        "device": "cpu",
        "progress": "off",
        **kw,
    }
    return sf.fit(model, train_data, val=val, **kw)


def assert_learned(before: dict, result: sf.FitResult, factor: float = 0.5) -> dict:
    """The final val loss is clearly below the untrained model's; returns the last record."""
    last = result.history[-1]
    assert math.isfinite(last["val_loss"])
    assert last["val_loss"] < factor * before["val_loss"], (before["val_loss"], last["val_loss"])
    return last


class Fixed(nn.Module):
    """A model with known outputs: input i (a sample index) gives row i of ``table``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def fixed_eval(outputs: torch.Tensor, target, task, batch_size: int = 256, **kw) -> dict:
    """evaluate() a model whose outputs are ``outputs``, against ``target``."""
    idx = torch.arange(len(outputs))
    return sf.evaluate(
        Fixed(outputs), (idx, target), task=task, batch_size=batch_size, device="cpu", **kw
    )


def close(a: float, b: float | torch.Tensor, tol: float = 1e-5) -> bool:
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


# -- every task learns -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.1},
        pytest.param(
            {"class_weights": [1.0, 2.0, 0.5, 1.5, 1.0, 1.0, 0.8, 1.2, 1.0, 2.0]},
        ),
    ],
    ids=["plain", "label_smoothing", "class_weights"],
)
def test_multiclass_learns(options):
    g = gen(1)
    centers = 1.5 * torch.randn(10, 16, generator=g)
    y = torch.randint(0, 10, (320,), generator=g)
    x = centers[y] + 1.2 * torch.randn(320, 16, generator=g)  # 10 noisy blobs
    tr, val = split(256, x, y)
    model = mlp(16, 10, hidden=32, seed=0)
    before = untrained(model, val, "multiclass", **options)
    r = train(model, tr, val, task="multiclass", **options)
    last = assert_learned(before, r)
    assert last["val_accuracy"] > 0.9  # chance is 0.1
    assert last["val_top5"] > 0.97  # 10 classes: top-5 is on by default
    assert before["val_top5"] < 0.7
    # the options reach the loss: the val loss is the smoothed / weighted cross-entropy
    weight = torch.tensor(options["class_weights"]) if "class_weights" in options else None
    with torch.no_grad():
        expected = F.cross_entropy(
            model(val[0]),
            val[1],
            weight=weight,
            label_smoothing=options.get("label_smoothing", 0.0),
        )
    assert close(last["val_loss"], expected)
    if "label_smoothing" in options:
        assert last["val_loss"] > 0.45  # smoothing 0.1 over 10 classes bounds the CE below 0.50


def test_binary_learns_with_pos_weight_and_b1_logits_against_b_targets():
    g = gen(2)
    x = torch.randn(300, 6, generator=g)
    y = ((x @ torch.randn(6, generator=g)) > 0.3).long()  # (B,), imbalanced
    tr, val = split(240, x, y)
    model = mlp(6, 1, seed=0)  # (B, 1) logits
    before = untrained(model, val, "binary", pos_weight=[2.0])
    r = train(model, tr, val, task="binary", pos_weight=[2.0])
    last = assert_learned(before, r)
    assert last["val_accuracy"] > 0.9
    assert last["val_f1"] > 0.85


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_class_ids_of_any_integer_dtype_train_as_int64_would(dtype):
    x, y = make_classification(64)
    runs = [sf.fit(mlp(), (x, y.to(d)), val=(x, y.to(d)), epochs=2, batch_size=16,
                   progress="off") for d in (torch.long, dtype)]  # fmt: skip
    clock = ("time_s", "samples_per_s", "steps_per_s")
    a, b = ([{k: v for k, v in h.items() if k not in clock} for h in r.history] for r in runs)
    assert a == b and "val_accuracy" in a[-1]
    assert runs[1].config.task.name == "multiclass"  # the config records the task inferred


@pytest.mark.parametrize(
    ("target", "loss", "task"),
    [("bool", "", "binary"), ("bool2", "", "multilabel"), ("float", "bce", "binary"),
     ("float2", "bce", "multilabel"), ("long", "l1", "regression"), ("long", "", "multiclass"),
     ("float", "", "regression"), ("float2", "ce", "multiclass")],
)  # fmt: skip
def test_the_task_inferred_from_the_targets_and_the_loss_named(target, loss, task):
    x, y = make_classification(64, classes=2)
    y = {"bool": y.bool(), "bool2": torch.stack([y, 1 - y], 1).bool(), "float": y.float(),
         "float2": torch.stack([y, 1 - y], 1).float(), "long": y}[target]  # fmt: skip
    out = 2 if target.endswith("2") or task == "multiclass" else 1
    model = torch.nn.Sequential(
        mlp(out=out), torch.nn.Flatten(0) if out == 1 else torch.nn.Identity()
    )
    r = sf.fit(model, (x, y), val=(x, y), epochs=1, batch_size=16, progress="off",
               **({"loss": loss} if loss else {}))  # fmt: skip
    assert r.config.task.name == task
    with torch.no_grad():
        logits = model(x)
        want = {
            "binary": lambda: F.binary_cross_entropy_with_logits(logits, y.float()),
            "multilabel": lambda: F.binary_cross_entropy_with_logits(logits, y.float()),
            "regression": lambda: F.l1_loss(logits, y.float()) if loss else F.mse_loss(logits, y),
            "multiclass": lambda: F.cross_entropy(logits, y),
        }[task]()
    assert close(r.history[-1]["val_loss"], want)


class _Outputs(nn.Module):
    """A linear classifier returning its logits in a ``kind`` of container."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.linear = kind, nn.Linear(8, 2)

    def forward(self, x):
        logits = self.linear(x)
        return {"logits": logits, "hidden": x} if self.kind == "dict" else (logits, x)


def test_a_dict_of_logits_is_scored_and_a_tuple_is_refused_with_the_fix():
    x, y = make_classification(64, classes=2)
    torch.manual_seed(0)
    model = _Outputs("dict")
    r = sf.fit(model, (x, y), val=(x, y), epochs=2, batch_size=16, progress="off")
    with torch.no_grad():
        want = F.cross_entropy(model(x)["logits"], y)
    assert close(r.history[-1]["val_loss"], want) and "val_accuracy" in r.history[-1]
    with pytest.raises(sf.DataError) as info:
        sf.fit(_Outputs("tuple"), (x, y), epochs=1, progress="off")
    assert "returns a tuple of 2" in info.value.what and "step=fn" in info.value.fix


def test_a_dataset_of_dict_samples_infers_its_task():
    x, y = make_classification(64)

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()

        def forward(self, x):
            return self.body(x)

    r = sf.fit(Net(), Dicts(), epochs=1, batch_size=16, progress="off")
    assert r.config.task.name == "multiclass" and r.steps == 4


def test_multilabel_learns():
    g = gen(3)
    x = torch.randn(300, 8, generator=g)
    y = ((x @ torch.randn(8, 4, generator=g)) > 0).float()  # (B, 4) independent 0/1 labels
    tr, val = split(240, x, y)
    model = mlp(8, 4, seed=0)
    before = untrained(model, val, "multilabel")
    r = train(model, tr, val, task="multilabel")
    last = assert_learned(before, r)
    assert last["val_accuracy"] > 0.9
    assert last["val_f1"] > 0.9
    assert last["val_f1_macro"] > 0.85


@pytest.mark.parametrize("loss", ["mse", "l1", "huber", "smooth_l1"])
def test_regression_learns(loss):
    g = gen(4)
    x = torch.randn(240, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.05 * torch.randn(240, 1, generator=g)
    tr, val = split(200, x, y)
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    options = {"loss": loss, **({"huber_delta": 0.5} if loss in ("huber", "smooth_l1") else {})}
    before = untrained(model, val, "regression", **options)
    r = train(model, tr, val, task="regression", lr=5e-2, epochs=10, **options)
    last = assert_learned(before, r, factor=0.2)
    assert last["val_r2"] > 0.95
    assert last["val_mae"] < 0.3
    assert last["val_rmse"] < 0.4
    assert before["val_mae"] > 1.0  # the bar above is far from where it started


def test_regression_with_several_outputs_learns():
    g = gen(5)
    x = torch.randn(240, 5, generator=g)
    y = x @ torch.randn(5, 2, generator=g)  # (B, 2) targets
    tr, val = split(200, x, y)
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    before = untrained(model, val, "regression")
    r = train(model, tr, val, task="regression", lr=5e-2, epochs=10)
    last = assert_learned(before, r, factor=0.2)
    assert last["val_r2"] > 0.95


class Bigram(nn.Module):
    def __init__(self, vocab: int, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(tokens)))  # (B, T, V)


def test_lm_learns_and_skips_ignore_index_positions():
    vocab, g = 12, gen(6)
    x = torch.randint(0, vocab, (200, 8), generator=g)
    y = (x + 1) % vocab  # the next token is always the successor
    ignored = torch.rand(200, 8, generator=g) < 0.25
    y[ignored] = -100  # padding-like positions: never scored
    tr, val = split(160, x, y)
    model = Bigram(vocab)
    before = untrained(model, val, "lm")
    r = train(model, tr, val, task="lm", lr=5e-2)
    last = assert_learned(before, r, factor=0.2)
    assert last["val_accuracy"] > 0.95  # chance is 1/12
    assert last["val_perplexity"] < 1.5 < 6 < before["val_perplexity"]
    assert close(last["val_perplexity"], math.exp(last["val_loss"]))


def seg_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 1, 8, 8, generator=gen(seed))
    mask = (x[:, 0] > -0.4).long() + (x[:, 0] > 0.6).long()  # 3 classes by intensity, (B, H, W)
    return x, mask


def test_segmentation_multiclass_learns():
    x, mask = seg_images(120, 7)
    tr, val = split(96, x, mask)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 1), nn.Tanh(), nn.Conv2d(16, 3, 1))  # (B, 3, H, W)
    before = untrained(model, val, "segmentation")
    r = train(model, tr, val, task="segmentation", batch_size=16, lr=3e-2, epochs=10)
    last = assert_learned(before, r)
    assert last["val_dice"] > 0.85
    assert last["val_iou"] > 0.75
    assert last["val_dice"] >= last["val_iou"]


def test_segmentation_binary_one_channel_learns():
    g = gen(8)
    x = torch.randn(120, 1, 8, 8, generator=g)
    mask = (F.avg_pool2d(x, 3, 1, 1)[:, 0] > 0.2).float()  # (B, H, W) float masks
    tr, val = split(96, x, mask)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 1, 1))
    before = untrained(model, val, "segmentation")
    r = train(model, tr, val, task="segmentation", batch_size=16, lr=3e-2, epochs=10)
    last = assert_learned(before, r)
    assert last["val_dice"] > 0.85
    assert last["val_iou"] > 0.75


def test_ranking_learns():
    g = gen(9)
    w = torch.randn(6, generator=g)
    x1, x2 = torch.randn(300, 6, generator=g), torch.randn(300, 6, generator=g)
    y = torch.sign((x1 - x2) @ w)  # +1 when x1 should rank higher
    tr, val = split(240, x1, x2, y)
    torch.manual_seed(0)
    model = nn.Linear(6, 1)
    before = untrained(model, val, "ranking")
    r = train(model, tr, val, task="ranking", epochs=15)
    last = assert_learned(before, r, factor=0.3)
    assert last["val_ranking_accuracy"] > 0.9
    assert before["val_ranking_accuracy"] < 0.8


def test_triplet_learns():
    g, n = gen(10), 240
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])

    def points(cls: torch.Tensor) -> torch.Tensor:
        signal = centers[cls] + 0.5 * torch.randn(len(cls), 2, generator=g)
        noise = 4.0 * torch.randn(len(cls), 6, generator=g)  # large nuisance dimensions
        return torch.cat([signal, noise], 1)

    cls = torch.randint(0, 4, (n,), generator=g)
    other = (cls + torch.randint(1, 4, (n,), generator=g)) % 4
    anchor, positive, negative = points(cls), points(cls), points(other)
    tr, val = split(200, anchor, positive, negative)
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    before = untrained(model, val, "triplet")
    r = train(model, tr, val, task="triplet", lr=3e-2, epochs=10)
    last = assert_learned(before, r, factor=0.3)
    assert last["val_triplet_accuracy"] > 0.9
    assert before["val_triplet_accuracy"] < 0.8  # the raw embedding was not already good


@pytest.fixture(scope="module")
def trained_teacher() -> nn.Module:
    x, y = make_classification(300, seed=11)
    teacher = mlp(8, 3, hidden=32, seed=5)
    train(teacher, (x, y), None, task="multiclass", epochs=15)
    teacher.eval()
    with torch.no_grad():
        assert (teacher(x).argmax(1) == y).float().mean() > 0.9
    return teacher


def teacher_copy(trained_teacher: nn.Module) -> nn.Module:
    return copy.deepcopy(trained_teacher).eval().requires_grad_(True)


def test_distillation_learns_from_the_teacher_alone(trained_teacher):
    teacher = teacher_copy(trained_teacher)
    x, y = make_classification(300, seed=11)
    scrambled = torch.randint(0, 3, (240,), generator=gen(12))  # labels carry no signal
    tr, val = (x[:240], scrambled), (x[240:], y[240:])
    model = mlp(8, 3, seed=1)
    before = untrained(model, val, "distillation", teacher, alpha=1.0)
    r = train(
        model, tr, val, task="distillation", teacher=teacher, alpha=1.0, temperature=2.0, epochs=10
    )
    last = assert_learned(before, r, factor=0.3)
    assert last["val_accuracy"] > 0.85  # against the true labels, learnt from soft targets only


def test_custom_loss_callable_learns():
    x, y = make_classification(300, seed=13)
    tr, val = split(240, x, y)
    calls = []

    def hinge(outputs, target):
        calls.append(outputs.shape)
        return F.multi_margin_loss(outputs, target)

    model = mlp(seed=0)
    before = sf.evaluate(model, val, loss=hinge, prefix="val", device="cpu")
    r = train(model, tr, val, loss=hinge)
    assert r.config.task.name == "custom" and calls, "the custom loss was not used"
    last = assert_learned(before, r, factor=0.3)
    assert set(k for k in last if k.startswith("val_")) == {"val_loss"}  # no metrics of its own
    with torch.no_grad():
        accuracy = (model(val[0]).argmax(1) == val[1]).float().mean()
    assert accuracy > 0.85


def test_custom_loss_with_a_task_keeps_the_task_metrics():
    x, y = make_classification(300, seed=13)
    tr, val = split(240, x, y)
    hinge = lambda outputs, target: F.multi_margin_loss(outputs, target)
    model = mlp(seed=0)
    r = train(model, tr, val, task="multiclass", loss=hinge)
    last = r.history[-1]
    assert last["val_accuracy"] > 0.85
    with torch.no_grad():
        expected = F.multi_margin_loss(model(val[0]), val[1])
    assert close(last["val_loss"], expected)  # the val loss is the custom loss, not CE


# -- metrics and losses against a direct computation -----------------------------------------------
def test_multiclass_metrics_and_loss_match_direct_computation():
    g = gen(20)
    logits = torch.randn(30, 10, generator=g)
    y = torch.randint(0, 10, (30,), generator=g)
    y[:4] = logits[:4].argmax(1)  # some hits for sure
    weights = [1.0, 2.0, 0.5, 1.5, 1.0, 1.0, 0.8, 1.2, 1.0, 2.0]
    task = task_obj("multiclass", label_smoothing=0.1, class_weights=weights)
    out = fixed_eval(logits, y, task)
    expected = F.cross_entropy(logits, y, weight=torch.tensor(weights), label_smoothing=0.1)
    assert close(out["test_loss"], expected)
    assert close(out["test_accuracy"], (logits.argmax(1) == y).float().mean())
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean()
    assert close(out["test_top5"], top5)
    assert 0 < out["test_accuracy"] < out["test_top5"] < 1

    # over several batches: still the whole-set values
    many = fixed_eval(logits, y, "multiclass", batch_size=7)
    assert close(many["test_loss"], F.cross_entropy(logits, y))
    assert close(many["test_accuracy"], out["test_accuracy"])
    assert close(many["test_top5"], top5)
    # class weights: each batch's mean divides by its targets' weights, and so does the set's
    many = fixed_eval(logits, y, task_obj("multiclass", label_smoothing=0.1, class_weights=weights),
                      batch_size=7)  # fmt: skip
    assert close(many["test_loss"], expected)


def test_multiclass_soft_labels_score_their_top_class():
    g = gen(21)
    logits, y = torch.randn(30, 4, generator=g), torch.randint(0, 4, (30,), generator=g)
    soft = F.one_hot(y, 4).float() * 0.9 + 0.025  # label-smoothed probabilities
    out = fixed_eval(logits, soft, "multiclass", batch_size=7)
    assert close(out["test_loss"], F.cross_entropy(logits, soft))
    assert close(out["test_accuracy"], (logits.argmax(1) == y).float().mean())
    x = torch.randn(30, 8, generator=g)
    r = sf.fit(mlp(out=4), (x, soft), val=0.25, task="multiclass", epochs=1, progress="off")
    assert "val_accuracy" in r.history[-1]  # trains and evaluates end to end


def test_multiclass_accuracy_skips_ignore_index():
    logits = torch.eye(4)[[0, 1, 2, 3, 0, 1]] * 5  # predicts 0, 1, 2, 3, 0, 1
    y = torch.tensor([0, 1, 0, -100, -100, 2])  # 2 hits of 4 scored
    out = fixed_eval(logits, y, "multiclass")
    assert close(out["test_accuracy"], 0.5)
    keep = y != -100
    assert close(out["test_loss"], F.cross_entropy(logits[keep], y[keep]))


def test_binary_metrics_and_loss_match_direct_computation():
    g = gen(21)
    logits = torch.randn(40, 1, generator=g)
    y = (torch.rand(40, generator=g) < 0.4).long()
    out = fixed_eval(logits, y, task_obj("binary", pos_weight=[3.0]))
    expected = F.binary_cross_entropy_with_logits(
        logits[:, 0], y.float(), pos_weight=torch.tensor([3.0])
    )
    assert close(out["test_loss"], expected)
    pred = (logits[:, 0] > 0).long()
    tp = ((pred == 1) & (y == 1)).sum()
    f1 = 2 * tp / (pred.sum() + y.sum())
    assert close(out["test_accuracy"], (pred == y).float().mean())
    assert close(out["test_f1"], f1)
    assert close(fixed_eval(logits, y, "binary", batch_size=6)["test_f1"], f1)


def _auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(a positive outscores a negative), ties counting half: the area under the ROC curve."""
    pos, neg = scores[positive.bool()], scores[~positive.bool()]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def test_on_request_ranking_and_threshold_metrics_match_direct_computation():
    g = gen(23)
    logits = torch.randn(40, 1, generator=g)
    y = (torch.rand(40, generator=g) < 0.4).long()
    y[:3] = 1  # positives scored high for sure
    logits[:3] = 3.0
    out = fixed_eval(logits, y, "binary", batch_size=6,
                     metrics=["auroc", "precision", "recall", "accuracy"])  # fmt: skip
    assert set(out) == {"test_loss", "test_auroc", "test_precision", "test_recall",
                        "test_accuracy"}  # fmt: skip
    pred = (logits[:, 0] > 0).long()
    tp = ((pred == 1) & (y == 1)).sum()
    assert close(out["test_auroc"], _auroc(logits[:, 0], y))
    assert close(out["test_precision"], tp / pred.sum())
    assert close(out["test_recall"], tp / y.sum())
    assert close(out["test_accuracy"], (pred == y).float().mean())

    classes = torch.randn(50, 4, generator=g)
    ids = torch.randint(0, 4, (50,), generator=g)
    many = fixed_eval(classes, ids, "multiclass", batch_size=7, metrics=["auroc", "accuracy"])
    probs = classes.softmax(1)  # one class against the rest, averaged over the classes
    assert close(many["test_auroc"], sum(_auroc(probs[:, c], ids == c) for c in range(4)) / 4)

    labels = (torch.rand(50, 3, generator=g) < 0.5).long()
    multi = fixed_eval(classes[:, :3], labels, "multilabel", batch_size=7, metrics=["auroc"])
    want = sum(_auroc(classes[:, j], labels[:, j]) for j in range(3)) / 3
    assert close(multi["test_auroc"], want)
    with pytest.raises(sf.ConfigError, match="auroc"):  # the error lists what can be asked for
        fixed_eval(classes, ids, "multiclass", metrics=["roc"])
    # a class (a label) the set does not hold, or holds in every sample, has no AUROC: the mean
    # is over the others (torchmetrics' macro counted it as 0)
    ids[ids == 3] = 1
    absent = fixed_eval(classes, ids, "multiclass", batch_size=7, metrics=["auroc"])
    assert close(absent["test_auroc"], sum(_auroc(probs[:, c], ids == c) for c in range(3)) / 3)
    labels[:, 2] = 1
    full = fixed_eval(classes[:, :3], labels, "multilabel", batch_size=7, metrics=["auroc"])
    assert close(full["test_auroc"], sum(_auroc(classes[:, j], labels[:, j]) for j in (0, 1)) / 2)


def test_multilabel_metrics_match_direct_computation():
    g = gen(22)
    logits = torch.randn(25, 4, generator=g)
    y = (torch.rand(25, 4, generator=g) < 0.5).float()
    out = fixed_eval(logits, y, "multilabel", batch_size=8)
    pred = (logits > 0).float()
    tp = (pred * y).sum()
    assert close(out["test_f1"], 2 * tp / (pred.sum() + y.sum()))
    assert close(out["test_accuracy"], (pred == y).float().mean())
    per_label = 2 * (pred * y).sum(0) / (pred.sum(0) + y.sum(0))
    assert close(out["test_f1_macro"], per_label.mean())
    assert close(out["test_loss"], F.binary_cross_entropy_with_logits(logits, y))


@pytest.mark.parametrize(
    "kind, loss_fn",
    [
        ("mse", F.mse_loss),
        ("l1", F.l1_loss),
        ("huber", lambda p, t: F.huber_loss(p, t, delta=0.5)),
        ("smooth_l1", lambda p, t: F.smooth_l1_loss(p, t, beta=0.5)),
    ],
)
def test_regression_metrics_and_loss_match_direct_computation(kind, loss_fn):
    g = gen(23)
    target = torch.randn(30, 1, generator=g)
    pred = target + 0.8 * torch.randn(30, 1, generator=g)
    out = fixed_eval(pred, target, task_obj("regression", loss=kind, huber_delta=0.5), batch_size=7)
    assert close(out["test_loss"], loss_fn(pred, target))  # means: exact over batches of 7
    err = pred - target
    assert close(out["test_mae"], err.abs().mean())
    assert close(out["test_rmse"], err.pow(2).mean().sqrt())
    r2 = 1 - err.pow(2).sum() / (target - target.mean()).pow(2).sum()
    assert close(out["test_r2"], r2)


def test_lm_metrics_and_loss_match_direct_computation():
    g = gen(24)
    logits = torch.randn(6, 5, 7, generator=g)
    y = torch.randint(0, 7, (6, 5), generator=g)
    y[:, :2] = logits[:, :2].argmax(-1)  # some hits
    y[torch.rand(6, 5, generator=g) < 0.3] = -100
    y[1] = -100  # a sample of padding only
    ce = F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1), ignore_index=-100)
    for batch_size in (256, 2, 1):  # the token mean, whatever the batches' share of padding
        out = fixed_eval(logits, y, "lm", batch_size=batch_size)
        assert close(out["test_loss"], ce)
        assert close(out["test_perplexity"], ce.exp())
    keep = y != -100
    assert close(out["test_accuracy"], (logits.argmax(-1) == y)[keep].float().mean())


def dice_iou(pred: torch.Tensor, true: torch.Tensor, classes) -> tuple[float, float]:
    """Mean over the given classes present in pred or target, over the whole set."""
    dice, iou = [], []
    for c in classes:
        p, t = pred == c, true == c
        if p.any() or t.any():
            inter = (p & t).sum().item()
            dice.append(2 * inter / (p.sum().item() + t.sum().item()))
            iou.append(inter / (p | t).sum().item())
    return sum(dice) / len(dice), sum(iou) / len(iou)


def test_segmentation_multiclass_metrics_and_loss_match_direct_computation():
    g = gen(25)
    logits = torch.randn(5, 3, 4, 4, generator=g)
    mask = torch.randint(0, 3, (5, 4, 4), generator=g)
    out = fixed_eval(logits, mask, task_obj("segmentation", dice_weight=0.0), batch_size=2)
    dice, iou = dice_iou(logits.argmax(1), mask, classes=(1, 2))  # background skipped
    assert close(out["test_dice"], dice)
    assert close(out["test_iou"], iou)
    assert close(out["test_loss"], F.cross_entropy(logits, mask))


def test_segmentation_binary_metrics_and_loss_match_direct_computation():
    g = gen(26)
    logits = torch.randn(5, 1, 4, 4, generator=g)
    mask = (torch.rand(5, 4, 4, generator=g) < 0.4).float()
    out = fixed_eval(logits, mask, task_obj("segmentation", dice_weight=0.0), batch_size=2)
    dice, iou = dice_iou((logits[:, 0] > 0).long(), mask.long(), classes=(1,))
    assert close(out["test_dice"], dice)
    assert close(out["test_iou"], iou)
    assert close(out["test_loss"], F.binary_cross_entropy_with_logits(logits[:, 0], mask))


def test_segmentation_metrics_skip_ignore_index_pixels():
    g = gen(27)
    logits = torch.randn(4, 3, 4, 4, generator=g)
    mask = torch.randint(0, 3, (4, 4, 4), generator=g)
    mask[:, 0, :] = -100  # an unlabelled border row
    out = fixed_eval(logits, mask, "segmentation")
    keep = mask != -100
    dice, iou = dice_iou(logits.argmax(1)[keep], mask[keep], classes=(1, 2))
    assert close(out["test_dice"], dice)
    assert close(out["test_iou"], iou)


def test_segmentation_loss_ignores_ignore_index_pixels():
    g = gen(28)
    logits = torch.randn(4, 3, 4, 4, generator=g)
    mask = torch.randint(0, 3, (4, 4, 4), generator=g)
    mask[:, 0, :] = -100
    other = logits.clone()
    other[:, :, 0, :] = 10 * torch.randn(4, 3, 4, generator=g)  # only ignored pixels differ
    task = task_obj("segmentation")  # default dice_weight mixes CE and soft Dice
    a, b = fixed_eval(logits, mask, task), fixed_eval(other, mask, task)
    assert close(a["test_loss"], b["test_loss"])


def test_segmentation_ce_loss_over_the_set_weights_batches_by_their_pixels():
    g = gen(30)
    logits = torch.randn(9, 3, 4, 4, generator=g)
    mask = torch.randint(0, 3, (9, 4, 4), generator=g)
    mask[:4, :3] = -100  # the first images are mostly ignored
    task = task_obj("segmentation", dice_weight=0.0)
    whole = F.cross_entropy(logits, mask, ignore_index=-100)
    for bs in (1, 4, 9):
        assert close(fixed_eval(logits, mask, task, batch_size=bs)["test_loss"], whole)


def test_ranking_metric_and_loss_match_direct_computation():
    g = gen(29)
    s1, s2 = torch.randn(20, generator=g), torch.randn(20, generator=g)
    y = torch.where(torch.rand(20, generator=g) < 0.5, 1.0, -1.0)
    scores = torch.cat([s1, s2])[:, None]  # the model scores each input index: (B, 1)
    data = (torch.arange(20), torch.arange(20, 40), y)
    out = sf.evaluate(Fixed(scores), data, task=task_obj("ranking", margin=0.5), batch_size=6)
    assert close(out["test_loss"], F.margin_ranking_loss(s1, s2, y, margin=0.5))
    assert close(out["test_ranking_accuracy"], (torch.sign(s1 - s2) == y).float().mean())


def test_triplet_metric_and_loss_match_direct_computation():
    g = gen(30)
    emb = torch.randn(60, 3, generator=g)
    a, p, n = emb[:20], emb[20:40], emb[40:]
    data = (torch.arange(20), torch.arange(20, 40), torch.arange(40, 60))
    out = sf.evaluate(Fixed(emb), data, task=task_obj("triplet", margin=0.7), batch_size=5)
    assert close(out["test_loss"], F.triplet_margin_loss(a, p, n, margin=0.7))
    hits = F.pairwise_distance(a, n) > F.pairwise_distance(a, p)
    assert close(out["test_triplet_accuracy"], hits.float().mean())
    assert 0 < out["test_triplet_accuracy"] < 1


# -- distillation ----------------------------------------------------------------------------------
def test_distillation_leaves_the_teacher_unchanged_and_in_eval_mode(trained_teacher):
    teacher = teacher_copy(trained_teacher)
    teacher.append(nn.Dropout(0.5))  # a teacher in train mode would give noisy soft targets
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes: list[bool] = []
    teacher.register_forward_hook(lambda module, args, output: modes.append(module.training))
    x, y = make_classification(200, seed=11)
    tr, val = split(160, x, y)
    r = train(
        mlp(seed=2), tr, val, task="distillation", teacher=teacher, epochs=3, weight_decay=0.1
    )
    assert r.steps == 15
    assert len(modes) >= r.steps and not any(modes), "the teacher ran in train mode"
    assert not teacher.training and not any(m.training for m in teacher.modules())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the teacher's weights changed"
    assert all(p.grad is None for p in teacher.parameters())


def test_distillation_with_alpha_zero_is_plain_cross_entropy(trained_teacher):
    x, y = make_classification(200, seed=11)
    tr, val = split(160, x, y)
    common = dict(epochs=3, lr=1e-2, weight_decay=0.01, clip_norm=1.0, seed=3)
    a, b, c = mlp(seed=4), mlp(seed=4), mlp(seed=4)
    train(
        a, tr, val, task="distillation", teacher=teacher_copy(trained_teacher), alpha=0.0, **common
    )
    train(b, tr, val, task="multiclass", **common)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    # and the teacher's term does move the weights when it has any weight: the test can fail
    train(
        c, tr, val, task="distillation", teacher=teacher_copy(trained_teacher), alpha=0.5, **common
    )
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert not all(torch.equal(pa, pc) for pa, pc in pairs)


# -- custom step functions -------------------------------------------------------------------------
def test_step_function_returning_a_loss_trains():
    x, y = make_classification(240, seed=14)
    tr, val = split(200, x, y)
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        xb, yb = batch
        return F.cross_entropy(model(xb), yb)

    model = mlp(seed=0)
    before = sf.evaluate(model, val, step=step, prefix="val", device="cpu")
    assert close(before["val_loss"], F.cross_entropy(model(val[0]), val[1]).detach())
    r = train(model, tr, val, step=step, epochs=15)
    assert calls["n"] >= r.steps == 15 * 7
    last = assert_learned(before, r, factor=0.4)
    assert set(k for k in last if k.startswith("val_")) == {"val_loss"}
    with torch.no_grad():
        assert (model(val[0]).argmax(1) == val[1]).float().mean() > 0.8


def test_step_function_returning_loss_and_outputs_feeds_the_task_metrics():
    x, y = make_classification(240, seed=14)
    tr, val = split(200, x, y)

    def step(model, batch):
        xb, yb = batch
        logits = model(xb)
        return F.cross_entropy(logits, yb), logits

    model = mlp(seed=0)
    before = sf.evaluate(model, val, step=step, task="multiclass", prefix="val", device="cpu")
    r = train(model, tr, val, step=step, task="multiclass", epochs=15)
    last = assert_learned(before, r, factor=0.4)
    assert last["val_accuracy"] > 0.8
    with torch.no_grad():
        direct = (model(val[0]).argmax(1) == val[1]).float().mean()
    assert close(last["val_accuracy"], direct)


def test_multiclass_accuracy_and_top_k_equal_torchmetrics_micro():
    import torchmetrics

    from surefit.tasks import Multiclass

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=g)
    target = torch.randint(0, 12, (300,), generator=g)
    target[::7] = -100  # ignored
    built = Multiclass().build_metrics(logits, None)
    for name, k in (("accuracy", 1), ("top5", 5)):
        for a, b in ((0, 100), (100, 300)):  # two updates: sums over the whole set
            built[name].update(logits[a:b], target[a:b])
        ref = torchmetrics.classification.MulticlassAccuracy(
            num_classes=12, top_k=k, average="micro", ignore_index=-100
        )
        ref.update(logits, target)
        assert float(built[name].compute()) == pytest.approx(float(ref.compute()), abs=1e-7)


# -- metrics over positions, per evaluation, and of small sets -------------------------------------
def test_multiclass_auroc_over_positions_counts_each_position_as_a_sample():
    g = gen(31)
    logits = torch.randn(12, 3, 5, generator=g)  # (B, C, T): a class per position
    ids = torch.randint(0, 3, (12, 5), generator=g)
    out = fixed_eval(logits, ids, "multiclass", batch_size=5, metrics=["auroc", "accuracy"])
    probs = logits.softmax(1).transpose(1, 2).reshape(-1, 3)
    flat = ids.reshape(-1)
    assert close(out["test_auroc"], sum(_auroc(probs[:, c], flat == c) for c in range(3)) / 3)


def test_regression_r2_of_outputs_per_position_and_of_a_single_sample():
    g = gen(32)
    target = torch.randn(10, 4, 2, generator=g)  # (B, T, k): k outputs at each position
    pred = target + 0.5 * torch.randn(10, 4, 2, generator=g)
    out = fixed_eval(pred, target, "regression", batch_size=3)
    rows, want = pred.reshape(-1, 2), target.reshape(-1, 2)
    per_output = 1 - (rows - want).pow(2).sum(0) / (want - want.mean(0)).pow(2).sum(0)
    assert close(out["test_r2"], per_output.mean())
    one = fixed_eval(pred[:1, 0], target[:1, 0], "regression")  # one sample: no variance
    assert math.isnan(one["test_r2"]) and math.isfinite(one["test_mae"])


def test_a_metric_object_starts_from_zero_at_every_evaluation():
    """A torchmetrics object given in metrics={...} serves every evaluation: val after epoch 2
    must not hold epoch 1's predictions, nor test the val set's."""
    from torchmetrics.classification import MulticlassAccuracy

    x, y = make_classification(300, seed=13)
    tr, val = split(240, x, y)
    metric = MulticlassAccuracy(num_classes=3, average="micro")
    model = mlp(seed=0)
    r = train(model, tr, val, metrics={"acc": metric}, epochs=3, test=(x[:60], y[:60]))
    with torch.no_grad():
        direct_val = (model(val[0]).argmax(1) == val[1]).float().mean()
        direct_test = (model(x[:60]).argmax(1) == y[:60]).float().mean()
    assert close(r.history[-1]["val_acc"], direct_val)
    assert close(r.test_metrics["test_acc"], direct_test)


def test_distillation_softens_over_the_class_axis_of_per_position_logits():
    """(B, C, T) logits: the soft term is the teacher-student KL over the C classes of each
    position, averaged over samples and positions (not a softmax over the positions)."""
    g = gen(33)
    student, teacher = torch.randn(4, 3, 6, generator=g), torch.randn(4, 3, 6, generator=g)
    target = torch.randint(0, 3, (4, 6), generator=g)
    task = task_obj("distillation", teacher=nn.Identity(), alpha=1.0, temperature=2.0)
    task.teacher = Fixed(teacher)
    loss, _, _ = task.compute(Fixed(student), (torch.arange(4), target))
    p_t, log_p_s = (teacher / 2).softmax(1), (student / 2).log_softmax(1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean() * 4
    assert close(loss, kl)
    task.teacher = Fixed(teacher[:, :, 0])  # (B, C): the usual batchmean KL
    flat = task.compute(Fixed(student[:, :, 0]), (torch.arange(4), target[:, 0]))[0]
    want = F.kl_div((student[:, :, 0] / 2).log_softmax(1), (teacher[:, :, 0] / 2).softmax(1),
                    reduction="batchmean") * 4  # fmt: skip
    assert close(flat, want)


def test_a_step_on_dict_batches_feeds_the_task_metrics():
    x, y = make_classification(240, seed=14)

    class Dicts(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    def step(model, batch):
        logits = model(batch["x"])
        return F.cross_entropy(logits, batch["labels"]), logits

    model = mlp(seed=0)
    r = train(model, Dicts(x[:200], y[:200]), Dicts(x[200:], y[200:]), step=step,
              task="multiclass", epochs=3)  # fmt: skip
    with torch.no_grad():
        direct = (model(x[200:]).argmax(1) == y[200:]).float().mean()
    assert close(r.history[-1]["val_accuracy"], direct)


def test_a_steps_own_metrics_are_kept_for_batches_without_a_target_key():
    x, y = make_classification(96, seed=14)
    batches = [{"x": x[i : i + 16], "label": y[i : i + 16]} for i in range(0, 96, 16)]

    def step(model, batch):
        logits = model(batch["x"])
        return F.cross_entropy(logits, batch["label"]), logits

    entropy = lambda out, _: -(out.softmax(1) * out.log_softmax(1)).sum(1).mean()  # noqa: E731
    out = sf.evaluate(mlp(), batches, step=step, metrics={"entropy": entropy}, prefix="val",
                      device="cpu")  # fmt: skip
    assert set(out) == {"val_loss", "val_entropy"} and 0 < out["val_entropy"] < math.log(3)
