"""The GCL trainer: (LHS fields, RHS fields, weight) rows -> a dual encoder that ranks.

Read :func:`train` top to bottom: rows and weights, towers, optimiser and schedule, resume, then the
loop (embed -> GCL loss -> backward -> clip -> step), with logging, periodic evaluation through
:mod:`gclcore.evaluate` and atomic checkpoints.

Two tower regimes share the loop, the loss, the sampler and the checkpoints:

- ``freeze="trunks"`` (the CPU default): pretrained trunks frozen, their features cached once
  (:mod:`gclcore.features`), projection heads + logit scale trained (LiT-style);
- ``freeze="none"``: full fine-tuning; images decoded, augmented and texts tokenised in DataLoader
  workers (augmentation seeded per (seed, epoch, row), so runs and resumes are reproducible).

Gradient accumulation keeps in-batch negatives over the whole accumulated batch (open_clip's
``--accum-freq``: embeddings of the other micro-batches are cached without gradients and each
micro-batch's loss is taken over the full batch). Checkpoints: ``model.pt`` / ``checkpoints/epoch_N.pt``
in open_clip's format (``{"epoch", "state_dict"}``, loadable by :func:`gclcore.models.load_encoder` and
open_clip) plus ``checkpoints/state-latest.pt`` with the optimiser, step, data position, RNG states and
log history; ``resume="latest"`` continues exactly where the last save left off.

Command line (several devices: the same config under torchrun, see :mod:`gclcore.distributed`)::

    python -m gclcore.train --config FILE.yaml [--set key=value ...]
    torchrun --nproc-per-node 8 -m gclcore.train --config FILE.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gclcore import distributed
from gclcore.config import TrainConfig, parse_overrides
from gclcore.data import ImageResolver, atomic_write, read_split_csv, split_files
from gclcore.evaluate import Field, evaluate_split, parse_fields
from gclcore.loaders import default_workers, load_with_status, record_problems
from gclcore.loss import GCLLoss, multi_field_loss
from gclcore.weights import get_stw


@dataclass
class TrainResult:
    output_dir: Path
    history: pd.DataFrame
    evaluations: pd.DataFrame
    checkpoint: Path
    steps: int
    samples_per_s: float = 0.0
    test: pd.DataFrame | None = None
    """One summary row per split from ``test_splits`` (also in ``output_dir/test/results.csv``)."""


# --------------------------------------------------------------------------------------------------
# Rows, batches and towers
# --------------------------------------------------------------------------------------------------

def training_rows(cfg: TrainConfig, fields: list[Field]) -> pd.DataFrame:
    """Training rows of the split: the fields, ``weight`` (STW), and integer ``qid`` / ``did`` codes."""
    rows = read_split_csv(split_files(cfg.data_dir, cfg.train_split).csv)
    if cfg.max_position:
        rows = rows[rows["position"] <= cfg.max_position].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no training rows in {cfg.train_split} (max_position={cfg.max_position})")
    for f in fields:
        if f.name not in rows.columns:
            raise ValueError(f"field {f.name!r} is not a column of {cfg.train_split}.csv")
    rows["weight"] = get_stw(cfg.stw)(rows)
    rows["qid"] = pd.factorize(rows["query"].astype(str))[0]
    rows["did"] = pd.factorize(rows["product_id"].astype(str))[0]
    return rows


def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches: a permutation drawn from (seed, epoch), cut into full batches (the last
    partial batch is dropped so every step sees ``batch_size`` in-batch negatives)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return [order[i:i + batch_size] for i in range(0, n_rows - batch_size + 1, batch_size)]


class HeadTowers:
    """Locked trunks, trained heads: a batch is a tensor of row indices into the cached features."""

    def __init__(self, encoder, rows: pd.DataFrame, lhs: tuple[Field, ...], rhs: tuple[Field, ...],
                 resolver: ImageResolver | None, cfg: TrainConfig):
        from gclcore.features import FeatureCache, HeadEncoder, check_splittable, dataset_inputs, trunk_parameters

        check_splittable(encoder.model)
        for p in trunk_parameters(encoder.model):
            p.requires_grad_(False)
        # one cache over every text and image column of the dataset (plus the run's own fields), so that
        # runs with different fields share it instead of recomputing trunk features
        text_fields = sorted({"query", "title"} | {f.name for f in lhs + rhs if not f.is_image})
        image_fields = sorted({"image_local"} | {f.name for f in lhs + rhs if f.is_image})
        texts, images = dataset_inputs(cfg.data_dir, text_fields, image_fields)
        cache_dir = cfg.feature_cache_dir or str(Path(cfg.data_dir) / ".feature-cache")
        cache = FeatureCache.build(encoder, texts, images, resolver, cache_dir, progress=cfg.progress,
                                   workers=None if cfg.workers < 0 else cfg.workers)
        self.eval_encoder = HeadEncoder(encoder.model, cache, encoder.device)
        self.fields = lhs + rhs
        self.row_index = {}
        for f in self.fields:
            values = rows[f.name]
            if f.is_image:  # a missing image gets row 0 and presence False: it never contributes
                filled = values.fillna(values.dropna().iloc[0] if values.notna().any() else "")
                self.row_index[f.name] = cache.image_rows(filled.astype(str).tolist())
            else:
                self.row_index[f.name] = cache.text_rows(values.astype(object).map(str).tolist())
        self.model = encoder.model

    def trainable(self) -> list[torch.nn.Parameter]:
        from gclcore.features import head_modules

        return [p for m in head_modules(self.model) for p in m.parameters()]

    def loader(self, batches: list[np.ndarray]):
        return (torch.as_tensor(b) for b in batches)

    def indices(self, batch) -> np.ndarray:
        return batch.numpy()

    def embed(self, batch) -> dict[str, torch.Tensor]:
        enc = self.eval_encoder
        return {f.name: (enc.embed_image_rows if f.is_image else enc.embed_text_rows)(self.row_index[f.name][batch])
                for f in self.fields}


class PairRows(torch.utils.data.Dataset):
    """Full fine-tuning items: tokens per text field, augmented pixels per image field, the row index
    and an image status (see :mod:`gclcore.loaders`). Augmentation is seeded per (seed, epoch, row)."""

    def __init__(self, rows, fields, tokenizer, transform, resolver, seed):
        self.rows = {f.name: rows[f.name].astype(object).tolist() for f in fields}
        self.fields, self.tokenizer, self.transform, self.resolver, self.seed = fields, tokenizer, transform, resolver, seed
        self.epoch = 0

    def __len__(self):
        return len(next(iter(self.rows.values())))

    def __getitem__(self, i):
        item = {"index": i}
        for f in self.fields:
            value = self.rows[f.name][i]
            if not f.is_image:
                item[f.name] = self.tokenizer([str(value)])[0]
                continue
            image, item[f"{f.name}/status"] = load_with_status(self.resolver, value)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
                item[f.name] = self.transform(image)
        return item


class FullTowers:
    """Full fine-tuning: a batch is a dict of tokens / pixels from the DataLoader."""

    def __init__(self, encoder, rows, lhs, rhs, resolver, cfg: TrainConfig):
        self.encoder, self.model, self.fields = encoder, encoder.model, lhs + rhs
        self.eval_encoder = encoder
        self.dataset = PairRows(rows, self.fields, encoder.tokenizer, encoder.preprocess_train, resolver, cfg.seed)
        self.workers = default_workers() if cfg.workers < 0 else cfg.workers
        self.resolver = resolver

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for name, p in self.model.named_parameters() if name != "logit_scale"]

    def loader(self, batches: list[np.ndarray]):
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches],
                                             num_workers=self.workers, pin_memory=torch.cuda.is_available())
        for batch in loader:
            for f in self.fields:
                if f.is_image:
                    stored = [self.dataset.rows[f.name][i] for i in batch["index"].tolist()]
                    record_problems(self.resolver, stored, batch[f"{f.name}/status"])
            yield batch

    def indices(self, batch) -> np.ndarray:
        return batch["index"].numpy()

    def embed(self, batch) -> dict[str, torch.Tensor]:
        """All text fields (e.g. query and title) in one text-tower call, which is faster than one call
        each; image fields one call each, because BatchNorm's batch statistics must stay per field."""
        device = self.encoder.device
        texts = [f.name for f in self.fields if not f.is_image]
        embedded = {}
        if texts:
            tokens = torch.cat([batch[name] for name in texts]).to(device, non_blocking=True)
            embedded = dict(zip(texts, self.model.encode_text(tokens, normalize=True).chunk(len(texts))))
        for f in self.fields:
            if f.is_image:
                embedded[f.name] = self.model.encode_image(batch[f.name].to(device, non_blocking=True), normalize=True)
        return embedded


