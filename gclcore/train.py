"""The GCL trainer: (query fields, document fields, weight) rows -> a dual encoder that ranks.

Read :func:`train` top to bottom: the model and the rows, the towers, the objective, optimiser and
schedule, resume, then the loop: :func:`train_step` (embed -> GCL loss -> backward -> clip -> step),
logging, periodic evaluation on the dev ground truth (over a fixed dev sub-corpus: :class:`DevEvaluation`)
and atomic checkpoints. The regime's learning-rate defaults are resolved once the model is loaded
(:meth:`~gclcore.config.TrainConfig.resolved`), printed and recorded in ``config.json``. The parts live
in their own modules: :mod:`gclcore.config` (every option), :mod:`gclcore.towers` (head-only or full fine-tuning),
:mod:`gclcore.optim` (AdamW, warm-up + cosine, precision), :mod:`gclcore.checkpoint` (state, save,
resume), :mod:`gclcore.runlog` (``log.jsonl``, TensorBoard) and :mod:`gclcore.distributed` (torchrun).

Gradient accumulation keeps in-batch negatives over the whole accumulated batch (open_clip's
``--accum-freq``), by GradCache's step (:func:`train_step`). ``resume="latest"`` continues exactly where
the last saved state left off.

Command line (several devices: the same config under torchrun, see :mod:`gclcore.distributed`)::

    python -m gclcore.train --config FILE.yaml [--set key=value ...]
    torchrun --nproc-per-node 8 -m gclcore.train --config FILE.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gclcore import checkpoint, distributed
from gclcore.batching import QueryGroupedBatches, epoch_batches
from gclcore.checkpoint import TrainState
from gclcore.config import TrainConfig, parse_overrides
from gclcore.data import Dataset, atomic_write, open_dataset
from gclcore.evaluate import dev_subcorpus, evaluate, evaluate_split
from gclcore.fusion import Field, Side, parse_fields
from gclcore.interrupt import EXIT_INTERRUPTED, GracefulStop, TrainingInterrupted
from gclcore.loaders import to_device
from gclcore.loss import GCLLoss, multi_field_loss
from gclcore.optim import Precision, autotuned_convolutions, build_optimizer, cosine_schedule, set_lr
from gclcore.ranking_loss import ranking_loss
from gclcore.runlog import RunLog, Throughput, split_history
from gclcore.towers import Towers, build_towers, field_prefixes, resolve_freeze
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
    config: TrainConfig | None = None
    """The config as the run used it (resolved regime and learning rate; also ``output_dir/config.json``)."""


def training_rows(cfg: TrainConfig, fields: tuple[Field, ...], dataset: Dataset | None = None) -> pd.DataFrame:
    """Training rows of the split: the fields, ``weight`` (STW), and integer ``qid`` / ``did`` codes."""
    rows = open_dataset(dataset or cfg.data_dir, cfg.image_root or None).rows(cfg.train_split).copy()
    if cfg.max_position:
        rows = rows[rows["position"] <= cfg.max_position].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no training rows in {cfg.train_split} (max_position={cfg.max_position})")
    for f in fields:
        if f.name not in rows.columns:
            raise ValueError(f"field {f.name!r} is not a column of {cfg.train_split}.csv")
    if cfg.missing_images == "skip":
        rows = _without_missing_images(rows, fields, open_dataset(dataset or cfg.data_dir, cfg.image_root or None))
    rows["weight"] = get_stw(cfg.stw)(rows)
    rows["qid"] = pd.factorize(rows["query"].astype(str))[0]
    rows["did"] = pd.factorize(rows["product_id"].astype(str))[0]
    return rows


def _without_missing_images(rows: pd.DataFrame, fields: tuple[Field, ...], dataset: Dataset) -> pd.DataFrame:
    """``missing_images="skip"``: the rows whose image files all exist (one ``stat`` per image), saying how many
    were dropped. A row without a stored image path keeps it (the field is absent, not broken)."""
    resolver = dataset.image_resolver()
    keep = np.ones(len(rows), dtype=bool)
    for f in (f for f in fields if f.is_image and resolver is not None):
        stored = rows[f.name].astype(object)
        absent = np.array([stamp[0] < 0 for stamp in resolver.fingerprints(stored.fillna("").map(str).tolist())])
        keep &= ~(absent & stored.notna().to_numpy())
    if not keep.all():
        print(f"missing_images=skip: {int((~keep).sum()):,} of {len(rows):,} training rows dropped, their image "
              f"file absent under {resolver.root}", flush=True)
    if not keep.any():
        raise ValueError(f"missing_images=skip left no training rows: no image file of the split is under "
                         f"{resolver.root}; check image_root")
    return rows[keep].reset_index(drop=True)


class PairObjective:
    """The GCL loss of a batch given by training-row indices: looks up the rows' STW weights, query and
    product ids and field presence, and builds the two :class:`~gclcore.fusion.Side` objects."""

    def __init__(self, rows: pd.DataFrame, lhs: tuple[Field, ...], rhs: tuple[Field, ...], cfg: TrainConfig,
                 model: torch.nn.Module, device: torch.device, gather=None):
        self.lhs, self.rhs, self.model, self.device, self.mode = lhs, rhs, model, device, cfg.field_mode
        # the rows' lookups live on the device, where a batch's are gathered: copies from host memory in the
        # middle of a step would each wait for the forward pass queued before them
        self.weights = torch.tensor(rows["weight"].to_numpy(), dtype=torch.float32, device=device)
        self.qids = torch.tensor(rows["qid"].to_numpy(), device=device)
        self.dids = torch.tensor(rows["did"].to_numpy(), device=device)
        self.present = {f.name: torch.tensor(rows[f.name].notna().to_numpy(), device=device) for f in lhs + rhs}
        self.loss = GCLLoss(cfg.weight_norm, cfg.direction, cfg.duplicates, gather=gather,
                            tile=None if cfg.loss_tile < 0 else cfg.loss_tile)
        self.ranking, self.ranking_weight, self.gather = cfg.ranking_loss, cfg.ranking_weight, gather

    def __call__(self, embedded: dict[str, torch.Tensor], index: np.ndarray) -> torch.Tensor:
        """The loss over the rows ``index`` with their per-field ``embedded`` (N, d) tensors."""
        idx = to_device(torch.as_tensor(index), self.device)
        scale = self.model.logit_scale.exp()

        def side(fields):
            return Side(fields, {f.name: embedded[f.name] for f in fields},
                        {f.name: self.present[f.name][idx] for f in fields})

        query, doc, weights, qids = side(self.lhs), side(self.rhs), self.weights[idx], self.qids[idx]
        loss = multi_field_loss(self.loss, query, doc, scale, weights, mode=self.mode, query_ids=qids,
                                doc_ids=self.dids[idx])
        if self.ranking == "none":
            return loss
        return loss + self.ranking_weight * ranking_loss(self.ranking, query.fused(), doc.fused(), scale, weights, qids,
                                                         self.gather)


def train_step(towers: Towers, objective: PairObjective, parts: list, optimizer: torch.optim.Optimizer,
               precision: Precision, params: list[torch.nn.Parameter], *, grad_clip: float = 0.0,
               sync: distributed.GradientSync | None = None) -> tuple[torch.Tensor, bool]:
    """One optimiser step on one global batch, given as its micro-batches (an item of ``towers.loader``);
    returns the batch's loss and whether the step was taken: a non-finite loss or gradient norm skips the
    update (the gradients are dropped), so one bad batch cannot turn the weights into NaN. Under torchrun
    the ranks decide on the averaged gradients, which are equal everywhere; with fp16 the gradient scaler
    skips overflowing steps itself (and lowers its scale).

    Several micro-batches (``accum_freq > 1``) take GradCache's step (Gao et al., "Scaling Deep Contrastive
    Learning Batch Size under Memory Limited Setup", 2021): every micro-batch is embedded once without
    gradients; the loss over the whole batch's embeddings is taken once and differentiated down to those
    embeddings (and the logit scale); then each micro-batch is embedded again with gradients, its random
    state replayed (dropout draws the same masks as in the first pass), and its embeddings' gradients are
    pushed through it. The summed gradient equals the full batch's, every micro-batch sees all in-batch
    negatives, the loss is computed once per step, and one micro-batch's activations are held at a time.
    Under torchrun, ``sync`` (:class:`~gclcore.distributed.GradientSync`) embeds and averages gradients
    over ranks.
    """
    sync = sync or distributed.GradientSync(towers, distributed.Context())
    towers.model.train()
    index = batch_indices(towers, parts)
    # autocast covers the forward passes only: a backward run inside it would re-cast the backward's matrix
    # products too (the loss's float32 logits' gradients included)
    if len(parts) == 1:
        with precision.autocast():
            loss = objective(sync.embed(parts[0]), index)
        precision.scaler.scale(loss).backward()
    else:
        randomness, cached = [], []
        with torch.no_grad(), precision.autocast():
            for part in parts:
                randomness.append(RandomState(objective.device))
                cached.append(towers.embed(part))
        joined = {name: torch.cat([c[name] for c in cached]).requires_grad_() for name in cached[0]}
        with precision.autocast():
            loss = objective(joined, index)
        precision.scaler.scale(loss).backward()  # down to the embeddings (and the logit scale)
        start = 0
        for j, part in enumerate(parts):
            rows = slice(start, start + len(towers.indices(part)))
            start = rows.stop
            with sync.accumulating(last=j == len(parts) - 1), randomness[j].replayed():
                with precision.autocast():
                    live = sync.embed(part)
                names = [name for name in live if joined[name].grad is not None]
                torch.autograd.backward([live[n] for n in names], [joined[n].grad[rows].to(live[n].dtype) for n in names])
    sync.finish(params)
    precision.scaler.unscale_(optimizer)
    norm = (torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip
            else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    # one wait for the device per step: this check (the loss is per rank, the norm of the averaged gradients
    # the same on every rank, so under torchrun the ranks decide on the norm alone)
    finite = precision.scaler.is_enabled() or bool(torch.isfinite(norm) if sync.world > 1
                                                   else torch.isfinite(norm) & torch.isfinite(loss))
    if finite:
        precision.scaler.step(optimizer)
        precision.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        towers.model.logit_scale.clamp_(0, math.log(100))
    return loss.detach(), finite


def batch_indices(towers: Towers, parts: list) -> np.ndarray:
    """The training-row indices of a global batch given as its micro-batches, in order."""
    return np.concatenate([towers.indices(part) for part in parts])


class RandomState:
    """The CPU and (on a GPU) the device's random state at creation, to replay a forward pass's random
    draws (dropout) later, as :func:`torch.utils.checkpoint` does for its recomputation."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.gpu = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replayed(self):
        with torch.random.fork_rng(devices=[self.device] if self.gpu is not None else []):
            torch.set_rng_state(self.cpu)
            if self.gpu is not None:
                torch.cuda.set_rng_state(self.gpu, self.device)
            yield


