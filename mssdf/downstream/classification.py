"""Scene classification protocols on frozen features, and mixup/cutmix for fine-tuning.

Three protocols (``FinetuneConfig.mode``), all on the same :class:`~mssdf.downstream.heads.ClassificationModel`
embedding (cls token or mean-pooled patch tokens after the final norm, fused over modalities):

* ``knn`` (:func:`knn_scores`): DINO's weighted k-nearest-neighbour vote — features
  L2-normalised, cosine similarity to every training image, the ``k`` most similar vote
  with weight ``exp(similarity / T)``. No training, no selection.
* ``linear`` (:func:`train_linear_probe`): MAE's linear probe — features computed once by
  the frozen encoder (eval mode, no augmentation) and cached, then BatchNorm without affine
  parameters and a linear layer trained on them (SGD with momentum, cosine decay, seeded
  batches); validation every ``eval_every`` steps selects the head (``select_best``).
* ``finetune``: the engine (:func:`mssdf.downstream.engine.finetune`) with layer decay,
  label smoothing and, as options, mixup / cutmix (:func:`mix_batch`, timm's ``Mixup``).

:func:`probe_run` runs ``knn`` / ``linear`` end to end and writes the same files as a
fine-tuning run (``metrics.json``, ``predictions.json``, ``best/`` weights for ``linear``),
so a study treats the three protocols alike. The encoder's weights are never updated by
either probe (tested): the features come from ``torch.no_grad`` in eval mode and only the
head's parameters reach the optimizer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mssdf.downstream.config import FinetuneConfig


# ----------------------------------------------------------------------------- features
@torch.no_grad()
def extract_features(model: nn.Module, dataset: Any, batch_size: int = 64, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Embeddings and labels of every item of ``dataset`` (no augmentation), in order.

    Args:
        model: a :class:`~mssdf.downstream.heads.ClassificationModel` (its ``embed``).
        dataset: a :class:`~mssdf.downstream.data.TaskDataset` (its non-augmenting view is read).
    Returns:
        ``(features (N, D) float32 CPU, labels (N,) int64)``.
    """
    from mssdf.downstream.data import collate

    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    plain = dataset.plain() if hasattr(dataset, "plain") else dataset
    feats, labels = [], []
    for start in range(0, len(plain), batch_size):
        batch = collate([plain[i] for i in range(start, min(start + batch_size, len(plain)))])
        feats.append(model.embed({m: x.to(device) for m, x in batch["images"].items()}).float().cpu())
        labels.append(batch["target"].long())
    model.train(was_training)
    dim = getattr(getattr(model, "backbone", None), "embed_dim", 0)
    return (torch.cat(feats) if feats else torch.zeros(0, dim)), (torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))