def _locked(freeze: str, model) -> bool:
    """``"auto"``: locked trunks when the towers can be split (the default model), else full fine-tuning."""
    from gclcore.features import check_splittable

    if freeze not in ("auto", "trunks", "none"):
        raise ValueError(f"freeze must be auto, trunks or none, not {freeze!r}")
    if freeze != "auto":
        return freeze == "trunks"
    try:
        check_splittable(model)
        return True
    except ValueError:
        return False


def _split(batch, parts: int):
    if isinstance(batch, dict):
        pieces = {k: torch.chunk(v, parts) if torch.is_tensor(v) else v for k, v in batch.items()}
        return [{k: v[j] for k, v in pieces.items()} for j in range(parts)]
    return list(torch.chunk(batch, parts))


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def _save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, binary=True) as fh:
        torch.save(payload, fh)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_path(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    path = Path(cfg.output_dir) / "checkpoints" / "state-latest.pt" if cfg.resume == "latest" else Path(cfg.resume)
    if cfg.resume == "latest" and not path.exists():
        return None  # nothing to resume yet: start fresh
    if not path.exists():
        raise FileNotFoundError(f"resume state {path} not found")
    return path


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

def train(config: TrainConfig | dict | None = None, on_step=None, sampler=None, **overrides) -> TrainResult:
    """Train (and evaluate) one configuration; see :class:`TrainConfig` for every option.

    ``sampler(n_rows, batch_rows, seed, epoch) -> list of row-index arrays`` replaces
    :func:`epoch_batches` (e.g. at most one row per query per batch); it must be deterministic in
    (seed, epoch) for resume to stay exact. Under torchrun it draws global batches and each rank trains
    on its slice (:func:`gclcore.distributed.shard`).

    ``on_step(step)`` is called after every optimiser step (live plots, or stopping a run: an exception
    raised there ends it like a kill, and ``resume="latest"`` continues from the last saved state).
    """
    from tqdm.auto import tqdm

    from gclcore.models import load_encoder

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config or {}))
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    sampler = sampler or epoch_batches
    ctx = distributed.from_environment()  # torchrun's ranks, or a single process
    rank_device = distributed.start(ctx, cfg.dist_backend, cfg.dist_timeout_min)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        with atomic_write(out / "config.json") as fh:
            json.dump(dataclasses.asdict(cfg), fh, indent=1)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 1. model, rows, weights
    device = rank_device or torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = load_encoder(cfg.model, cfg.pretrained, device=device)
    model = encoder.model
    if ctx.enabled:
        distributed.broadcast_parameters(model)
        torch.manual_seed(cfg.seed + ctx.rank)  # own dropout masks per rank
    lhs, rhs = parse_fields(cfg.lhs_fields), parse_fields(cfg.rhs_fields)
    image_root = cfg.image_root or (str(Path(cfg.data_dir) / "images") if (Path(cfg.data_dir) / "images").is_dir() else "")
    resolver = ImageResolver(image_root, missing="placeholder") if image_root else None
    rows = training_rows(cfg, list(lhs + rhs))
    if not ctx.is_main:
        distributed.barrier(ctx)  # rank 0 builds the shared feature cache first; the others then read it
    towers = (HeadTowers if _locked(cfg.freeze, model) else FullTowers)(encoder, rows, lhs, rhs, resolver, cfg)
    if ctx.is_main:
        distributed.barrier(ctx)
    weights = torch.tensor(rows["weight"].to_numpy(), dtype=torch.float32)
    qids = torch.tensor(rows["qid"].to_numpy())
    dids = torch.tensor(rows["did"].to_numpy())
    present = {f.name: torch.tensor(rows[f.name].notna().to_numpy()) for f in lhs + rhs}
    loss_fn = GCLLoss(cfg.weight_norm, cfg.direction, cfg.duplicates,
                      gather=distributed.all_gather_with_grad if ctx.enabled else None)

    # 2. optimiser (no weight decay on gains, biases and the logit scale) and warmup + cosine schedule
    trainable = towers.trainable()
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    model.logit_scale.requires_grad_(cfg.learn_logit_scale)
    if cfg.learn_logit_scale:
        no_decay.append(model.logit_scale)
    optimised = decay + no_decay
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    batch_rows = cfg.batch_size * cfg.accum_freq * ctx.world  # the global batch
    steps_per_epoch = len(sampler(len(rows), batch_rows, cfg.seed, 0))
    if steps_per_epoch == 0 and cfg.epochs > 0:
        raise ValueError(f"{len(rows)} training rows cannot fill one batch of {batch_rows}")
    total_steps = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))

    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    # 3. resume
    step, epoch, batch_in_epoch, history = 0, 0, 0, []
    resume = _resume_path(cfg)
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch, history = state["step"], state["epoch"], state["batch_in_epoch"], state["history"]
        rank_rngs = state.get("rank_rng", [])
        _set_rng_state(rank_rngs[ctx.rank] if ctx.enabled and len(rank_rngs) == ctx.world else state["rng"])

    def save_state():
        rngs = distributed.gather_objects(_rng_state(), ctx)
        if ctx.is_main:
            _save(out / "checkpoints" / "state-latest.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "history": history, "rng": rngs[0],
                "rank_rng": rngs if ctx.enabled else [], "config": dataclasses.asdict(cfg)})

    def objective(embedded: dict[str, torch.Tensor], index: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(index)
        return multi_field_loss(loss_fn, {f.name: embedded[f.name] for f in lhs}, {f.name: embedded[f.name] for f in rhs},
                                model.logit_scale.exp(), weights[idx].to(device),
                                lhs_weights={f.name: f.weight for f in lhs}, rhs_weights={f.name: f.weight for f in rhs},
                                lhs_present={f.name: present[f.name][idx].to(device) for f in lhs},
                                rhs_present={f.name: present[f.name][idx].to(device) for f in rhs},
                                mode=cfg.field_mode, query_ids=qids[idx].to(device), doc_ids=dids[idx].to(device))

    evaluated_steps = {h["step"] for h in history if "eval/NDCG@10" in h}  # the same on every rank

    def evaluate_now() -> None:
        if not cfg.eval_split:
            return
        evaluated_steps.add(step)
        if ctx.is_main:
            model.eval()
            result = evaluate_split(towers.eval_encoder, cfg.data_dir, cfg.eval_split, out / "eval" / f"step-{step:06d}",
                                    image_root=image_root or None, lhs_fields=lhs, rhs_fields=rhs, top_q=cfg.eval_top_q,
                                    top_k=cfg.eval_top_k, query_set=cfg.eval_query_set, cache_dir=False, progress=False)
            row = {"step": step, "epoch": epoch, **{f"eval/{k}": v for k, v in result.metrics.items()}}
            history.append(row)
            _log(out, row, writer)
        distributed.barrier(ctx)

    writer = None
    if cfg.tensorboard and ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    if ctx.is_main:
        _rewrite_log(out, history)
    if step == 0 and 0 not in evaluated_steps:
        evaluate_now()  # the untrained (zero-shot) model: the like-for-like baseline row

    # 4. the loop
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not (cfg.progress and ctx.is_main))
    tick, tick_samples = time.perf_counter(), 0
    while step < total_steps:
        batches = distributed.shard(sampler(len(rows), batch_rows, cfg.seed, epoch), ctx)
        if isinstance(towers, FullTowers):
            towers.dataset.epoch = epoch
        for batch in towers.loader(batches[batch_in_epoch:]):
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            index = towers.indices(batch)
            parts = _split(batch, cfg.accum_freq)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                if len(parts) == 1:
                    loss = objective(towers.embed(batch), index)
                    scaler.scale(loss).backward()
                else:  # GradCache-style: full-batch negatives, one micro-batch's graph at a time
                    with torch.no_grad():
                        cached = [towers.embed(p) for p in parts]
                    for j, part in enumerate(parts):
                        live = towers.embed(part)
                        joined = {name: torch.cat([live[name] if k == j else cached[k][name] for k in range(len(parts))])
                                  for name in live}
                        loss = objective(joined, index)
                        scaler.scale(loss).backward()
            if ctx.enabled:
                distributed.average_gradients(optimised, ctx.world)
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(optimised, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            batch_in_epoch += 1
            tick_samples += len(index) * ctx.world
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - tick
                speed = tick_samples / max(elapsed, 1e-9)
                global_loss = distributed.mean_over_ranks(loss.item(), ctx, device)
                row = {"step": step, "epoch": epoch, "loss": global_loss, "lr": lr_at(step - 1),
                       "logit_scale": model.logit_scale.exp().item(), "samples_per_s": speed}
                history.append(row)
                if ctx.is_main:
                    _log(out, row, writer)
                bar.set_postfix(loss=f"{global_loss:.4f}", samples_s=f"{speed:.0f}")
                tick, tick_samples = time.perf_counter(), 0
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                evaluate_now()
            if cfg.save_every > 0 and step % cfg.save_every == 0:
                save_state()
            if on_step is not None:
                on_step(step)
            if step >= total_steps:
                break
        if batch_in_epoch == len(batches):  # the epoch is complete
            epoch, batch_in_epoch = epoch + 1, 0
            if cfg.epoch_checkpoints and ctx.is_main:
                _save(out / "checkpoints" / f"epoch_{epoch}.pt", {"epoch": epoch, "step": step, "name": cfg.model,
                                                                   "state_dict": model.state_dict()})
            if cfg.save_every == 0:
                save_state()
    bar.close()
    save_state()
    checkpoint = out / "model.pt"
    if ctx.is_main:
        _save(checkpoint, {"epoch": epoch, "step": step, "name": cfg.model, "state_dict": model.state_dict()})
    if step not in evaluated_steps:
        evaluate_now()
    test = None
    if cfg.test_splits and ctx.is_main:
        from gclcore.evaluate import evaluate

        model.eval()
        test = evaluate(towers.eval_encoder, cfg.data_dir, out / "test", cfg.test_splits, image_root=image_root or None,
                        lhs_fields=lhs, rhs_fields=rhs, top_q=cfg.eval_top_q, top_k=cfg.eval_top_k, cache_dir=False,
                        progress=False)
    if writer is not None:
        writer.close()
    distributed.stop(ctx)
    frame = pd.DataFrame(history)
    train_rows = frame[frame["loss"].notna()] if "loss" in frame else frame.iloc[0:0]
    eval_rows = frame[frame["eval/NDCG@10"].notna()] if "eval/NDCG@10" in frame else frame.iloc[0:0]
    speeds = train_rows["samples_per_s"].to_numpy() if len(train_rows) else np.array([0.0])
    return TrainResult(out, train_rows.dropna(axis=1, how="all"), eval_rows.dropna(axis=1, how="all"),
                       checkpoint, step, float(np.median(speeds)), test)


def _log(out: Path, row: dict, writer) -> None:
    with open(out / "log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    if writer is not None:
        for key, value in row.items():
            if key not in ("step", "epoch"):
                writer.add_scalar(key, value, row["step"])


def _rewrite_log(out: Path, history: list[dict]) -> None:
    """On resume, the log restarts from the saved history (rows written after the last save are gone)."""
    with atomic_write(out / "log.jsonl") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        cfg = TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides)
        result = train(cfg)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if distributed.from_environment().is_main:
        print(result.evaluations.to_string(index=False))
        print(f"model: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
