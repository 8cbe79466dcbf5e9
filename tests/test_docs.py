"""Every shell and Python example of README.md and docs/ runs as written.

Each page's examples run in order in a sandbox folder (so a later command finds what an
earlier one wrote), with the tiny local model and dataset of the test suite substituted for
Hub names and sizes shrunk to match (:func:`localize`). A block preceded by
``<!-- doc-test: skip: REASON -->`` is not run: REASON must name the CI entry point or an
existing test that covers it. ``<!-- doc-test: file NAME -->`` writes the block to NAME
(e.g. a YAML config a later command reads, or a file of a plugin package that a later
``pip install`` installs). Output samples (fences without a language) and
file listings (toml) are not commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, TinyLM, subprocess_env

pytestmark = pytest.mark.e2e

PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- doc-test: (?P<directive>[^>]*?) -->\s*\n)?(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n"
    r"(?P<body>.*?)\n(?P=indent)```",
    re.S,
)
RUN_LANGS = {"bash": "bash", "sh": "bash", "python": "python"}
BIN = Path(sys.executable).parent

# Hub model -> the tiny local GPT-2; its hook and width; sizes a tiny model trains in seconds.
SMALL = {"--training_tokens": 16384, "--d_sae": 256, "--context_size": 32}
DEMO_SIZE = ["--samples", "16384", "--eval-samples", "4096"]


@dataclass
class Block:
    page: str
    line: int
    lang: str
    body: str
    directive: str


def blocks(page: str) -> list[Block]:
    text = (REPO / page).read_text()
    found = []
    for m in BLOCK.finditer(text):
        body = "\n".join(line[len(m["indent"]) :] for line in m["body"].splitlines())
        line = text.count("\n", 0, m.start("lang")) + 1
        found.append(Block(page, line, m["lang"], body, (m["directive"] or "").strip()))
    return found


def shell_commands(body: str) -> list[list[str]]:
    """Commands of a shell block: continuation lines joined, comments dropped, ``&&`` split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for token in [*tokens, "&&"]:
            if token == "&&":
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def localize(tokens: list[str], tiny: TinyLM) -> list[str]:
    """Hub names -> the tiny local model and dataset; sizes shrunk to fit it."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        value = tokens[i + 1] if i + 1 < len(tokens) else None
        if token == "--model_name" and value and not value.startswith("."):
            out += [
                "--model_class_name",
                "AutoModelForCausalLM",
                "--model_name",
                str(tiny.model_dir),
            ]
        elif token == "--model_class_name" and "--model_name" in tokens:
            j = tokens.index("--model_name")
            if tokens[j + 1].startswith("."):
                out += [token, value]  # a local model keeps its class
        elif token == "--hook_name" and value and value.startswith("blocks."):
            out += [token, tiny.hook_name]
        elif token == "--d_in" and value in ("512", "768", "2304"):
            out += [token, str(tiny.d_in)]
        elif token == "--dataset_path" and value and not value.startswith("."):
            out += [token, str(tiny.dataset_dir), "--streaming", "False",
                    "--is_dataset_tokenized", "False"]  # fmt: skip
        elif token in SMALL and value is not None:
            out += [token, str(min(int(value.replace("_", "")), SMALL[token]))]
        else:
            out.append(token)
            i += 1
            continue
        i += 2
    if out[:1] == ["sae-lens"] and out[1:2] == ["demo"] and "--samples" not in out:
        out += DEMO_SIZE
    trains = out[1:2] == ["train"] or "sae_lens.llm_sae_training_runner" in out
    if trains and "--n_batches_for_norm_estimate" not in out:
        out += ["--n_batches_for_norm_estimate", "4"]  # not 1000 batches of the tiny model
    return keep_buffer_tokens(tokens, out)


def keep_buffer_tokens(original: list[str], out: list[str]) -> list[str]:
    """A shrunk context keeps the documented buffer size in tokens (n_batches x context)."""
    if "--context_size" not in original or "--n_batches_in_buffer" not in original:
        return out
    before = int(original[original.index("--context_size") + 1])
    after = int(out[out.index("--context_size") + 1])
    i = out.index("--n_batches_in_buffer") + 1
    out[i] = str(-(-int(out[i]) * before // after))
    return out


WRAPPER = (
    "import sys\n"
    "from tests.test_cli_hub import install_fake_hub\n"
    "install_fake_hub(sys.argv.pop(1))\n"
    "from sae_lens_ext.cli import cli\n"
    "cli(prog_name='sae-lens')\n"
)


class Sandbox:
    """A folder with the repository's scripts, the tiny model as ./my-model and its text as
    ./my-text, a private site-packages for `pip install`, and a fake Hub for uploads."""

    def __init__(self, root: Path, tiny: TinyLM) -> None:
        self.root, self.tiny = root, tiny
        for name in ("plugins", "scripts", "tests", "sweeps", "docs"):
            (root / name).symlink_to(REPO / name)
        (root / "benchmarks").mkdir()  # a real folder: benchmarks write their output under it
        for script in (REPO / "benchmarks").glob("*.py"):
            (root / "benchmarks" / script.name).symlink_to(script)
        (root / "my-model").symlink_to(tiny.model_dir)
        (root / "my-text").symlink_to(tiny.dataset_dir)
        self.site = root / ".site"
        self.env = subprocess_env(
            {
                "PYTHONPATH": os.pathsep.join([str(self.site), str(REPO)]),
                "OMP_NUM_THREADS": "1",
                "SAE_LENS_EXT_SMOKE": "1",
                # the Hub is the in-memory FakeHub of tests/test_cli_hub.py (sae-lens commands
                # and Python examples install it): uploads and from_pretrained go there
                "HF_HUB_OFFLINE": "0",
                "HF_TOKEN": "hf_fake_token",
                "HF_HUB_CACHE": str(root / ".hf-cache"),
            }
        )

    def run(self, argv: list[str], where: str, env: dict[str, str] | None = None) -> None:
        proc = subprocess.run(
            argv,
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (
            f"{where}: {shlex.join(argv)[:300]} exited {proc.returncode}\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )

    def shell(self, tokens: list[str], where: str) -> None:
        env = {}  # NAME=value before the program, as the shell reads it
        while tokens and re.fullmatch(r"[A-Za-z_]\w*=.*", tokens[0]):
            name, _, value = tokens.pop(0).partition("=")
            env[name] = value
        tokens = localize(tokens, self.tiny)
        program = tokens[0].removeprefix(".venv/bin/")
        if program == "bash" and tokens[1] in ("scripts/setup.sh", "scripts/test.sh"):
            assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
            return  # what CI itself runs, on a fresh clone
        if program in ("pip", "python") and "install" in tokens:
            targets = tokens[tokens.index("install") + 1 :]
            argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(self.site), *targets]  # fmt: skip
        elif program == "sae-lens":
            argv = [sys.executable, "-c", WRAPPER, str(self.root / ".hub"), *tokens[1:]]
        elif program == "python":
            argv = [sys.executable, *tokens[1:]]
        else:
            raise AssertionError(f"{where}: no rule to run {program!r}; mark the block doc-test")
        self.run(argv, where, env)

    def python(self, body: str, where: str) -> None:
        hub = f"from tests.test_cli_hub import install_fake_hub\ninstall_fake_hub({str(self.root / '.hub')!r})\n"
        self.run([sys.executable, "-c", hub + body], where)


def check_skip(block: Block) -> None:
    reason = block.directive.removeprefix("skip:").strip()
    named = re.findall(r"tests/[\w/]+\.py::\w+", reason)
    assert named or ".ci/run" in reason, f"{block.page}:{block.line}: skip needs a reason: {reason}"
    for test in named:
        file, name = test.split("::")
        assert f"def {name}(" in (REPO / file).read_text(), f"{block.page}: no test {test}"


@pytest.mark.parametrize("page", PAGES)
def test_every_example_runs_as_written(page: str, tiny_lm: TinyLM, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path, tiny_lm)
    for block in blocks(page):
        where = f"{page}:{block.line}"
        if block.directive.startswith("skip:"):
            check_skip(block)
        elif block.directive.startswith("file "):
            target = tmp_path / block.directive.split(" ", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)  # a package's files
            target.write_text(block.body + "\n")
        elif RUN_LANGS.get(block.lang) == "bash":
            for tokens in shell_commands(block.body):
                sandbox.shell(tokens, where)
        elif RUN_LANGS.get(block.lang) == "python":
            sandbox.python(block.body, where)
