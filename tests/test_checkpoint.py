"""Checkpoint writes on a disk that runs out: a clear error naming the file, its size and the free space."""
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gclcore import checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_a_write_cut_short_raises_a_checkpoint_error_and_keeps_the_previous_file(tmp_path):
    """A real short write: the file size limit (RLIMIT_FSIZE, as a full disk does) stops torch.save at 1 MiB
    of a 4 MiB payload, which torch reports only as 'unexpected pos'. The error names the file and sizes;
    the previous checkpoint stays loadable and no partial file is left."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from gclcore import checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        checkpoint.save_file({str(tmp_path / "state.pt")!r}, {{"w": torch.arange(10.0)}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        checkpoint.save_file({str(tmp_path / "state.pt")!r}, {{"w": torch.zeros(1 << 20)}})
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gclcore.checkpoint.CheckpointWriteError: could not write "), done.stderr
    assert str(tmp_path / "state.pt") in last and "It holds 4 MiB of tensors" in last, last
    assert "unexpected pos" in last or "File too large" in last, last  # torch's own words stay in the message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert torch.equal(torch.load(tmp_path / "state.pt")["w"], torch.arange(10.0))


def test_a_failed_write_on_a_full_disk_says_so_and_how_to_go_on(tmp_path, monkeypatch):
    def full_disk(payload, fh):
        fh.write(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 91424768 vs 91424660")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: 3 * 2**20)
    with pytest.raises(checkpoint.CheckpointWriteError) as raised:
        checkpoint.save_file(tmp_path / "checkpoints" / "state-latest.pt", {"model": {"w": torch.zeros(2**20)}})
    message = str(raised.value)
    assert "unexpected pos 91424768" in message and "It holds 4 MiB of tensors and its disk has 3 MiB free" in message
    assert "too little. Free space there, or give the run another output_dir" in message
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_tensor_bytes_counts_the_tensors_of_a_nested_payload():
    payload = {"model": {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16)},
               "optimizer": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(7, dtype=torch.float64)}},
                             "param_groups": [{"lr": 0.1, "params": [0]}]},
               "rng": (torch.zeros(16, dtype=torch.uint8), "python state"), "step": 3}
    assert checkpoint.tensor_bytes(payload) == 12 * 4 + 5 * 2 + 4 + 7 * 8 + 16


def test_bytes_to_write_counts_weights_moments_state_copies_and_epoch_copies():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.BatchNorm1d(20))
    trained = list(model[0].parameters())  # the batch norm frozen: no moments for it
    weights = (10 * 20 + 20 + 20 + 20 + 20 + 20) * 4 + 8  # linear; bn weight, bias, running mean / var; count
    moments = 2 * (10 * 20 + 20) * 4
    assert checkpoint.bytes_to_write(model, trained, 0) == {"checkpoints/state-latest.pt": weights + moments,
                                                           "model.pt": weights}
    assert checkpoint.bytes_to_write(model, trained, 3, state_copies=2) == {
        "checkpoints/state-latest.pt x 2": 2 * (weights + moments), "model.pt": weights,
        "checkpoints/epoch_N.pt x 3": 3 * weights}


def test_disk_shortfall_asks_for_1_percent_and_16_mib_more_and_names_every_file(tmp_path, monkeypatch):
    needed = {"checkpoints/state-latest.pt": 300 * 2**20, "model.pt": 100 * 2**20}
    required = 400 * 2**20 + 4 * 2**20 + 16 * 2**20  # + 1% + 16 MiB
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: required)
    assert checkpoint.disk_shortfall(tmp_path, needed) is None
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: required - 2**20)
    assert checkpoint.disk_shortfall(tmp_path, needed) == (
        f"{tmp_path} is on a disk with 419 MiB free, and this run's checkpoints need at least 420 MiB there "
        f"(checkpoints/state-latest.pt 300 MiB, model.pt 100 MiB; and 1% + 16 MiB for the files' structure). "
        f"Free space on that disk, give the run another output_dir, or keep fewer files (epoch_checkpoints=false; "
        f"one state, at the end only: save_every=-1 save_every_minutes=0)")


def test_an_error_of_the_payload_not_the_file_passes_through_unchanged(tmp_path, monkeypatch):
    def device_error(payload, fh):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(checkpoint.torch, "save", device_error)
    with pytest.raises(RuntimeError, match="^CUDA error: an illegal memory access") as raised:
        checkpoint.save_file(tmp_path / "model.pt", {"w": torch.zeros(3)})
    assert type(raised.value) is RuntimeError and list(tmp_path.iterdir()) == []


def test_a_failed_write_whose_disk_cannot_be_asked_still_names_the_file(tmp_path, monkeypatch):
    def short_write(payload, fh):
        raise OSError(28, "No space left on device")

    def stale_mount(path):
        raise OSError(116, "Stale file handle")

    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    monkeypatch.setattr(checkpoint, "free_bytes", stale_mount)
    with pytest.raises(checkpoint.CheckpointWriteError, match=(
            r"could not write .*model.pt: \[Errno 28\] No space left on device. It holds 0 MiB of tensors and "
            r"its disk's free space is unknown$")):
        checkpoint.save_file(tmp_path / "model.pt", {"w": torch.zeros(3)})


def test_free_bytes_of_a_folder_not_made_yet_asks_its_nearest_existing_parent(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: asked.append(path) or SimpleNamespace(free=7))
    assert checkpoint.free_bytes(tmp_path / "not" / "made") == 7 and asked == [tmp_path]