class DevEvaluation:
    """Evaluation during training (``eval_split`` with the shipped ``eval_query_set`` ground truth) on
    rank 0 while the other ranks wait; each evaluated step becomes an ``eval/*`` row of the log.

    It is bounded: the products searched are a **dev sub-corpus** of ``eval_corpus_size`` products (every
    judged product + distractors, :func:`gclcore.evaluate.dev_subcorpus`), chosen once per run by a fixed
    seed, so every evaluation, resumed runs and other runs on the same data search the same products.
    Each row carries ``eval/corpus_size`` (products searched) and ``eval/corpus_total`` (the split's
    corpus); the ids are in ``<run>/eval/dev-subcorpus.txt``. The published protocol over the full
    corpus is :meth:`test` (``test_splits``), after training.
    """

    def __init__(self, cfg: TrainConfig, dataset: Dataset, towers: Towers, lhs, rhs, log: RunLog,
                 ctx: distributed.Context):
        self.cfg, self.dataset, self.towers, self.lhs, self.rhs, self.log, self.ctx = (
            cfg, dataset, towers, lhs, rhs, log, ctx)
        self.done = log.evaluated_steps()  # the same on every rank
        self.subset, self.sizes = None, {}
        if cfg.eval_split and ctx.is_main:
            corpus = dataset.corpus(cfg.eval_split)
            rows = dev_subcorpus(dataset, cfg.eval_split, cfg.eval_corpus_size, query_set=cfg.eval_query_set,
                                 lhs_fields=lhs, top_q=cfg.eval_top_q, top_k=cfg.eval_top_k)
            if len(rows) < len(corpus):  # else the full corpus, exactly as evaluate_split searches it
                self.subset = rows
                with atomic_write(_mkdir(Path(cfg.output_dir) / "eval") / "dev-subcorpus.txt") as fh:
                    fh.writelines(f"{pid}\n" for pid in corpus["product_id"].astype(str).to_numpy()[rows])
            self.sizes = {"eval/corpus_size": len(rows), "eval/corpus_total": len(corpus)}

    def __call__(self, state: TrainState) -> None:
        cfg = self.cfg
        if not cfg.eval_split or state.step in self.done:
            return
        self.done.add(state.step)
        if self.ctx.is_main:
            self.towers.model.eval()
            result = evaluate_split(self.towers.eval_encoder, self.dataset, cfg.eval_split,
                                    Path(cfg.output_dir) / "eval" / f"step-{state.step:06d}", lhs_fields=self.lhs,
                                    rhs_fields=self.rhs, top_q=cfg.eval_top_q, top_k=cfg.eval_top_k, query_set=cfg.eval_query_set,
                                    cache_dir=False, progress=False, corpus_subset=self.subset,
                                    max_bad_images=cfg.max_bad_images, save_rankings=cfg.save_rankings,
                                    image_store_dir=cfg.image_store_dir)
            self.log.append({"step": state.step, "epoch": state.epoch, **self.sizes,
                             **{f"eval/{k}": v for k, v in result.metrics.items()}})
        distributed.barrier(self.ctx)

    def test(self) -> pd.DataFrame | None:
        """The published protocol on ``test_splits`` after training (rank 0), into ``<run>/test/``.

        Embeddings are cached for the length of the call only (keyed by the weights' digest), so splits that
        search the same corpus (in-domain and novel-query; novel-document and zero-shot) embed it once."""
        cfg = self.cfg
        if not cfg.test_splits or not self.ctx.is_main:
            return None
        self.towers.model.eval()
        with tempfile.TemporaryDirectory(prefix="gcl-test-embeddings-") as cache:
            return evaluate(self.towers.eval_encoder, self.dataset, Path(cfg.output_dir) / "test", cfg.test_splits,
                            lhs_fields=self.lhs, rhs_fields=self.rhs, top_q=cfg.eval_top_q, top_k=cfg.eval_top_k,
                            cache_dir=cache, progress=False, max_bad_images=cfg.max_bad_images,
                            save_rankings=cfg.save_rankings, image_store_dir=cfg.image_store_dir)