# ----------------------------------------------------------------------------- kNN
def knn_scores(train_feats: Tensor, train_labels: Tensor, query: Tensor, num_classes: int, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """DINO's weighted kNN vote.

    Args:
        train_feats: ``(N, D)``; train_labels: ``(N,)`` in ``[0, K)``; query: ``(Q, D)``.
        k: neighbours (clipped to N); temperature: vote weight ``exp(cos / T)``.
    Returns:
        ``(Q, K)`` vote scores (argmax = the predicted class).
    """
    if train_feats.shape[0] == 0:
        raise ValueError("knn_scores: no training features")
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query.shape[0], chunk):
        q = F.normalize(query[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        votes = F.one_hot(train_labels[idx], num_classes).float()  # (q, k, K)
        out.append((votes * (sim / temperature).exp()[..., None]).sum(dim=1))
    return torch.cat(out) if out else torch.zeros(0, num_classes)


# ----------------------------------------------------------------------------- linear probe
def train_linear_probe(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], cfg: FinetuneConfig, num_classes: int,
                       evaluate: Callable[[nn.Module, Tensor, Tensor], dict[str, Any]],
                       log: Callable[[str], Any] | None = None) -> tuple[nn.Module, dict[str, Any], list[dict[str, float]]]:
    """MAE's linear probe on cached features: BatchNorm1d(affine=False) + linear, SGD with
    momentum 0.9 (lr ``cfg.optim.lr``, weight decay ``cfg.optim.weight_decay``), linear
    warm-up then cosine decay over ``cfg.steps`` batches of ``cfg.batch_size`` drawn by a
    seeded permutation per epoch; validation every ``cfg.eval_every`` steps (and at the
    end) selects the head (the last one when ``cfg.select_best`` is False).

    Returns:
        ``(head in eval mode with the selected weights, {"step", "score", "val"}, history)``.
    """
    from mssdf.downstream.heads import LinearHead
    from mssdf.engine.optim import schedule_factor

    x, y = train
    torch.manual_seed(cfg.seed)
    head = LinearHead(x.shape[1], num_classes, probe=True)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.optim.lr, momentum=0.9, weight_decay=cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    metric, higher = cfg.selection
    best: dict[str, Any] = {}
    best_state: dict[str, Tensor] | None = None
    history: list[dict[str, float]] = []
    order, pos = torch.randperm(len(x), generator=gen), 0
    batch = min(cfg.batch_size, len(x))
    for step in range(cfg.steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        factor = schedule_factor(step, warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.steps, schedule="cosine",
                                 min_ratio=cfg.optim.min_lr / cfg.optim.lr)
        for g in opt.param_groups:
            g["lr"] = cfg.optim.lr * factor
        head.train()
        loss = F.cross_entropy(head(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record: dict[str, float] = {"step": step + 1, "loss": float(loss.detach()), "lr": cfg.optim.lr * factor}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            head.eval()
            scores = evaluate(head, *val)
            score = float(scores[metric])
            record[f"val_{metric}"] = score
            better = not best or not cfg.select_best or (math.isfinite(score) and (
                not math.isfinite(best["score"]) or (score > best["score"] if higher else score < best["score"])))
            if better:
                best = {"step": step + 1, "score": score, "val": scores}
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
        history.append(record)
    assert best_state is not None
    head.load_state_dict(best_state)
    if log is not None:
        log(f"linear probe: best {metric} on val {best['score']:.4f} at step {best['step']}")
    return head.eval(), best, history


# ----------------------------------------------------------------------------- mixup / cutmix
def build_mixer(cfg: FinetuneConfig, num_classes: int) -> Any | None:
    """timm's ``Mixup`` for ``cfg.mixup`` / ``cfg.cutmix`` alphas (None when both are 0): per
    batch one of the two (switch probability 0.5 when both), soft targets with
    ``cfg.label_smoothing``."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes)


def mix_batch(mixer: Any, images: Mapping[str, Tensor], target: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Mix every modality of a batch with the same pairs, weight and box.

    ``images``: ``{m: (B, C_m, H, W)}`` (same H, W; B even); ``target`` ``(B,)`` class ids.
    Returns ``({m: mixed}, (B, K) soft targets)``. The modalities are concatenated along the
    channels for timm's ``Mixup`` (which draws from NumPy's global generator: checkpoints
    store it, so a resumed run mixes as the uninterrupted one) and split again.
    """
    keys = list(images)
    sizes = [images[m].shape[1] for m in keys]
    stacked = torch.cat([images[m] for m in keys], dim=1)
    if stacked.shape[0] % 2:
        raise ValueError(f"mixup/cutmix need an even batch per process, got {stacked.shape[0]} (set batch_size)")
    mixed, soft = mixer(stacked, target)
    return dict(zip(keys, torch.split(mixed, sizes, dim=1))), soft


def soft_cross_entropy(logits: Tensor, soft_target: Tensor) -> Tensor:
    """``mean_b(−Σ_k q_bk log softmax(z)_bk)`` for ``(B, K)`` logits and soft targets."""
    return torch.sum(-soft_target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# ----------------------------------------------------------------------------- the probe runs
def probe_run(cfg: FinetuneConfig, root: str | Path | None = None, log: Callable[[str], Any] | None = None) -> Any:
    """Run ``cfg`` (``mode`` ``knn`` or ``linear``, task classification) and write its files.

    Returns:
        a :class:`~mssdf.downstream.engine.FinetuneResult` (``model``: the classification
        model with the frozen encoder and, for ``linear``, the selected probe head).
    """
    from mssdf.atomic import atomic_write_text
    from mssdf.downstream.backbone import build_backbone, describe_init
    from mssdf.downstream.data import build_task_data, check_targets
    from mssdf.downstream.engine import FinetuneResult, _plain, _save_best
    from mssdf.downstream.heads import ClassificationModel
    from mssdf.downstream.metrics import ClassificationMetrics
    from mssdf.paths import resolve

    if cfg.task != "classification" or cfg.mode not in ("knn", "linear"):
        raise ValueError(f"probe_run: classification with mode knn or linear, got {cfg.task} / {cfg.mode}")
    out_dir = resolve(cfg.out_dir, root)
    torch.manual_seed(cfg.seed)  # random init: a function of the seed only
    backbone = build_backbone(cfg.backbone, root, neck=False)
    data = build_task_data(cfg, {m: backbone.wants_normalized(m) for m in cfg.backbone.modalities}, root)
    num_classes = len(data.classes)
    check_targets(data, cfg.task, num_classes, limit=None if cfg.data.kind == "sample" else 4)
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    model = ClassificationModel(backbone, num_classes, pool=cfg.pool, probe=True).to(device)
    model.requires_grad_(False)
    feats = {role: extract_features(model, getattr(data, role), cfg.eval_batch_size, device) for role in ("train", "val", "test")}

    def scores_of(logits: Tensor, labels: Tensor) -> dict[str, Any]:
        metric = ClassificationMetrics(num_classes, class_names=data.classes)
        metric.update(logits, labels)
        return metric.compute()

    history: list[dict[str, float]] = []
    if cfg.mode == "knn":
        def predict(x: Tensor) -> Tensor:
            return knn_scores(*feats["train"], x, num_classes, cfg.knn_k, cfg.knn_temperature)
        val = scores_of(predict(feats["val"][0]), feats["val"][1])
        best = {"step": 0, "score": float(val[cfg.selection[0]]), "val": val}
    else:
        head, best, history = train_linear_probe(feats["train"], feats["val"], cfg, num_classes,
                                                 lambda h, x, y: scores_of(h(x), y), log)
        model.head = head.to(device)

        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                return head(x)
    test_logits = predict(feats["test"][0])
    test = scores_of(test_logits, feats["test"][1])
    init = describe_init(cfg.backbone, root)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "linear":
        _save_best(model, out_dir / "best", {"step": best["step"], "score": best["score"], "val": _plain(best["val"])})
    summary = {"task": cfg.task, "init": cfg.backbone.init, "init_source": init, "mode": cfg.mode, "seed": cfg.seed,
               "modalities": list(cfg.backbone.modalities), "data": data.description, "label_kind": data.label_kind,
               "classes": list(data.classes), "selection": cfg.selection[0], "best_step": best["step"], "steps": best["step"],
               "val": _plain(best["val"]), "test": _plain(test)}
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out_dir / "predictions.json",
                      json.dumps({"test": test_logits.argmax(1).tolist(), "truth": feats["test"][1].tolist()}) + "\n")
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1) + "\n")
    if log is not None:
        log(f"classification ({cfg.mode}): val {cfg.selection[0]} {best['score']:.4f}; test {float(test[cfg.selection[0]]):.4f}")
    return FinetuneResult(_plain(best["val"]), _plain(test), int(best["step"]), history, out_dir, model.eval(),
                          {"init": init, "description": data.description, "label_kind": data.label_kind,
                           "classes": list(data.classes), "num_classes": num_classes, "world_size": 1, "steps": best["step"]})


__all__ = ["extract_features", "knn_scores", "train_linear_probe", "build_mixer", "mix_batch", "soft_cross_entropy", "probe_run"]
