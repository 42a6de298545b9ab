"""The inference save appears whole or not at all, as a folder, and cleans up after itself."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

import orthosae_plugin.training as training
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from benchmarks import kill_loop
from orthosae_plugin import saving


def trained_sae(seed: int, steps: int) -> OrthoContrastiveTrainingSAE:
    torch.manual_seed(seed)
    sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=8, d_sae=16, ortho_anneal_steps=10))
    sae.n_steps_trained.fill_(steps)
    with torch.no_grad():
        sae.b_dec.fill_(float(steps))  # so that a reader can tell which save a weights file is from
    return sae


def assert_one_save(path):
    """cfg.json and the weights at ``path`` come from the same save."""
    steps = json.loads((path / "cfg.json").read_text())["metadata"]["training_steps"]
    assert torch.all(load_file(path / "sae_weights.safetensors")["b_dec"] == float(steps)), steps
    return steps


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def previous_save(tmp_path):
    path = tmp_path / "sae"
    trained_sae(0, steps=111).save_inference_model(path)
    return path


def test_a_save_is_a_folder_that_saelens_loads(tmp_path):
    path = tmp_path / "new" / "sae"
    weights, cfg = trained_sae(0, steps=7).save_inference_model(path)
    assert (weights, cfg) == (path / "sae_weights.safetensors", path / "cfg.json")
    assert json.loads(cfg.read_text())["metadata"]["training_steps"] == 7
    assert SAE.load_from_disk(path).cfg.d_sae == 16
    assert leftovers(path.parent) == []


@pytest.mark.parametrize("fail_at", ["weights", "cfg"])
def test_a_failed_save_leaves_the_previous_one_intact_and_no_temporaries(previous_save, monkeypatch, fail_at):
    before = snapshot(previous_save)

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    if fail_at == "weights":
        monkeypatch.setattr(training, "save_file", boom)
    else:
        real_save_file = training.save_file

        def weights_then_boom(tensors, filename, *args, **kwargs):
            real_save_file(tensors, filename, *args, **kwargs)  # the weights are written whole...
            raise OSError("killed before cfg.json (simulated)")  # ...then the save dies

        monkeypatch.setattr(training, "save_file", weights_then_boom)
    with pytest.raises(OSError, match="simulated"):
        trained_sae(1, steps=222).save_inference_model(previous_save)
    assert snapshot(previous_save) == before
    assert leftovers(previous_save.parent) == []


def test_a_failure_at_the_swap_leaves_the_previous_save_intact(previous_save, monkeypatch):
    before = snapshot(previous_save)

    def boom(*args):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(saving, "_swap_into_place", boom)
    with pytest.raises(OSError, match="simulated"):
        trained_sae(1, steps=222).save_inference_model(previous_save)
    assert snapshot(previous_save) == before
    assert leftovers(previous_save.parent) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_new_save_replaces_the_previous_one_whole(previous_save, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(saving, "_exchange", lambda a, b: False)
    (previous_save / "sparsity.safetensors").write_bytes(b"old run's sparsity")
    (previous_save / "notes.txt").write_text("the user's own file")
    new = trained_sae(1, steps=222)
    new.save_inference_model(previous_save)
    cfg = json.loads((previous_save / "cfg.json").read_text())
    assert cfg["metadata"]["training_steps"] == 222
    torch.testing.assert_close(load_file(previous_save / "sae_weights.safetensors")["W_dec"], new.W_dec.detach())
    assert not (previous_save / "sparsity.safetensors").exists()  # it described the old save
    assert (previous_save / "notes.txt").read_text() == "the user's own file"
    assert leftovers(previous_save.parent) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("interrupted_rename", [1, 2])
def test_a_save_interrupted_at_a_rename_never_pairs_files_of_two_saves(previous_save, monkeypatch, exchange, interrupted_rename):
    # Before: per-file renames; dying between them left the new weights beside the old cfg.json.
    if not exchange:
        monkeypatch.setattr(saving, "_exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == interrupted_rename:
            raise OSError("killed at a rename (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        trained_sae(1, steps=222).save_inference_model(previous_save)
    except OSError:
        pass
    monkeypatch.setattr(os, "replace", real_replace)
    assert assert_one_save(previous_save) in (111, 222)


def test_a_save_into_an_existing_empty_folder_works(tmp_path):
    (tmp_path / "sae").mkdir()
    trained_sae(0, steps=3).save_inference_model(tmp_path / "sae")
    assert SAE.load_from_disk(tmp_path / "sae").cfg.d_sae == 16


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "sae").write_text("not a folder")
    with pytest.raises(ValueError, match=r"path=.* is invalid: it is a file"):
        trained_sae(0, steps=3).save_inference_model(tmp_path / "sae")


def test_temporaries_of_a_killed_save_are_removed_by_the_next_save(previous_save):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = previous_save.parent / f".sae.saving-{dead.stdout.strip()}-deadbeef"
    abandoned.mkdir()
    (abandoned / "sae_weights.safetensors").write_bytes(b"\0" * 1024)
    # A save never moves a user's file into a temporary, so every temporary of a dead
    # process goes, whatever it holds (before: one holding any other file was kept forever).
    other = previous_save.parent / f".sae.saving-{dead.stdout.strip()}-0123abcd"
    other.mkdir()
    (other / "weights.partial").write_bytes(b"\0" * 1024)
    trained_sae(1, steps=5).save_inference_model(previous_save)
    assert not abandoned.exists()
    assert not other.exists()
    assert leftovers(previous_save.parent) == []


def test_a_kill_during_a_save_never_leaves_a_mixed_folder(tmp_path):
    """kill -9 a process that saves in a loop: every moment, cfg.json and the weights at
    the path come from the same save."""
    path = tmp_path / "sae"
    script = f"""