def train(config: TrainConfig | dict | None = None, on_step=None, sampler=None, **overrides) -> TrainResult:
    """Train (and evaluate) one configuration; see :class:`~gclcore.config.TrainConfig` for every option.

    ``sampler(n_rows, batch_rows, seed, epoch) -> list of row-index arrays`` replaces the one ``batching``
    names (:mod:`gclcore.batching`);
    it must be deterministic in (seed, epoch) for resume to stay exact (under torchrun it draws global
    batches; each rank trains on its slice). ``on_step(step)`` runs after every optimiser step; an
    exception raised there ends the run like a kill, and ``resume="latest"`` continues it.
    """
    from tqdm.auto import tqdm

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config or {}))
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    ctx, out = distributed.from_environment(), Path(cfg.output_dir)
    # the inputs a run names are checked before anything is loaded (the config's values were, when it was made)
    resume = checkpoint.resume_path(out, cfg.resume)
    dataset = open_dataset(cfg.data_dir, cfg.image_root or None)
    device = distributed.start(ctx, cfg.dist_backend, cfg.dist_timeout_min) or torch.device(
        cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _seed_everything(cfg)

    # the model, the rows and their weights, the steps, the regime and its defaults, the towers, the objective
    encoder = _load_model(cfg, device, ctx)
    model = encoder.model
    lhs, rhs = parse_fields(cfg.lhs_fields), parse_fields(cfg.rhs_fields)
    rows = training_rows(cfg, lhs + rhs, dataset)
    sampler = sampler or (QueryGroupedBatches.for_rows(rows, cfg.products_per_query, cfg.within_query)
                          if cfg.batching == "grouped" else epoch_batches)
    batch_rows = cfg.batch_size * cfg.accum_freq * ctx.world  # the global batch
    steps_per_epoch = len(sampler(len(rows), batch_rows, cfg.seed, 0))
    total_steps = _total_steps(cfg, steps_per_epoch, len(rows), batch_rows)
    cfg = _record_config(cfg, cfg.resolved(resolve_freeze(cfg.freeze, model), total_steps), total_steps, out, ctx)
    towers = distributed.main_first(ctx, lambda: build_towers(
        cfg.freeze, encoder, rows, lhs + rhs, dataset, cache_dir=cfg.feature_cache_dir, seed=cfg.seed,
        workers=cfg.workers, progress=cfg.progress, prefixes=field_prefixes(encoder, lhs, rhs),
        max_bad_images=cfg.max_bad_images, missing_images=cfg.missing_images, image_store_dir=cfg.image_store_dir))
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.freeze)
    objective = PairObjective(rows, lhs, rhs, cfg, model, device,
                              gather=distributed.all_gather_with_grad if ctx.enabled else None)

    # optimiser, schedule, precision, resume
    optimizer, params = build_optimizer(towers.trainable(), model.logit_scale, **cfg.optimizer_options())
    lr_at = cosine_schedule(cfg.lr, cfg.warmup_steps, total_steps)
    precision = Precision.choose(cfg.precision, device)
    state = checkpoint.load_state(resume, model, optimizer, precision.scaler, ctx, cfg) if resume else TrainState()
    _check_disk_space(cfg, model, params, state, checkpoint.state_path(out).exists(), total_steps, steps_per_epoch,
                      ctx, device)
    if cfg.resume == "latest" and resume is None and (out / "model.pt").exists() and ctx.is_main:
        print(f"no saved state to resume in {out}, though a run ended there (keep_state=false): training from "
              f"step 0, replacing its model.pt", flush=True)
    sync = distributed.GradientSync(towers, ctx, cfg.grad_sync)
    _write_config(cfg, out, ctx)  # after the resume check: a refused state leaves the run's record as it was
    log = RunLog(out, state.history, write=ctx.is_main, tensorboard=cfg.tensorboard)
    evaluation = DevEvaluation(cfg, dataset, towers, lhs, rhs, log, ctx)
    clock = checkpoint.SaveClock(cfg.save_every_minutes, ctx, device)

    def save_state():
        checkpoint.save_state(out, model, optimizer, precision.scaler, state, cfg, ctx)
        clock.reset()

    if state.step == 0:
        evaluation(state)  # the untrained (zero-shot) model: the like-for-like baseline row

    # the loop
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step",
               disable=not (cfg.progress and ctx.is_main))
    throughput, interrupted, bad_steps = Throughput(), False, 0
    with GracefulStop(ctx, device) as stop:  # SIGTERM / SIGINT: stop at the next step boundary, state saved
        while state.step < total_steps and not interrupted:
            batches = distributed.shard(sampler(len(rows), batch_rows, cfg.seed, state.epoch), ctx)
            for parts in throughput.timed(towers.loader(batches[state.batch_in_epoch:], state.epoch, cfg.accum_freq)):
                set_lr(optimizer, lr_at(state.step))
                with autotuned_convolutions(device):
                    loss, finite = train_step(towers, objective, parts, optimizer, precision, params,
                                              grad_clip=cfg.grad_clip, sync=sync)
                index = batch_indices(towers, parts)
                del parts  # its pixels leave the device before the next batch's arrive there (two would not fit)
                state.advance()
                bad_steps = 0 if finite else bad_steps + 1
                if not finite:  # skipped: logged with the batch's pairs; too many in a row end the run
                    log.append(_skipped_step_row(state, rows, index))
                    if bad_steps > cfg.max_bad_steps:
                        save_state()
                        raise NonFiniteTraining(
                            f"{bad_steps} steps in a row (to step {state.step}) had a non-finite loss or gradient "
                            f"and were skipped (max_bad_steps={cfg.max_bad_steps}); their pairs are in "
                            f"{out / 'log.jsonl'}. Lower lr, check the scores of those pairs, or use fp32")
                throughput.add(len(index) * ctx.world)
                bar.update(1)
                logged = state.step % cfg.log_every == 0 or state.step == total_steps
                if logged:
                    row = _progress_row(state, loss, lr_at(state.step - 1), model, throughput, ctx, device)
                    log.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{row['samples_per_s']:.0f}",
                                    data_wait=f"{row['data_wait']:.0%}")
                with throughput.excluded():  # evaluation and checkpoints are not training's samples/s
                    if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < total_steps:
                        evaluation(state)
                    if (cfg.save_every > 0 and state.step % cfg.save_every == 0) or (logged and clock.due()):
                        save_state()
                if on_step is not None:
                    on_step(state.step)
                interrupted = stop.requested()
                if state.step >= total_steps or interrupted:
                    break
            if state.batch_in_epoch == len(batches):  # the epoch is complete
                state.next_epoch()
                with throughput.excluded():
                    if cfg.epoch_checkpoints and ctx.is_main:
                        checkpoint.save_model(out / "checkpoints" / f"epoch_{state.epoch}.pt", model, state, cfg.model)
                    if cfg.save_every == 0:
                        save_state()
    interrupted = interrupted or stop.requested()  # a signal during the last step's epoch-end work
    bar.close()
    save_state()
    if interrupted:
        log.close()
        distributed.stop(ctx)
        raise TrainingInterrupted(f"{stop.signal_name or 'a signal on another rank'} at step {state.step} of "
                                  f"{total_steps}: state saved to {checkpoint.state_path(out)}; run again with "
                                  f"resume=latest to continue")
    if ctx.is_main:
        checkpoint.save_model(out / "model.pt", model, state, cfg.model)
    evaluation(state)
    test = evaluation.test()
    if ctx.is_main and not cfg.keep_state:  # only now: a run that failed in its tests resumes with no step to redo
        checkpoint.remove_state(out)
    if towers.resolver is not None and ctx.is_main:  # what training saw of the images, in the run's own log
        log.append({"step": state.step, **_image_counts(towers.resolver)})
    log.close()
    distributed.stop(ctx)
    return _result(out, state, test, cfg)


