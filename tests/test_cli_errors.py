"""Walk the bad-input table of ``docs/cli.md``: every row, through the real entry point, gives
its exit code and its one-line message, and nothing is written anywhere."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.helpers import REPO, TinyLM, run_python

pytestmark = pytest.mark.e2e

TRAIN = (
    "sae-lens train --model_class_name AutoModelForCausalLM --model_name ./my-model "
    "--hook_name transformer.h.0 --d_in 64 --dataset_path ./my-text --streaming False "
    "--is_dataset_tokenized False --context_size 32 --output_path runs/new"
)
ROW = re.compile(r"^\| (`+)(?P<command>.+?)\1 \| (?P<exit>\d+) \| (`+)(?P<message>.+?)\4 \|$")


def error_table() -> list[tuple[str, int, str]]:
    """``(command, exit code, message)`` rows of the table under docs/cli.md's "## Errors"."""
    text = (REPO / "docs" / "cli.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            command = match["command"].strip().replace("TRAIN", TRAIN, 1)
            rows.append((command, int(match["exit"]), match["message"].strip()))
    return rows


def test_the_table_is_parsed_and_the_train_shorthand_is_what_the_docs_say():
    rows = error_table()
    assert len(rows) >= 30
    text = " ".join((REPO / "docs" / "cli.md").read_text().split())
    assert f"`TRAIN` stands for `{TRAIN}`" in text


RUN = """
import contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")
from sae_lens_ext.cli import cli
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(args, prog_name="sae-lens")
            code = 0
        except SystemExit as exc:
            code = exc.code
    out.append([code, err.getvalue()])
print("RESULTS", json.dumps(out))
"""


def prepare(root: Path, tiny: TinyLM) -> None:
    """The files the table's commands name."""
    (root / "my-model").symlink_to(tiny.model_dir)
    (root / "my-text").symlink_to(tiny.dataset_dir)
    (root / "runs" / "empty").mkdir(parents=True)
    (root / "typo.yaml").write_text(
        "model_class_name: AutoModelForCausalLM\nmodel_name: ./my-model\n"
        "dataset_path: ./my-text\ntrainig_tokens: 1000\noutput_path: runs/typo\n"
    )
    run_python(
        "import sae_lens, torch\n"
        "from sae_lens.registry import get_sae_class\n"
        "cls, cfg = get_sae_class('freq_ordered')\n"
        "cls(cfg(d_in=64, d_sae=128)).save_model('runs/done')\n"
        "cls, cfg = get_sae_class('jumprelu')\n"
        "cls(cfg(d_in=64, d_sae=128)).save_model('runs/mixed')\n"
        "torch.save({'n_training_samples': 2048}, 'trainer_state.pt')\n",
        cwd=root,
    )
    shutil.copy(root / "runs" / "done" / "cfg.json", root / "runs" / "mixed" / "cfg.json")
    checkpoint = root / "runs" / "interrupted" / "checkpoints" / "2048"
    checkpoint.mkdir(parents=True)
    shutil.copy(root / "runs" / "done" / "cfg.json", checkpoint / "cfg.json")
    (root / "trainer_state.pt").rename(checkpoint / "trainer_state.pt")
    (root / "a-file").write_text("")
    (root / "list-sae.yaml").write_text(
        "model_name: ./my-model\nsae:\n  - architecture: standard\n  - d_sae: 512\n"
    )
    demo_sweep = "base: {samples: 2048, d_sae: 64}\nvariants:\n"
    (root / "no-name.yaml").write_text(
        demo_sweep + "  - name: first\n    architecture: standard\n  - architecture: standard\n"
    )
    (root / "bad-field.yaml").write_text(
        demo_sweep + "  - name: ordered\n    architecture: freq_ordered\n"
        "    ordering_coefficient: 0.3\n"
        "  - name: plain\n    architecture: standard\n    ordering_coefficient: 0.3\n"
    )
    shutil.copytree(root / "runs" / "done", root / "runs" / "truncated-cfg")
    cfg = root / "runs" / "truncated-cfg" / "cfg.json"
    cfg.write_text(cfg.read_text()[: len(cfg.read_text()) // 2])
    shutil.copytree(root / "runs" / "done", root / "runs" / "truncated-weights")
    weights = root / "runs" / "truncated-weights" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.copytree(root / "runs" / "done", root / "runs" / "bad-runner-cfg")
    (root / "runs" / "bad-runner-cfg" / "runner_cfg.json").write_text('{"model_name": ')
    (root / "runs" / "bad-runner-cfg" / "training_log.jsonl").write_text(
        '{"step": 0, "loss": 1.5}\n'
    )
    # run folders trained elsewhere, by upstream's multi-SAE runner, on synthetic data
    shutil.copytree(root / "runs" / "done", root / "runs" / "elsewhere")
    (root / "runs" / "elsewhere" / "runner_cfg.json").write_text(
        '{"model_name": "./gone-model", "dataset_path": "./my-text"}'
    )
    for name in ("std", "fo"):
        shutil.copytree(root / "runs" / "done", root / "runs" / "multi" / name)
    (root / "runs" / "multi" / "runner_cfg.json").write_text('{"saes": {"std": {}, "fo": {}}}')
    shutil.copytree(root / "runs" / "done", root / "runs" / "demo")
    (root / "runs" / "demo" / "demo_data").mkdir()


def snapshot(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
        for p in root.rglob("*")
        if "__pycache__" not in p.parts
    }


def test_every_row_of_the_error_table(tiny_lm: TinyLM, tmp_path: Path, plugin_site) -> None:
    prepare(tmp_path, tiny_lm)
    before = snapshot(tmp_path)
    rows = error_table()
    commands = [shlex.split(command)[1:] for command, _, _ in rows]  # drop "sae-lens"
    proc = run_python(
        RUN.replace("sys.argv[1]", repr(json.dumps(commands))),
        env={"OMP_NUM_THREADS": "1", **plugin_site.env("probes", "clash")},
        cwd=tmp_path,
    )
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    for (command, code, message), (got_code, err) in zip(rows, results, strict=True):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert got_code == code, (command, got_code, err[-2000:])
        assert lines and lines[-1].startswith("Error: "), (command, err[-2000:])
        assert not any("Traceback" in ln for ln in lines), (command, err[-2000:])
        if message.endswith("…"):
            assert lines[-1].startswith(message[:-1].rstrip()), (command, lines[-1])
        else:
            assert lines[-1] == message, (command, lines[-1])
    assert snapshot(tmp_path) == before  # nothing written, no folder created