import sys, torch
sys.path.insert(0, {str(os.getcwd())!r})
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=64, d_sae=1024, ortho_anneal_steps=10))
for step in range(1, 10**6):
    sae.n_steps_trained.fill_(step)
    with torch.no_grad():
        sae.b_dec.fill_(float(step))
    sae.save_inference_model({str(path)!r})
    print(step, flush=True)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(8):  # let it replace the save a few times, then kill it mid-way
        process.stdout.readline()
    process.kill()
    process.wait()
    assert_one_save(path)


def test_a_save_dying_among_its_renames_never_moves_or_hides_a_users_file(previous_save, monkeypatch):
    # Before: the folder swap put the user's notes.txt into the hidden folder of the
    # previous save, and a kill before it was moved back left it there for good.
    (previous_save / "notes.txt").write_text("the user's own file")
    real_replace, calls = os.replace, []

    def dies_at_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        trained_sae(1, steps=222).save_inference_model(previous_save)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (previous_save / "notes.txt").read_text() == "the user's own file"
    assert not (previous_save / "cfg.json").exists() or assert_one_save(previous_save) in (111, 222)
    trained_sae(2, steps=333).save_inference_model(previous_save)
    assert assert_one_save(previous_save) == 333
    assert (previous_save / "notes.txt").read_text() == "the user's own file"
    assert leftovers(previous_save.parent) == []


def test_a_save_into_a_symlinked_folder_writes_through_the_link(tmp_path):
    # Before: the link was replaced by a real folder, the user's file moved out of v1, and
    # the save raised `OSError: Cannot call rmtree on a symbolic link`.
    trained_sae(0, steps=111).save_inference_model(tmp_path / "v1")
    (tmp_path / "v1" / "notes.txt").write_text("the user's own file")
    (tmp_path / "latest").symlink_to("v1")
    trained_sae(1, steps=222).save_inference_model(tmp_path / "latest")
    assert (tmp_path / "latest").is_symlink() and os.readlink(tmp_path / "latest") == "v1"
    assert assert_one_save(tmp_path / "v1") == 222
    assert (tmp_path / "v1" / "notes.txt").read_text() == "the user's own file"
    assert leftovers(tmp_path) == []
    (tmp_path / "to_file").symlink_to("v1/notes.txt")
    with pytest.raises(ValueError, match=r"path=.*to_file' is invalid: it is a link to the file"):
        trained_sae(2, steps=3).save_inference_model(tmp_path / "to_file")


def test_a_kill_between_the_fallbacks_two_renames_is_restored_by_the_next_save(previous_save):
    """Without renameat2 the previous save is renamed aside, then the new one in; a kill
    between them left no SAE at the path and a `.replaced-*` folder never restored."""
    script = f"""
import os, sys, torch
sys.path.insert(0, {os.getcwd()!r})
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig, saving
saving._exchange = lambda a, b: False
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    if ".replaced-" in str(dst):
        os._exit(9)  # killed between the two renames
os.replace = replace
sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=8, d_sae=16, ortho_anneal_steps=10))
sae.save_inference_model({str(previous_save)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr
    assert not previous_save.exists()
    assert [name for name in leftovers(previous_save.parent) if ".replaced-" in name]
    saving.recover(previous_save)  # what the next save does first
    assert assert_one_save(previous_save) == 111
    trained_sae(1, steps=222).save_inference_model(previous_save)
    assert assert_one_save(previous_save) == 222
    assert leftovers(previous_save.parent) == []


@pytest.mark.parametrize("layout", ["user_file"])  # the fallback: the test above; a plain folder: the loop test
def test_kill_9_at_a_random_moment_of_a_save_then_one_more_save(tmp_path, layout):
    """kill -9 a process that saves in a loop (benchmarks/kill_loop.py, one kill), then
    save from a fresh process: no mixed save, the user's file untouched, no temporaries."""
    row = kill_loop.inference_kill(tmp_path / layout, layout, random.Random(0), max_delay=0.5)
    assert row["killed"]
    assert row["after_kill"]["save"] in ("whole", "none")
    assert row["after_next_save"]["save"] == "whole"
    assert row["after_kill"].get("user_file_kept", True) and row["after_next_save"].get("user_file_kept", True)
    assert row["temporaries_after_next_save"] == []
    assert row["next_save_error"] is None


def test_a_text_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "results" / "run.json"
    assert saving.write_file_atomically(path, '{"a": 1}') == path  # the folder is made
    saving.write_file_atomically(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(saving.os, "fsync", boom)  # fails after the new text is written, before the rename
    with pytest.raises(OSError, match="disk full"):
        saving.write_file_atomically(path, '{"a": 3, "half": ')
    assert path.read_text() == '{"a": 2}'  # the previous file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]  # no temporary left