def enable_grad_checkpointing(model: torch.nn.Module, freeze: str) -> None:
    """Recompute the towers' activations in backward instead of keeping them (open_clip's
    ``set_grad_checkpointing``: per transformer block / timm stage, non-reentrant ``torch.utils.checkpoint``),
    trading about a third more compute for activation memory that no longer grows with the layers.
    Gradients are unchanged; BatchNorm running statistics are updated by the recomputation too."""
    if freeze != "none":
        raise ValueError(f"grad_checkpointing applies to full fine-tuning (freeze=none); this run is freeze={freeze}, "
                         f"whose trunks are frozen and run once to cache their features")
    if not hasattr(model, "set_grad_checkpointing"):
        raise ValueError(f"grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing")
    with warnings.catch_warnings():  # open_clip calls transformers' gradient_checkpointing_enable, renamed in v5
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*deprecated", category=FutureWarning)
        model.set_grad_checkpointing(True)


def _load_model(cfg: TrainConfig, device: torch.device, ctx: distributed.Context):
    """The encoder to train; under torchrun every rank starts from rank 0's weights, with its own dropout."""
    from gclcore.models import load_encoder

    encoder = load_encoder(cfg.model, cfg.pretrained, device=device, seed=None,  # initialised from cfg.seed
                           pooling=cfg.pooling, query_prefix=cfg.query_prefix, document_prefix=cfg.document_prefix,
                           hf_dir=cfg.hf_dir or None)
    if ctx.enabled:
        distributed.broadcast_parameters(encoder.model)
        torch.manual_seed(cfg.seed + ctx.rank)
    return encoder


