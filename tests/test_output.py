"""The output folder of a run: nothing lost, nothing half-written, no empty folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_lens_ext.errors import CliError, TrainingInterrupted
from sae_lens_ext.run.output import RunOutput


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def previous_run(folder: Path) -> None:
    (folder / "checkpoints" / "100").mkdir(parents=True)
    torch.save({"n_training_samples": 100}, folder / "checkpoints" / "100" / "trainer_state.pt")
    (folder / "cfg.json").write_text('{"old": true}')
    (folder / "sae_weights.safetensors").write_bytes(b"old weights")
    (folder / "training_log.jsonl").write_text('{"step": 1}\n')
    (folder / "plots").mkdir()
    (folder / "plots" / "training_curves.png").write_bytes(b"png")


def test_a_refused_or_failed_run_leaves_no_folder(tmp_path: Path) -> None:
    out = RunOutput(tmp_path / "a" / "b" / "run", tmp_path / "a" / "b" / "run" / "checkpoints",
                    overwrite=False, resume=False)  # fmt: skip
    out.check()
    assert not (tmp_path / "a").exists()  # check() writes nothing
    with pytest.raises(RuntimeError), out.running():
        out.log_path.write_text('{"step": 0}\n')
        raise RuntimeError("diverged")
    assert list(tmp_path.iterdir()) == []  # every folder this run created is gone


def test_overwrite_keeps_the_previous_run_until_the_new_one_succeeds(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    previous_run(folder)
    before = tree(folder)
    failing = RunOutput(folder, folder / "checkpoints", overwrite=True, resume=False)
    with pytest.raises(FloatingPointError), failing.running():
        assert not (folder / "cfg.json").exists()  # moved aside while the new run trains
        failing.log_path.write_text('{"step": 0, "new": true}\n')
        raise FloatingPointError("loss is not finite")
    assert tree(folder) == before  # byte for byte, checkpoints included

    succeeding = RunOutput(folder, folder / "checkpoints", overwrite=True, resume=False)
    with succeeding.running():
        succeeding.log_path.write_text('{"step": 0, "new": true}\n')
        with succeeding.staging() as tmp:
            (tmp / "sae_weights.safetensors").write_bytes(b"new weights")
            (tmp / "cfg.json").write_text('{"new": true}')
    assert sorted(tree(folder)) == ["cfg.json", "sae_weights.safetensors", "training_log.jsonl"]
    assert (folder / "cfg.json").read_text() == '{"new": true}'


def test_an_interrupted_run_keeps_its_checkpoint_and_log(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    out = RunOutput(folder, folder / "checkpoints", overwrite=False, resume=False)
    with pytest.raises(CliError) as err, out.running():
        out.log_path.write_text('{"step": 3}\n')
        (folder / "checkpoints" / "3").mkdir(parents=True)
        raise TrainingInterrupted(3, folder / "checkpoints" / "3")
    assert err.value.exit_code == 130
    assert out.log_path.exists() and (folder / "checkpoints" / "3").is_dir()


def test_resume_and_refusals(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    previous_run(folder)
    (folder / "cfg.json").unlink()  # checkpoints but no final SAE: an interrupted run
    with pytest.raises(CliError, match="holds checkpoints of an earlier run: add --resume"):
        RunOutput(folder, folder / "checkpoints", overwrite=False, resume=False).check()
    previous_run_state = folder / "checkpoints" / "100"
    resume = RunOutput(folder, folder / "checkpoints", overwrite=False, resume=True)
    assert resume.check() == previous_run_state
    with pytest.raises(CliError, match="--resume: no checkpoint in"):
        RunOutput(tmp_path / "new", tmp_path / "new" / "ck", overwrite=False, resume=True).check()


def test_resume_drops_a_torn_last_log_line_and_refuses_a_broken_one(tmp_path: Path) -> None:
    """A run killed while writing a log line leaves it half-written: ``--resume`` drops it
    with the lines past its checkpoint; a bad line elsewhere is one line naming the file."""
    from sae_lens_ext.run.output import read_log
    from sae_lens_ext.run.progress import truncate_log

    log = tmp_path / "training_log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.raises(CliError, match=r"training_log.jsonl: line 3 is not valid JSON"):
        read_log(log)
    truncate_log(log, max_step=1)
    assert read_log(log) == [{"step": 1, "loss": 2.0}]
    log.write_text('{"step": 1}\n{"ste\n{"step": 2}\n')
    with pytest.raises(CliError, match=r"line 2 is not valid JSON"):
        truncate_log(log, max_step=2)
    assert log.read_text() == '{"step": 1}\n{"ste\n{"step": 2}\n'  # left as it was
