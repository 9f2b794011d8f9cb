"""The trainer on the synth `tiny` shop: learning, exact gradient accumulation, kill/resume, checkpoints."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from gclcore import data
from gclcore import train as trainer
from gclcore.data import DataFormatError
from gclcore.models import load_encoder
from gclcore.optim import Precision, autotuned_convolutions
from gclcore.towers import FullTowers, build_towers

pytestmark = pytest.mark.slow


def config(tmp_path, tiny_shop, **overrides):
    values = dict(data_dir=str(tiny_shop), output_dir=str(tmp_path / "run"), batch_size=32, epochs=6,
                  lr=2e-3, warmup_steps=5, eval_top_k=100, log_every=2, progress=False,
                  feature_cache_dir=str(tmp_path.parent / "features"))
    values.update(overrides)
    return trainer.TrainConfig(**values)


def test_throughput_tells_a_slow_loader_from_a_slow_step():
    """data_wait is the share of a window spent blocked on the loader: near 1 when batches come slowly,
    near 0 when the step is the slow part (sleeps of 0.1 s against microseconds of bookkeeping); time spent
    in excluded() (evaluation, checkpoints) is left out."""
    import time

    from gclcore.runlog import Throughput

    def slow_loader(n):
        for i in range(n):
            time.sleep(0.1)
            yield i

    clock = Throughput()
    for _ in clock.timed(slow_loader(3)):
        clock.add(8)
    loader_bound = clock.window()
    for _ in clock.timed(range(3)):
        time.sleep(0.1)
        clock.add(8)
    step_bound = clock.window()
    assert loader_bound["data_wait"] > 0.9 and step_bound["data_wait"] < 0.1, (loader_bound, step_bound)
    assert 24 / 0.5 < step_bound["samples_per_s"] <= 24 / 0.3  # 24 samples in at least 0.3 s
    for _ in clock.timed(range(3)):
        with clock.excluded():  # evaluation, checkpoints: not in the window
            time.sleep(0.1)
        clock.add(8)
    assert clock.window()["samples_per_s"] > 24 / 0.05


def test_training_lowers_the_loss_and_improves_dev_ndcg(tmp_path, tiny_shop):
    result = trainer.train(config(tmp_path, tiny_shop))
    losses = result.history["loss"].to_numpy()
    assert losses[-3:].mean() < 0.8 * losses[:3].mean()
    before, after = result.evaluations["eval/NDCG@10"].iloc[0], result.evaluations["eval/NDCG@10"].iloc[-1]
    assert after > before + 0.05, (before, after)
    log = [json.loads(line) for line in (result.output_dir / "log.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "samples_per_s", "data_wait", "logit_scale"} <= set(log[1]) and "eval/mERR" in log[-2]
    assert all(0 <= row["data_wait"] <= 1 for row in log if "data_wait" in row)
    from gclcore.features import dataset_inputs

    images = {data.image_basename(p) for p in dataset_inputs(trainer.open_dataset(tiny_shop), [], ["image_local"])[1]}
    assert log[-1] == {"step": result.steps, "images/seen": len(images), "images/missing": 0, "images/unreadable": 0}
    # the saved model is an open_clip-format checkpoint that our loader and open_clip both accept
    state = torch.load(result.checkpoint, weights_only=False)
    assert {"epoch", "state_dict"} <= set(state)
    reloaded = load_encoder("default", str(result.checkpoint), device="cpu")
    trained = {k: v for k, v in reloaded.model.state_dict().items() if "proj" in k or "head" in k}
    assert all(torch.equal(v, state["state_dict"][k]) for k, v in trained.items())


def _final_weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


def _killed_and_resumed(cfg, step: int, between=lambda: None):
    """Train ``cfg`` until an exception at ``step`` ends it like a kill, call ``between()``, then resume
    from the last saved state; returns the resumed run's result."""
    class Killed(Exception):
        pass

    def kill(at):
        if at == step:
            raise Killed

    with pytest.raises(Killed):
        trainer.train(cfg, on_step=kill)
    between()
    return trainer.train(cfg, resume="latest")


def test_kill_and_resume_reproduce_the_uninterrupted_run(tmp_path, tiny_shop):
    """... the dev sub-corpus included: chosen once, the same in every evaluation, after a resume too."""
    bounded = dict(save_every=3, eval_every=4, eval_corpus_size=60)
    full = trainer.train(config(tmp_path / "a", tiny_shop, **bounded))

    cfg = config(tmp_path / "b", tiny_shop, **bounded)
    chosen_before_resume = []
    resumed = _killed_and_resumed(cfg, 7, lambda: chosen_before_resume.append(
        (tmp_path / "b" / "run" / "eval" / "dev-subcorpus.txt").read_text()))  # resumes from the step-6 state
    chosen = chosen_before_resume[0]
    a, b = _final_weights(full.checkpoint), _final_weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.steps == full.steps
    assert resumed.history["loss"].tolist() == pytest.approx(full.history["loss"].tolist())
    # every evaluation searched the same 60 products (of 136), before and after the resume
    evals = resumed.evaluations
    assert len(evals) >= 4 and set(evals["eval/corpus_size"]) == {60} and set(evals["eval/corpus_total"]) == {136}
    assert (tmp_path / "b" / "run" / "eval" / "dev-subcorpus.txt").read_text() == chosen
    assert chosen == (tmp_path / "a" / "run" / "eval" / "dev-subcorpus.txt").read_text() and len(chosen.split()) == 60
    assert evals["eval/NDCG@10"].tolist() == pytest.approx(full.evaluations["eval/NDCG@10"].tolist())


def test_accumulation_keeps_full_batch_negatives(tmp_path, tiny_shop):
    one = trainer.train(config(tmp_path / "one", tiny_shop, epochs=1, max_steps=1, batch_size=32, eval_top_k=10))
    two = trainer.train(config(tmp_path / "two", tiny_shop, epochs=1, max_steps=1, batch_size=16, accum_freq=2,
                               eval_top_k=10))
    a, b = _final_weights(one.checkpoint), _final_weights(two.checkpoint)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_config_from_yaml_and_cli(tmp_path, tiny_shop, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"data_dir: {tiny_shop}\noutput_dir: {tmp_path / 'cli'}\nbatch_size: 32\nepochs: 1\n"
                    f"stw: constant\neval_top_k: 20\nprogress: false\nfeature_cache_dir: {tmp_path.parent / 'features'}\n")
    assert trainer.main(["--config", str(path), "--set", "max_steps=2"]) == 0
    printed = capsys.readouterr().out
    assert "eval/NDCG@10" in printed and "Hole@" not in printed and "log.jsonl" in printed  # a summary, not 150 columns
    recorded = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert recorded["stw"] == "constant"
    # no lr / warmup_steps given: the heads-only defaults, recorded resolved
    assert (recorded["freeze"], recorded["lr"], recorded["warmup_steps"]) == ("trunks", 1e-3, 20)
    with pytest.raises(ValueError, match="unknown config key"):
        trainer.TrainConfig.from_yaml(path, nonsense=1)
    assert trainer.main(["--config", str(path), "--set", "stw=cubic"]) == 2