def _image_counts(resolver) -> dict:
    """``images/seen``, ``images/missing``, ``images/unreadable``: the image loads training counted (the
    feature cache's, or every batch's when towers are fine-tuned); bad ones were grey placeholders."""
    return {"images/seen": resolver.seen_count, "images/missing": resolver.missing_count,
            "images/unreadable": resolver.unreadable_count}


class NonFiniteTraining(ValueError):
    """More than ``max_bad_steps`` consecutive steps had a non-finite loss or gradient."""


def _skipped_step_row(state: TrainState, rows: pd.DataFrame, index: np.ndarray) -> dict:
    """The log row of a skipped step: its batch as ``pair_id``s (training-row positions without that column)."""
    ids = rows["pair_id"].to_numpy()[index] if "pair_id" in rows.columns else index
    return {"step": state.step, "epoch": state.epoch, "skipped": "non-finite loss or gradient",
            "pairs": [str(i) for i in ids.tolist()]}


def _progress_row(state: TrainState, loss: torch.Tensor, lr: float, model, throughput: Throughput,
                  ctx: distributed.Context, device: torch.device) -> dict:
    """A training row of the log: the loss (mean over ranks), learning rate, logit scale, samples/s and the
    share of the time waiting for data (:class:`~gclcore.runlog.Throughput`; the slowest rank's: a rank
    that waits for its loader holds the others up in the gradient all-reduce)."""
    window = throughput.window()
    return {"step": state.step, "epoch": state.epoch, "loss": distributed.reduce_over_ranks(loss.item(), ctx, device),
            "lr": lr, "logit_scale": model.logit_scale.exp().item(), "samples_per_s": window["samples_per_s"],
            "data_wait": distributed.reduce_over_ranks(window["data_wait"], ctx, device, "max")}


def _result(out: Path, state: TrainState, test: pd.DataFrame | None, cfg: TrainConfig) -> TrainResult:
    train_rows, eval_rows = split_history(pd.DataFrame(state.history))
    speeds = train_rows["samples_per_s"].to_numpy() if len(train_rows) else np.array([0.0])
    return TrainResult(out, train_rows, eval_rows, out / "model.pt", state.step, float(np.median(speeds)), test,
                       cfg)


def _check_disk_space(cfg: TrainConfig, model, params, state: TrainState, state_on_disk: bool, total_steps: int,
                      steps_per_epoch: int, ctx: distributed.Context, device: torch.device) -> None:
    """Stop before the first step (every rank, :class:`~gclcore.checkpoint.NotEnoughDiskSpace`) when rank 0's
    run folder lacks room for the checkpoints still to come: the epoch copies of the steps left, and two
    full states at once for a run without one that saves before its final save (by steps, epochs or time;
    a time-based save is counted as due)."""
    epochs_left = max(0, total_steps // steps_per_epoch - state.step // steps_per_epoch) if steps_per_epoch else 0
    saves_before_end = cfg.save_every_minutes > 0 or (
        cfg.save_every > 0 and total_steps // cfg.save_every > state.step // cfg.save_every) or (
        cfg.save_every == 0 and epochs_left > 0)
    needed = checkpoint.bytes_to_write(model, params, epochs_left if cfg.epoch_checkpoints else 0,
                                       state_copies=2 if saves_before_end and not state_on_disk else 1)
    shortfall = checkpoint.disk_shortfall(cfg.output_dir, needed) if ctx.is_main else None  # rank 0 writes them
    if distributed.reduce_over_ranks(float(shortfall is not None), ctx, device, "max"):  # all stop, none waits
        raise checkpoint.NotEnoughDiskSpace(shortfall or f"rank 0 found too little disk space in {cfg.output_dir}")


def _total_steps(cfg: TrainConfig, steps_per_epoch: int, n_rows: int, batch_rows: int) -> int:
    if steps_per_epoch == 0 and cfg.epochs > 0:
        raise ValueError(f"{n_rows} training rows cannot fill one batch of {batch_rows}")
    total = cfg.epochs * steps_per_epoch
    return min(cfg.max_steps, total) if cfg.max_steps else total


_REGIMES = {"trunks": "heads only (locked trunks)", "none": "full fine-tuning"}


def _record_config(given: TrainConfig, cfg: TrainConfig, total_steps: int, out: Path,
                   ctx: distributed.Context) -> TrainConfig:
    """The run folder (cleared of partial files a killed save left), and one printed line (rank 0) naming
    the regime and its learning rate, and whether that is the regime's default or was given; returns ``cfg``."""
    out.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        partial = checkpoint.remove_partial_saves(out)
        if partial:
            print(f"removed {len(partial)} partial file(s) of an interrupted save: "
                  f"{', '.join(p.name for p in partial)}", flush=True)
        lr_from = "given" if given.lr > 0 else "default"
        warmup_from = "given" if given.warmup_steps >= 0 else "default"
        print(f"{cfg.model}: {_REGIMES[cfg.freeze]}, lr {cfg.lr:g} ({lr_from}), warm-up {cfg.warmup_steps} "
              f"steps ({warmup_from}) of {total_steps}; run folder {out}", flush=True)
    return cfg


def _write_config(cfg: TrainConfig, out: Path, ctx: distributed.Context) -> None:
    """``config.json`` = the resolved ``cfg`` the run trains with (rank 0)."""
    if ctx.is_main:
        with atomic_write(out / "config.json") as fh:
            json.dump(dataclasses.asdict(cfg), fh, indent=1)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _seed_everything(cfg: TrainConfig) -> None:
    """Every RNG seeded from ``cfg.seed``."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)


RUN_ERRORS = (ValueError, FileNotFoundError, KeyError, checkpoint.NotEnoughDiskSpace, checkpoint.CheckpointWriteError)
"""What a run's command line reports in one line (exit status 2) instead of a traceback: a config or input
that cannot work, or a disk without room for the run's checkpoints."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        cfg = TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides)
        result = train(cfg)
    except RUN_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if distributed.from_environment().is_main:
        shown = [c for c in result.evaluations.columns if c in ("step", "epoch") or c.startswith("eval/corpus")
                 or c.removeprefix("eval/") in ("NDCG@10", "mERR", "mRBP9", "MAP@1000", "MRR@1000")]
        print(result.evaluations[shown].to_string(index=False))  # every measure: log.jsonl
        if result.test is not None:
            print(result.test.to_string(index=False))
        print(f"model: {result.checkpoint}; every measure: {result.output_dir / 'log.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