def test_full_fine_tuning_runs_on_cpu_with_its_own_learning_rate(tmp_path, tiny_shop, capsys):
    result = trainer.train(config(tmp_path, tiny_shop, freeze="none", batch_size=8, epochs=1, max_steps=20,
                                  workers=0, eval_top_q=3, eval_top_k=10, log_every=1, lr=0.0, warmup_steps=-1))
    assert result.steps == 20 and len(result.history) >= 1
    recorded = json.loads((result.output_dir / "config.json").read_text())
    assert (recorded["freeze"], recorded["lr"], recorded["warmup_steps"]) == ("none", 1e-5, 2)  # 10% of 20 steps
    assert result.config.lr == 1e-5 and result.history["lr"].max() == pytest.approx(1e-5)
    assert "full fine-tuning, lr 1e-05 (default), warm-up 2 steps (default) of 20" in capsys.readouterr().out


def test_regime_of_auto(tiny_shop):
    import open_clip

    from gclcore.towers import resolve_freeze

    assert resolve_freeze("auto", load_encoder("default", device="cpu").model) == "trunks"
    assert resolve_freeze("auto", open_clip.create_model("ViT-S-32", pretrained=None)) == "none"
    assert resolve_freeze("trunks", None) == "trunks" and resolve_freeze("none", None) == "none"
    with pytest.raises(ValueError, match="freeze must be"):
        resolve_freeze("heads", None)


def test_epoch_batches_are_deterministic_and_full():
    a = trainer.epoch_batches(103, 10, seed=1, epoch=2)
    assert len(a) == 10 and all(len(b) == 10 for b in a)
    assert [b.tolist() for b in a] == [b.tolist() for b in trainer.epoch_batches(103, 10, seed=1, epoch=2)]
    assert a[0].tolist() != trainer.epoch_batches(103, 10, seed=1, epoch=3)[0].tolist()


def test_book_runs_save_once(tmp_path, tiny_shop):
    result = trainer.train(config(tmp_path, tiny_shop, epochs=2, save_every=-1, epoch_checkpoints=False, eval_top_k=10))
    saved = sorted(p.name for p in (result.output_dir / "checkpoints").iterdir())
    assert saved == ["state-latest.pt"] and result.checkpoint.exists()
    assert torch.load(result.output_dir / "checkpoints" / "state-latest.pt", weights_only=False)["step"] == result.steps


def test_the_tiled_loss_trains_the_same_weights_as_the_dense_loss(tmp_path, tiny_shop):
    common = dict(epochs=1, eval_split="", batch_size=16, duplicates="positives", eval_top_k=10)
    dense = trainer.train(config(tmp_path / "dense", tiny_shop, loss_tile=0, **common))
    tiled = trainer.train(config(tmp_path / "tiled", tiny_shop, loss_tile=5, **common))
    assert tiled.history["loss"].tolist() == pytest.approx(dense.history["loss"].tolist(), rel=1e-5)
    a, b = _final_weights(dense.checkpoint), _final_weights(tiled.checkpoint)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_test_splits_embed_each_corpus_once_and_leave_no_cache(tmp_path, tiny_shop, monkeypatch):
    from gclcore import evaluate

    computed, cached = [], evaluate._cached

    def counting(path, compute):
        return cached(path, lambda: computed.append(path.name.split("-")[0] if path else "uncached") or compute())

    monkeypatch.setattr(evaluate, "_cached", counting)
    result = trainer.train(config(tmp_path, tiny_shop, epochs=1, eval_split="", test_splits="all", eval_top_k=10,
                                  rhs_fields="title=1"))
    corpora = {trainer.open_dataset(tiny_shop).corpus_digest(split) for split in result.test["split"]}
    assert len(result.test) == 4 and len(corpora) == 2
    assert computed.count("corpus") == 2 and computed.count("queries") == 4   # one per corpus, one per split
    assert not list((result.output_dir / "test").rglob("*.pt"))


def test_a_signal_stops_at_a_step_boundary_with_a_state_that_resumes_exactly(tmp_path, tiny_shop):
    """SIGINT (Ctrl-C, a notebook's stop) mid-run: the step finishes, the state is saved, TrainingInterrupted
    says how to continue, the handlers are given back; resume="latest" ends with the uninterrupted weights."""
    from gclcore.interrupt import TrainingInterrupted

    full = trainer.train(config(tmp_path / "a", tiny_shop, eval_split=""))
    cfg = config(tmp_path / "b", tiny_shop, eval_split="", save_every=-1)  # no save but the signal's
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 5 of 48: state saved to .*state-latest.pt; run "
                                                  "again with resume=latest"):
        trainer.train(cfg, on_step=lambda step: step == 5 and os.kill(os.getpid(), signal.SIGINT))
    assert signal.getsignal(signal.SIGINT) is before
    assert torch.load(tmp_path / "b" / "run" / "checkpoints" / "state-latest.pt", weights_only=False)["step"] == 5
    assert not (tmp_path / "b" / "run" / "model.pt").exists()
    resumed = trainer.train(cfg, resume="latest")
    a, b = _final_weights(full.checkpoint), _final_weights(resumed.checkpoint)
    assert resumed.steps == full.steps and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_the_command_saves_and_exits_75_and_partial_saves_are_cleared(tmp_path, tiny_shop):
    """A preempted job (SIGTERM to ``python -m gclcore.train``): exit status 75 (EX_TEMPFAIL), a message on
    stderr, a resumable state; the temporary file of a save killed mid-write is removed at the next start."""
    cfg = dataclasses.asdict(config(tmp_path, tiny_shop, epochs=400, eval_split="", log_every=1, save_every=-1))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "gclcore.train", "--config", str(tmp_path / "run.yaml")]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = Path(cfg["output_dir"]) / "log.jsonl"
    while not (log.exists() and log.read_text().count("\n") >= 3) and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 75, stderr[-2000:]
    assert "SIGTERM received: stopping after the current step" in stderr
    assert "stopped: SIGTERM at step" in stderr and "resume=latest" in stderr
    state = torch.load(Path(cfg["output_dir"]) / "checkpoints" / "state-latest.pt", weights_only=False)
    assert 3 <= state["step"] < 400 * 8
    partial = Path(cfg["output_dir"]) / "checkpoints" / ".state-latest.pt.abc123.tmp"  # as a SIGKILL mid-save leaves
    partial.write_bytes(b"half a state")
    done = subprocess.run(command + ["--set", "resume=latest", "--set", "max_steps=" + str(state["step"] + 2)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removed 1 partial file(s) of an interrupted save: .state-latest.pt.abc123.tmp" in done.stdout
    assert not partial.exists()


def test_missing_inputs_fail_before_the_model_is_loaded(tmp_path, tiny_shop, monkeypatch):
    monkeypatch.setattr(trainer, "_load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(FileNotFoundError, match="resume state .*nope.pt not found"):
        trainer.train(config(tmp_path, tiny_shop, resume=str(tmp_path / "nope.pt")))
    with pytest.raises(DataFormatError, match="no-such-shop: dataset folder not found"):
        trainer.train(config(tmp_path, tiny_shop, data_dir=str(tmp_path / "no-such-shop")))


def _poisoned_objective(monkeypatch, bad_calls):
    """The loss is NaN on the objective calls numbered in ``bad_calls`` (1-based), as a diverging batch gives."""
    original, calls = trainer.PairObjective.__call__, []

    def poisoned(self, embedded, index):
        calls.append(list(index))
        loss = original(self, embedded, index)
        return loss * float("nan") if len(calls) in bad_calls else loss

    monkeypatch.setattr(trainer.PairObjective, "__call__", poisoned)
    return calls


def test_a_non_finite_loss_skips_the_step_and_logs_its_pairs(tmp_path, tiny_shop, monkeypatch):
    calls = _poisoned_objective(monkeypatch, {3, 4})
    loaded, load = [], trainer._load_model
    monkeypatch.setattr(trainer, "_load_model", lambda *args: loaded.append(load(*args)) or loaded[-1])
    snapshots = {}
    cfg = config(tmp_path, tiny_shop, epochs=1, eval_split="", log_every=1)
    result = trainer.train(cfg, on_step=lambda step: snapshots.__setitem__(step, {
        k: v.clone() for k, v in loaded[0].model.state_dict().items()}))
    assert all(torch.equal(snapshots[2][k], snapshots[4][k]) for k in snapshots[2])    # steps 3, 4: no update
    assert not all(torch.equal(snapshots[4][k], snapshots[5][k]) for k in snapshots[4])  # step 5 trains again
    log = [json.loads(line) for line in (result.output_dir / "log.jsonl").read_text().splitlines()]
    skipped = [row for row in log if "skipped" in row]
    rows = trainer.training_rows(cfg, ())
    assert [row["step"] for row in skipped] == [3, 4]
    assert skipped[0]["pairs"] == rows["pair_id"].to_numpy()[calls[2]].tolist()
    weights = _final_weights(result.checkpoint)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_too_many_non_finite_steps_in_a_row_stop_the_run_with_its_state_saved(tmp_path, tiny_shop, monkeypatch):
    _poisoned_objective(monkeypatch, set(range(3, 100)))
    cfg = config(tmp_path, tiny_shop, epochs=1, eval_split="", max_bad_steps=2)
    with pytest.raises(trainer.NonFiniteTraining, match="3 steps in a row \\(to step 5\\) had a non-finite loss .*"
                                                        "max_bad_steps=2.*Lower lr"):
        trainer.train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "state-latest.pt", weights_only=False)
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_same_seed_and_config_give_identical_weights_and_metrics_on_cpu(tmp_path, tiny_shop):
    runs = [trainer.train(config(tmp_path / name, tiny_shop, epochs=2, test_splits="zero_shot", eval_top_k=50))
            for name in ("first", "second")]
    a, b = (_final_weights(run.checkpoint) for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(runs[0].test, runs[1].test, check_exact=True)
    assert runs[0].evaluations["eval/NDCG@10"].tolist() == runs[1].evaluations["eval/NDCG@10"].tolist()


def test_query_grouped_batches_train_and_resume_exactly(tmp_path, tiny_shop):
    grouped = dict(batching="grouped", products_per_query=4, within_query="stratified", eval_split="", save_every=2)
    full = trainer.train(config(tmp_path / "a", tiny_shop, **grouped))
    rows = trainer.training_rows(config(tmp_path / "a", tiny_shop), ())
    sampler = trainer.QueryGroupedBatches.for_rows(rows, 4, "stratified")
    assert full.steps == 6 * len(sampler(len(rows), 32, 0, 0))

    resumed = _killed_and_resumed(config(tmp_path / "b", tiny_shop, **grouped), 5)  # from the step-4 state
    a, b = _final_weights(full.checkpoint), _final_weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_sampler_is_replaceable(tmp_path, tiny_shop):
    seen = []

    def first_rows_only(n_rows, batch_rows, seed, epoch):
        seen.append(epoch)
        return [np.arange(batch_rows)]  # one fixed batch per epoch

    result = trainer.train(config(tmp_path, tiny_shop, epochs=3, eval_top_k=10), sampler=first_rows_only)
    assert result.steps == 3 and seen[1:] == [0, 1, 2]  # the first call sizes the schedule


def _rank_errors(stderr: str) -> str:
    """Each rank's own error lines first (torchrun interleaves them), then the end of stderr."""
    own = [line for line in stderr.splitlines() if line.startswith(("[rank0]", "[rank1]"))]
    return "\n".join(own[-60:]) + "\n---\n" + stderr[-2000:]


def _single_and_two_ranks(tmp_path, tiny_shop, common: dict):
    """Train ``common`` in one process with batch 32 and under torchrun on 2 gloo ranks with batch 16 each;
    assert the same final weights, losses and steps; return the single run, the torchrun config and its log."""
    single = trainer.train(config(tmp_path / "one", tiny_shop, batch_size=32, **common))
    cfg = dataclasses.asdict(config(tmp_path / "two", tiny_shop, batch_size=16, **common))
    _torchrun(cfg, tmp_path / "ddp.yaml")
    out = Path(cfg["output_dir"])
    a, b = _final_weights(single.checkpoint), _final_weights(out / "model.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses == pytest.approx(single.history["loss"].tolist(), rel=1e-4)
    assert [row["step"] for row in log if "loss" in row] == single.history["step"].tolist()
    return single, cfg, log


def test_two_ranks_under_torchrun_follow_the_single_process_run(tmp_path, tiny_shop):
    """torchrun, 2 CPU ranks on gloo, batch 16 each == one process, batch 32: the same global batches,
    cross-rank negatives and averaged gradients give the same weights, losses and evaluation."""
    common = dict(epochs=2, stw="linear", rhs_fields="image_local=0.9,title=0.1", duplicates="mask",
                  eval_top_k=20, save_every=3)
    single, cfg, log = _single_and_two_ranks(tmp_path, tiny_shop, common)
    out = Path(cfg["output_dir"])
    final = [row for row in log if "eval/NDCG@10" in row][-1]
    assert final["eval/NDCG@10"] == pytest.approx(single.evaluations["eval/NDCG@10"].iloc[-1], abs=1e-6)
    state = torch.load(out / "checkpoints" / "state-latest.pt", weights_only=False)
    assert len(state["rank_rng"]) == 2 and state["step"] == single.steps

    # interrupted (Ctrl-C to torchrun once the first state is saved) and resumed: the same weights, bit for bit
    cfg.update(output_dir=str(tmp_path / "killed"))
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "gclcore.train", "--config", str(tmp_path / "killed.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = tmp_path / "killed" / "checkpoints" / "state-latest.pt"
    while not saved.exists() and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) != 0  # stopped mid-run, not finished
    done = subprocess.run(command + ["--set", "resume=latest"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, _rank_errors(done.stderr)
    uninterrupted, resumed = _final_weights(out / "model.pt"), _final_weights(tmp_path / "killed" / "model.pt")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_grouped_batches_and_a_ranking_term_under_torchrun_follow_the_single_process_run(tmp_path, tiny_shop):
    """Query-grouped batches (groups of 3: some straddle the two ranks' halves of a batch), graded
    multi-positive targets and the LambdaRank term: 2 ranks x 16 == one process x 32."""
    single, _, log = _single_and_two_ranks(tmp_path, tiny_shop, dict(
        epochs=2, batching="grouped", products_per_query=3, within_query="stratified", duplicates="positives",
        ranking_loss="lambda", eval_top_k=20))
    assert single.steps > 0 and any(row.get("loss") for row in log)


def test_gradient_checkpointing_keeps_the_gradients(tiny_shop):
    """Recomputing the towers' activations in backward (timm's EfficientNet stages, the Hugging Face text
    model's layers) gives the gradients of the stored activations, in train mode (dropout, BatchNorm)."""
    from gclcore.data import ImageResolver
    from gclcore.fusion import parse_fields

    cfg = trainer.TrainConfig(data_dir=str(tiny_shop), workers=0)
    lhs, rhs = parse_fields("query=1"), parse_fields("image_local=0.9,title=0.1")
    rows = trainer.training_rows(cfg, lhs + rhs)
    gradients = []
    for checkpointing in (False, True):
        encoder = load_encoder("default", device="cpu")
        if checkpointing:
            trainer.enable_grad_checkpointing(encoder.model, "none")
            assert encoder.model.visual.trunk.grad_checkpointing
            assert any(getattr(m, "gradient_checkpointing", False) for m in encoder.model.text.transformer.modules())
        towers = FullTowers(encoder, rows, lhs + rhs, ImageResolver(tiny_shop / "images"), seed=0, workers=0)
        objective = trainer.PairObjective(rows, lhs, rhs, cfg, encoder.model, torch.device("cpu"))
        [batch] = next(towers.loader([np.arange(8)], epoch=0))
        encoder.model.train()
        torch.manual_seed(0)  # the same dropout masks (checkpointing replays the RNG state in the recomputation)
        objective(towers.embed(batch), towers.indices(batch)).backward()
        gradients.append({n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.grad is not None})
    plain, recomputed = gradients
    assert plain.keys() == recomputed.keys() and len(plain) > 100
    assert all(torch.allclose(plain[n], recomputed[n], rtol=1e-4, atol=1e-7) for n in plain)
    with pytest.raises(ValueError, match="full fine-tuning"):
        trainer.enable_grad_checkpointing(encoder.model, "trunks")


def _torchrun(cfg: dict, config_file: Path) -> subprocess.CompletedProcess:
    """``python -m gclcore.train --config`` on 2 CPU ranks (gloo) under torchrun; fails with each rank's errors."""
    config_file.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "gclcore.train", "--config", str(config_file)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, _rank_errors(done.stderr)
    return done


def test_overlapped_gradient_sync_trains_the_weights_of_the_after_backward_sync(tmp_path, tiny_shop):
    """Full fine-tuning under torchrun (2 gloo ranks; images and texts through the towers, BatchNorm,
    dropout, the text model's unused pooler), 2 micro-batches per step: DistributedDataParallel's
    all-reduce during backward trains the same weights as one flat all-reduce after it."""
    weights = {}
    for mode in ("overlap", "after_backward"):
        cfg = dataclasses.asdict(config(tmp_path / mode, tiny_shop, freeze="none", batch_size=8, accum_freq=2,
                                        epochs=1, max_steps=3, lr=1e-4, eval_split="", workers=0, grad_sync=mode))
        _torchrun(cfg, tmp_path / f"{mode}.yaml")
        weights[mode] = _final_weights(Path(cfg["output_dir"]) / "model.pt")
    before = load_encoder("default", device="cpu").model.state_dict()
    a, b = weights["overlap"], weights["after_backward"]
    assert not torch.equal(a["visual.trunk.conv_stem.weight"], before["visual.trunk.conv_stem.weight"])  # trained
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_full_towers_embed_text_fields_in_one_call_like_separate_calls(tiny_shop):
    from gclcore.data import ImageResolver
    from gclcore.fusion import parse_fields

    encoder = load_encoder("default", device="cpu")
    cfg = trainer.TrainConfig(data_dir=str(tiny_shop), workers=0)
    lhs, rhs = parse_fields("query=1"), parse_fields("image_local=0.9,title=0.1")
    rows = trainer.training_rows(cfg, lhs + rhs)
    towers = FullTowers(encoder, rows, lhs + rhs, ImageResolver(tiny_shop / "images"), seed=0, workers=0)
    [batch] = next(towers.loader([np.arange(6)], epoch=0))
    encoder.model.eval()  # no dropout, BatchNorm running statistics: both paths are deterministic
    with torch.no_grad():
        embedded = towers.embed(batch)
        for name in ("query", "title"):
            alone = encoder.model.encode_text(batch[name], normalize=True)
            assert embedded[name].shape == (6, 256) and torch.allclose(embedded[name], alone, atol=1e-5)
        alone = encoder.model.encode_image(towers.pixels(batch, "image_local"), normalize=True)
        assert torch.allclose(embedded["image_local"], alone)


def test_convolutions_are_autotuned_in_a_gpu_training_step_and_restored_after(monkeypatch):
    """cuDNN's benchmark mode is on inside a GPU training step (one that fails included) and back as it was
    after it; on the CPU it is left alone."""
    gpu = torch.device("cuda")
    for before in (False, True):
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
        with pytest.raises(KeyError), autotuned_convolutions(gpu):
            assert torch.backends.cudnn.benchmark
            raise KeyError("a step failed")
        assert torch.backends.cudnn.benchmark is before
        with autotuned_convolutions(torch.device("cpu")):
            assert torch.backends.cudnn.benchmark is before


def test_full_towers_cut_a_clip_text_towers_padding(tiny_shop):
    """ViT-S-32's causal text tower: each text field's tokens arrive cut after the micro-batch's longest
    text (not open_clip's 77 positions), and embed as open_clip embeds them padded."""
    from gclcore.data import ImageResolver
    from gclcore.fusion import parse_fields

    encoder = load_encoder("ViT-S-32", pretrained="none", device="cpu")
    cfg = trainer.TrainConfig(data_dir=str(tiny_shop), workers=0)
    lhs, rhs = parse_fields("query=1"), parse_fields("image_local=0.9,title=0.1")
    rows = trainer.training_rows(cfg, lhs + rhs)
    towers = FullTowers(encoder, rows, lhs + rhs, ImageResolver(tiny_shop / "images"), seed=0, workers=0)
    [batch] = next(towers.loader([np.arange(6)], epoch=0))
    encoder.model.eval()
    with torch.no_grad():
        embedded = towers.embed(batch)
        for name in ("query", "title"):
            padded = encoder.tokenizer([str(v) for v in rows[name].astype(object).tolist()[:6]])
            longest = int((padded != 0).sum(1).max())
            assert longest < 20 and torch.equal(batch[name], padded[:, :longest])
            assert torch.allclose(embedded[name], encoder.model.encode_text(padded, normalize=True), atol=1e-6)


@pytest.mark.parametrize("objective", [{}, {"batching": "grouped", "ranking_loss": "listnet"},
                                       {"batching": "grouped", "ranking_loss": "lambda", "duplicates": "positives"}])
def test_train_step_accumulation_equals_the_full_batch_step(tmp_path, tiny_shop, objective):
    """train_step on its own: 4 micro-batches of 8 give the same update as one batch of 32 (GradCache),
    the logit scale included (its gradient is taken once, not once per micro-batch); with a ranking term
    over query-grouped batches too."""
    from gclcore.data import open_dataset
    from gclcore.fusion import parse_fields

    cfg = trainer.TrainConfig(data_dir=str(tiny_shop), workers=0, progress=False, **objective)
    lhs, rhs = parse_fields(cfg.lhs_fields), parse_fields(cfg.rhs_fields)
    rows = trainer.training_rows(cfg, lhs + rhs)
    sampler = (trainer.QueryGroupedBatches.for_rows(rows, 4, "uniform") if cfg.batching == "grouped"
               else trainer.epoch_batches)
    batch = sampler(len(rows), 32, seed=0, epoch=0)[0]
    updated = []
    for accum_freq in (1, 4):
        torch.manual_seed(0)  # the projection heads start from a seeded random init
        encoder = load_encoder("default", device="cpu")
        towers = build_towers("trunks", encoder, rows, lhs + rhs, open_dataset(tiny_shop),
                              cache_dir=str(tmp_path.parent / "features"), seed=0, workers=0, progress=False)
        objective = trainer.PairObjective(rows, lhs, rhs, cfg, encoder.model, torch.device("cpu"))
        params = towers.trainable() + [encoder.model.logit_scale]
        optimizer = torch.optim.SGD(params, lr=0.5)  # updates linear in the gradients: they must agree
        before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
        parts = next(towers.loader([batch], epoch=0, parts=accum_freq))
        assert len(parts) == accum_freq
        loss, taken = trainer.train_step(towers, objective, parts, optimizer,
                                         Precision.choose("fp32", torch.device("cpu")), params, grad_clip=1.0)
        assert torch.isfinite(loss) and taken
        after = encoder.model.state_dict()
        changed = [k for k in after if not torch.equal(after[k], before[k])]
        assert changed and all("proj" in k or "head" in k or k == "logit_scale" for k in changed)  # trunks frozen
        updated.append({k: after[k].clone() for k in changed})
    assert updated[0].keys() == updated[1].keys()
    assert all(torch.allclose(updated[0][k], updated[1][k], atol=1e-6) for k in updated[0])


def test_a_large_batch_step_with_every_memory_saving_equals_the_plain_step(tiny_shop):
    """Full fine-tuning of a ViT-S-32 CLIP (LayerNorm, no dropout: micro-batches see what the whole batch
    sees), one SGD step on 16 rows (updates linear in the gradients: Adam's first step would turn float
    noise on near-zero gradients into +-lr): 4 micro-batches (GradCache) + the tiled loss (blocks of 4) +
    gradient checkpointing of both towers give the weights of one dense, stored-activation step."""
    from gclcore.data import open_dataset
    from gclcore.fusion import parse_fields

    updated = []
    for accum_freq, loss_tile, checkpointing in ((1, 0, False), (4, 4, True)):
        cfg = trainer.TrainConfig(data_dir=str(tiny_shop), workers=0, loss_tile=loss_tile, model="ViT-S-32")
        lhs, rhs = parse_fields(cfg.lhs_fields), parse_fields(cfg.rhs_fields)
        rows = trainer.training_rows(cfg, lhs + rhs)
        torch.manual_seed(0)
        encoder = load_encoder("ViT-S-32", pretrained="none", device="cpu")
        if checkpointing:
            trainer.enable_grad_checkpointing(encoder.model, "none")
        towers = build_towers("none", encoder, rows, lhs + rhs, open_dataset(tiny_shop), cache_dir="", seed=0,
                              workers=0, progress=False)
        objective = trainer.PairObjective(rows, lhs, rhs, cfg, encoder.model, torch.device("cpu"))
        params = towers.trainable() + [encoder.model.logit_scale]
        optimizer = torch.optim.SGD(params, lr=0.5)
        before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
        parts = next(towers.loader([np.arange(16)], epoch=0, parts=accum_freq))
        loss, taken = trainer.train_step(towers, objective, parts, optimizer, Precision.choose("fp32", torch.device("cpu")),
                                         params, grad_clip=0.0)
        assert taken and torch.isfinite(loss)
        after = encoder.model.state_dict()
        assert sum(not torch.equal(after[k], before[k]) for k in after) > 100  # the step changed the towers
        updated.append({k: v.clone() for k, v in after.items()})
    plain, saving = updated
    assert all(torch.allclose(plain[k], saving[k], atol=1e-6) for k in plain)


class PathHashEncoder:
    """An embedding per text / resolved image path from its hash: the same item always embeds the same,
    whatever else is embedded with it (so two corpora can be compared exactly)."""

    def _embed(self, items):
        import hashlib

        rows = [np.random.default_rng(int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)).normal(size=16) for s in items]
        return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=1)

    def encode_text(self, texts):
        return self._embed([str(t) for t in texts])

    def encode_image_files(self, paths, resolver):
        return self._embed([str(resolver.resolve(p)) for p in paths])

    def checksum(self):
        return "path-hash"


DEV = dict(query_set="dev", top_k=100)


def test_dev_subcorpus_holds_the_judged_products_and_is_fixed(tiny_shop):
    from gclcore.data import open_dataset
    from gclcore.evaluate import dev_subcorpus, judged_products

    dataset, split = open_dataset(tiny_shop), "query_1_product_id_0"
    corpus = dataset.corpus(split)
    ids = corpus["product_id"].astype(str).to_numpy()
    judged = judged_products(dataset, split, **DEV)
    rows = dev_subcorpus(dataset, split, 60, **DEV)
    assert len(rows) == 60 and len(set(rows.tolist())) == 60 and (np.diff(rows) > 0).all()
    assert judged and judged <= set(ids[rows])  # every judged product (that the corpus holds)
    assert judged == set(ids) & {p for q in dataset.companion(split, "gt_dev").data.values() for p in q}
    assert rows.tolist() == dev_subcorpus(open_dataset(tiny_shop), split, 60, **DEV).tolist()  # the same rows
    assert dev_subcorpus(dataset, split, 60, seed=1, **DEV).tolist() != rows.tolist()
    for size in (0, len(corpus), 10 ** 9):  # the full corpus
        assert dev_subcorpus(dataset, split, size, **DEV).tolist() == list(range(len(corpus)))
    assert set(ids[dev_subcorpus(dataset, split, 5, **DEV)]) == judged  # more judged than size: all kept


def test_sub_corpus_metrics_equal_a_dataset_whose_corpus_is_the_sub_corpus(tmp_path, tiny_shop):
    import shutil

    from gclcore.data import open_dataset
    from gclcore.evaluate import dev_subcorpus, evaluate_split

    split, encoder = "query_1_product_id_0", PathHashEncoder()
    dataset = open_dataset(tiny_shop)
    rows = dev_subcorpus(dataset, split, 60, **DEV)
    sub = evaluate_split(encoder, dataset, split, tmp_path / "sub", corpus_subset=rows, progress=False, **DEV)
    # independently: a copy of the dataset whose corpus file holds only those products, in file order
    copy = Path(shutil.copytree(tiny_shop, tmp_path / "copy", ignore=shutil.ignore_patterns("images")))
    corpus_file = copy / dataset.files(split).corpus.name
    raw = json.loads(corpus_file.read_text())
    keep = set(dataset.corpus(split)["product_id"].astype(str).to_numpy()[rows])
    corpus_file.write_text(json.dumps({pid: item for pid, item in raw.items() if pid in keep}))
    alone = evaluate_split(encoder, open_dataset(copy, tiny_shop / "images"), split, tmp_path / "alone",
                           progress=False, **DEV)
    assert sub.metrics == alone.metrics and len(keep) == 60
    full = evaluate_split(encoder, dataset, split, tmp_path / "full", progress=False, **DEV)
    assert full.metrics != sub.metrics  # the distractors left out make a difference
    whole = evaluate_split(encoder, dataset, split, tmp_path / "whole", progress=False,
                           corpus_subset=dev_subcorpus(dataset, split, 10 ** 9, **DEV), **DEV)
    assert whole.metrics == full.metrics


def test_plots_say_which_corpus_the_dev_metrics_searched():
    from gclcore.report import dev_corpus_label, plot_training

    sub = pd.DataFrame({"step": [0, 10], "eval/NDCG@10": [0.1, 0.2], "eval/corpus_size": [20_000, 20_000],
                        "eval/corpus_total": [1_500_000, 1_500_000]})
    assert dev_corpus_label(sub) == "dev: sub-corpus of 20,000 of 1,500,000 products"
    assert dev_corpus_label(sub.assign(**{"eval/corpus_size": 1_500_000})) == "dev: full corpus, 1,500,000 products"
    assert dev_corpus_label(sub.drop(columns=["eval/corpus_size", "eval/corpus_total"])) == "dev"
    log = pd.concat([pd.DataFrame({"step": [5], "loss": [1.0], "lr": [1e-3], "samples_per_s": [9.0]}), sub])
    assert plot_training(log).axes[3].get_title() == "dev metrics: sub-corpus of 20,000 of 1,500,000 products"
    assert plot_training(log).axes[2].get_title() == "samples / s"  # a log from before data_wait was recorded
    waits = pd.DataFrame({"step": [1, 2, 3], "loss": 1.0, "lr": 1e-3, "samples_per_s": 9.0, "data_wait": [0.1, 0.4, 0.9]})
    assert plot_training(waits).axes[2].get_title() == "samples / s\n(median 40% of the time waiting for data)"


def test_long_runs_save_their_state_every_so_many_minutes(tmp_path, tiny_shop, monkeypatch):
    from gclcore import checkpoint

    now, saves, save_state = [0.0], [], checkpoint.save_state
    monkeypatch.setattr(checkpoint.SaveClock, "now", staticmethod(lambda: now[0]))

    def recorded(out, model, optimizer, scaler, state, cfg, ctx):
        saves.append(state.step)
        save_state(out, model, optimizer, scaler, state, cfg, ctx)

    def tick(step):
        now[0] += 25.0  # 25 s a step

    monkeypatch.setattr(checkpoint, "save_state", recorded)
    trainer.train(config(tmp_path, tiny_shop, epochs=2, max_steps=13, save_every=-1, save_every_minutes=1,
                         eval_split="", epoch_checkpoints=False), on_step=tick)
    assert saves == [4, 8, 12, 13]  # asked at log steps (every 2): due at step 4 (75 s), then 8, 12; the end


@pytest.fixture
def asked(monkeypatch) -> list[dict]:
    """What each run's disk check asked for (:func:`gclcore.checkpoint.bytes_to_write`'s answers), in order."""
    from gclcore import checkpoint

    answers, count = [], checkpoint.bytes_to_write
    monkeypatch.setattr(checkpoint, "bytes_to_write", lambda *args, **kw: answers.append(count(*args, **kw)) or answers[-1])
    return answers


def test_the_disk_check_counts_what_the_run_writes_and_refuses_a_full_disk_before_step_one(tmp_path, tiny_shop, asked,
                                                                                         monkeypatch, capsys):
    """The run's own files against the sizes its disk check asked for (tensor bytes: the files add only their
    pickled structure); with too little room the run stops before its first step, no checkpoint written."""
    from gclcore import checkpoint

    cfg = config(tmp_path, tiny_shop, epochs=2, save_every=-1, save_every_minutes=0, eval_split="")  # one save
    trainer.train(cfg)
    out = Path(cfg.output_dir)
    written = {"checkpoints/state-latest.pt": (out / "checkpoints" / "state-latest.pt").stat().st_size,
               "model.pt": (out / "model.pt").stat().st_size,
               "checkpoints/epoch_N.pt x 2": sum(p.stat().st_size for p in (out / "checkpoints").glob("epoch_*.pt"))}
    assert asked[0].keys() == written.keys()
    for name, size in written.items():
        assert asked[0][name] <= size <= asked[0][name] * 1.01 + 2**20, (name, asked[0][name], size)

    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: 2**20)
    fresh = dataclasses.replace(cfg, output_dir=str(tmp_path / "full-disk"))
    with pytest.raises(checkpoint.NotEnoughDiskSpace, match=r"full-disk is on a disk with 1 MiB free, and this run's "
                                                           r"checkpoints need at least [\d,]+ MiB there"):
        trainer.train(fresh)
    assert not list((tmp_path / "full-disk").rglob("*.pt"))
    given = tmp_path / "full-disk.yaml"  # the command line: one line, exit status 2
    given.write_text(yaml.safe_dump(dataclasses.asdict(fresh)))
    assert trainer.main(["--config", str(given)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {fresh.output_dir} is on a disk with 1 MiB free")


def test_the_disk_check_counts_two_states_at_once_for_a_run_that_saves_twice(tmp_path, tiny_shop, asked, monkeypatch):
    """Full fine-tuning saving every 2 of 4 steps: the second save writes a new state (weights + AdamW's two
    moments, 3x the weights) beside the first. The checkpoints' peak on disk, measured after every write,
    fits what the check asked for, and exceeds one state + model.pt."""

    cfg = config(tmp_path, tiny_shop, freeze="none", epochs=2, max_steps=4, save_every=2, save_every_minutes=0,
                 epoch_checkpoints=False, eval_split="")
    out, peak, save = Path(cfg.output_dir), [0], torch.save

    def save_and_measure(payload, fh):
        save(payload, fh)
        fh.flush()
        peak[0] = max(peak[0], sum(p.stat().st_size for p in out.rglob("*") if p.suffix in (".pt", ".tmp")))

    monkeypatch.setattr(torch, "save", save_and_measure)
    trainer.train(cfg)
    needed = asked[0]
    assert list(needed) == ["checkpoints/state-latest.pt x 2", "model.pt"]
    assert needed["checkpoints/state-latest.pt x 2"] / 2 + needed["model.pt"] < peak[0] <= sum(needed.values())


def test_keep_state_false_removes_the_state_only_after_the_tests(tmp_path, tiny_shop, monkeypatch, capsys):
    """keep_state=false: the state saved on the way (here every 2 steps) is there while the run tests its
    model, and gone when the run returns; model.pt stays, with the last step's weights."""
    from gclcore import evaluate

    cfg = config(tmp_path, tiny_shop, epochs=2, max_steps=4, save_every=2, keep_state=False, eval_split="",
                 epoch_checkpoints=False, test_splits="query_0_product_id_0", eval_top_k=10)
    state_file, tested = Path(cfg.output_dir) / "checkpoints" / "state-latest.pt", []
    real_evaluate = evaluate.evaluate

    def evaluate_and_look(*args, **kwargs):
        tested.append(torch.load(state_file, weights_only=False)["step"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate_and_look)
    result = trainer.train(cfg)
    assert tested == [4] and not state_file.parent.exists() and result.test is not None  # nor its empty folder
    assert torch.load(result.checkpoint, weights_only=False)["step"] == 4
    capsys.readouterr()
    trainer.train(cfg, resume="latest")  # nothing to resume: said, not silent
    assert f"no saved state to resume in {cfg.output_dir}, though a run ended there (keep_state=false): training " \
           f"from step 0" in capsys.readouterr().out


def test_resume_refuses_a_state_of_another_configuration(tmp_path, tiny_shop):
    cfg = config(tmp_path, tiny_shop, epochs=2, max_steps=4, save_every=2, eval_top_k=10)
    trainer.train(cfg)
    with pytest.raises(ValueError, match=r"another configuration \(stw: 'linear' -> 'constant'\).*resume=''"):
        trainer.train(cfg, resume="latest", stw="constant")
    assert json.loads((Path(cfg.output_dir) / "config.json").read_text())["stw"] == "linear"  # the record stays
    longer = trainer.train(cfg, resume="latest", max_steps=6, progress=False)  # how long it runs may change
    assert longer.steps == 6 and longer.history["step"].tolist()[:2] == [2, 4]


REPO = Path(__file__).resolve().parents[1]


def _make_dry_run(target: str, *variables: str) -> list[str]:
    done = subprocess.run(["make", "-n", "-B", target, "BOOK_NAME=dry", *variables], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.splitlines()


def test_real_data_has_no_cell_time_limit_and_resumes():
    """`make book DATA_DIR=<real data>`: notebook 03's multi-hour training cell gets no papermill time
    limit, and every run continues its saved state and keeps it when it ends (a later make reuses it); the
    embedded synthetic shop keeps 30 min a cell, retrains, and drops the states it never reads again."""
    import papermill

    real = "DATA_DIR=/data/marqo-gs-dataset/marqo_gs_full_10m"
    papermill_real = [line for line in _make_dry_run("build/dry/03_train.ipynb", real) if "papermill" in line]
    assert len(papermill_real) == 1 and "--execution-timeout" not in papermill_real[0]
    assert "-p resume 'latest'" in papermill_real[0] and "-p keep_state 'True'" in papermill_real[0]
    runs_real = [line for line in _make_dry_run("build/dry/runs/.done", real) if "experiments run" in line]
    assert len(runs_real) == 1 and "--set resume=latest" in runs_real[0] and "--set keep_state=True" in runs_real[0]
    papermill_synth = [line for line in _make_dry_run("build/dry/03_train.ipynb") if "papermill" in line]
    assert "--execution-timeout 1800" in papermill_synth[0] and "-p resume ''" in papermill_synth[0]
    assert "-p keep_state 'False'" in papermill_synth[0]
    runs_synth = [line for line in _make_dry_run("build/dry/runs/.done") if "experiments run" in line]
    assert "--set resume= " in runs_synth[0] and "--set keep_state=False" in runs_synth[0]
    declared = papermill.inspect_notebook(str(REPO / "notebooks" / "03_train.ipynb"))
    assert declared["resume"]["default"] == '"latest"'  # papermill or JupyterLab by hand: a re-run continues
    assert declared["keep_state"]["default"] == "True"  # or reuses the ended run


@pytest.mark.slow
def test_text_only_training_of_a_pretrained_sentence_encoder(tmp_path, tiny_shop):
    """all-MiniLM-L6-v2 (hf:DIR) fully fine-tuned query -> title with GCL weights: the loss falls, dev
    nDCG@10 rises from the zero-shot model's, and model.pt reloads for evaluation with the same numbers."""
    from gclcore.evaluate import evaluate_split
    from gclcore.fusion import Field
    from gclcore.models import minilm_path

    model = "hf:" + minilm_path()
    cfg = config(tmp_path, tiny_shop, model=model, rhs_fields="title=1", lr=1e-4, warmup_steps=0, batch_size=16,
                 epochs=2, max_steps=24, eval_every=24, log_every=1, save_every=-1)
    result = trainer.train(cfg)
    recorded = json.loads((Path(cfg.output_dir) / "config.json").read_text())
    assert recorded["freeze"] == "none"                            # a text tower is fine-tuned whole
    losses = result.history["loss"].dropna().to_numpy()
    assert losses[-6:].mean() < losses[:6].mean()                # per-batch losses are noisy (weights vary)
    ndcg = result.evaluations.set_index("step")["eval/NDCG@10"]
    assert ndcg.loc[24] > ndcg.loc[0] + 0.05                       # 0.34 zero-shot -> about 0.5
    reloaded = load_encoder(model, str(result.checkpoint), device="cpu")
    again = evaluate_split(reloaded, tiny_shop, cfg.eval_split, tmp_path / "again", rhs_fields=(Field("title"),),
                           top_k=cfg.eval_top_k, query_set=cfg.eval_query_set, progress=False, cache_dir=False)
    assert again.metrics["NDCG@10"] == pytest.approx(ndcg.loc[24], abs=1e-4)


@pytest.mark.slow
def test_text_only_training_of_an_open_clip_hf_config(tmp_path, tiny_shop):
    """The route of the published xlm-roberta-base-ViT-B-32 text rows: open_clip's own model config, its
    Hugging Face text model from a local folder (``hf_dir``; here a tiny random XLM-RoBERTa), trained
    text-only query -> title. The image tower is built but never run; the checkpoint reloads for evaluation."""
    import open_clip
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    from gclcore.evaluate import evaluate_split
    from gclcore.fusion import Field
    from gclcore.models import minilm_path

    xlmr = tmp_path / "tiny-xlm-roberta"
    torch.manual_seed(0)
    XLMRobertaModel(XLMRobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, pad_token_id=0)).save_pretrained(xlmr)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(xlmr)  # its pad id is 0, as configured above
    config_file = Path(open_clip.__file__).parent / "model_configs" / "xlm-roberta-base-ViT-B-32.json"
    cfg = config(tmp_path, tiny_shop, model=str(config_file), hf_dir=str(xlmr), pretrained="none",
                 rhs_fields="title=1", lr=1e-4, batch_size=16, epochs=1, max_steps=2, log_every=1, save_every=-1)
    result = trainer.train(cfg)
    assert json.loads((Path(cfg.output_dir) / "config.json").read_text())["freeze"] == "none"
    assert np.isfinite(result.history["loss"].dropna()).all()
    reloaded = load_encoder(str(config_file), str(result.checkpoint), device="cpu", hf_dir=xlmr)
    assert type(reloaded.model.text.transformer).__name__ == "XLMRobertaModel"
    again = evaluate_split(reloaded, tiny_shop, cfg.eval_split, tmp_path / "again", rhs_fields=(Field("title"),),
                           top_k=cfg.eval_top_k, query_set=cfg.eval_query_set, progress=False, cache_dir=False)
    trained = result.evaluations.set_index("step")["eval/NDCG@10"]
    assert again.metrics["NDCG@10"] == pytest.approx(trained.loc[2], abs=1e-4)


def test_text_prefixes_reach_the_training_tokens(tiny_shop):
    from gclcore.fusion import Field
    from gclcore.models import minilm_path
    from gclcore.towers import PairRows, field_prefixes

    encoder = load_encoder("hf:" + minilm_path(), device="cpu", query_prefix="query: ", document_prefix="passage: ")
    prefixes = field_prefixes(encoder, (Field("query"),), (Field("title"),))
    assert prefixes == {"query": "query: ", "title": "passage: "}
    rows = trainer.open_dataset(tiny_shop).rows("in_domain").head(3)
    item = PairRows(rows, (Field("query"), Field("title")), encoder.tokenizer, None, None, 0, prefixes)[1]
    assert torch.equal(item["query"], encoder.tokenizer(["query: " + str(rows["query"].iloc[1])])[0])
    assert torch.equal(item["title"], encoder.tokenizer(["passage: " + str(rows["title"].iloc[1])])[0])


def test_the_loader_cuts_a_global_batch_into_micro_batches_of_the_same_items(tiny_shop):
    """Micro-batches (the DataLoader's unit under accum_freq) hold the global batch's rows in order, cut as
    torch.chunk cuts, with the same tokens and augmented pixels as the whole batch loaded at once."""
    from gclcore.data import ImageResolver
    from gclcore.fusion import parse_fields

    encoder = load_encoder("default", device="cpu")
    lhs, rhs = parse_fields("query=1"), parse_fields("image_local=0.9,title=0.1")
    rows = trainer.training_rows(trainer.TrainConfig(data_dir=str(tiny_shop), workers=0), lhs + rhs)
    towers = FullTowers(encoder, rows, lhs + rhs, ImageResolver(tiny_shop / "images"), seed=0, workers=0)
    global_batch = np.random.default_rng(0).permutation(len(rows))[:10]
    [whole] = next(towers.loader([global_batch], epoch=1))
    parts = next(towers.loader([global_batch], epoch=1, parts=3))
    assert [len(p["index"]) for p in parts] == [4, 4, 2]
    assert trainer.batch_indices(towers, parts).tolist() == global_batch.tolist()
    assert torch.equal(torch.cat([p["image_local"] for p in parts]), whole["image_local"])
    # a Hugging Face tower's tokens arrive cut after each micro-batch's longest text: only padding is cut
    pad = encoder.model.text.config.pad_token_id
    for name in ("query", "title"):
        padded = torch.stack([towers.dataset[i][name] for i in global_batch.tolist()])
        assert whole[name].shape[1] < padded.shape[1]
        for part, rows in zip(parts, torch.split(padded, [4, 4, 2])):
            width = part[name].shape[1]
            assert torch.equal(part[name], rows[:, :width]) and (rows[:, width:] == pad).all()
            assert (rows[:, width - 1] != pad).any()  # the longest text's last token is kept


def test_a_replayed_random_state_draws_the_same_dropout_masks():
    """GradCache's second pass replays the first pass's random state (RandomState), so dropout is the same."""
    layer = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    state = trainer.RandomState(torch.device("cpu"))
    first = layer(x)
    with state.replayed():
        replayed = layer(x)
    assert torch.equal(first, replayed)
    assert not torch.equal(layer(x), first)  # outside the replay the draws go on


def test_the_loader_ships_uint8_pixels_that_normalise_on_the_device_to_the_whole_transform(tiny_shop):
    """Workers end at uint8 pixels (ToTensor + Normalize cut off, gclcore.pixels); normalised on the device
    they are bitwise the pixels of open_clip's whole training transform under the same per-row seed."""
    from gclcore.data import ImageResolver
    from gclcore.fusion import parse_fields
    from gclcore.pixels import DeviceNormalize

    encoder = load_encoder("default", device="cpu")
    fields = parse_fields("query=1") + parse_fields("image_local=1")
    rows = trainer.training_rows(trainer.TrainConfig(data_dir=str(tiny_shop), workers=0), fields)
    resolver = ImageResolver(tiny_shop / "images")
    towers = FullTowers(encoder, rows, fields, resolver, seed=3, workers=0)
    assert isinstance(towers.normalise, DeviceNormalize)
    picked = np.array([5, 0, 17, 9])
    [batch] = next(towers.loader([picked], epoch=2))
    assert batch["image_local"].dtype == torch.uint8 and batch["image_local"].shape[1] == 3
    expected = []
    for i in picked.tolist():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((3, 2, i)) & 0x7FFFFFFF)
            expected.append(encoder.preprocess_train(resolver.load(rows["image_local"][i])[0]))
    assert torch.equal(towers.pixels(batch, "image_local"), torch.stack(expected))


def test_a_steps_micro_batches_are_released_before_the_next_batch_arrives(tmp_path, tiny_shop, monkeypatch):
    """The loop drops a step's micro-batches (on a GPU: its pixels) before the loader yields the next
    global batch, so two global batches never sit on the device together."""
    import weakref

    alive_when_yielding = []
    original = FullTowers._arrived

    def tracked(self, batch):
        arrived = original(self, batch)
        alive_when_yielding.append(sum(ref() is not None for ref in refs))
        refs.append(weakref.ref(arrived["image_local"]))
        return arrived

    refs, alive_after_step = [], []
    monkeypatch.setattr(FullTowers, "_arrived", tracked)
    trainer.train(config(tmp_path, tiny_shop, freeze="none", batch_size=8, accum_freq=2, epochs=1, max_steps=3,
                         eval_split="", workers=0),
                  on_step=lambda step: alive_after_step.append(sum(ref() is not None for ref in refs)))
    # micro-batches of one step: the first sees none alive, the second sees the first; never the last step's
    assert alive_when_yielding == [0, 1] * 3
    # nor are they held after their step (through evaluation and checkpoints: here, on_step)
    assert alive_after_step == [0, 0, 0]
