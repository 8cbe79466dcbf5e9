"""Shared test helpers: fresh-interpreter runs and a tiny offline language model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment, offline, plus ``env``."""
    return {**os.environ, **OFFLINE_ENV, **(env or {})}


def run_python(
    code: str,
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of this environment (offline); fail loudly on error."""
    return run_module(["-c", code], env=env, cwd=cwd, timeout=timeout, check=check)


def run_module(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in a fresh interpreter (offline); fail loudly on error."""
    proc = subprocess.run(
        [PYTHON, *args],
        env=subprocess_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python {' '.join(args)[:200]} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


RUN_CLI = """
import contextlib, io, json, sys
from sae_lens_ext.cli import cli
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(args, prog_name="sae-lens")
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
print("RESULTS", json.dumps(results))
"""


def run_cli_commands(
    commands: list[list[str]],
    *,
    cwd: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> list[list]:
    """``sae-lens`` commands through the real entry point, in one fresh interpreter
    (offline, imports paid once): ``[exit code, stdout, stderr]`` of each."""
    proc = subprocess.run(
        [PYTHON, "-c", RUN_CLI, json.dumps(commands)],
        env=subprocess_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "RESULTS" in proc.stdout, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULTS ", 1)[1])


@dataclass(frozen=True)
class TinyLM:
    """A tiny local GPT-2 checkpoint, its tokenizer and a local JSONL dataset."""

    model_dir: Path
    dataset_dir: Path
    hook_name: str = "transformer.h.0"
    d_in: int = 64
    context_size: int = 32


_WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "in",
    "the",
    "park",
    "and",
    "birds",
    "sang",
    "over",
    "quiet",
    "rivers",
    "sparse",
    "features",
    "of",
    "language",
    "models",
    "appear",
    "in",
    "many",
    "contexts",
    "across",
    "long",
    "sequences",
]


def build_tiny_lm(root: Path, n_docs: int = 400, seed: int = 0) -> TinyLM:
    """Write a random 2-layer GPT-2 (n_embd 64), a trained BPE tokenizer and a text dataset."""
    import random

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    rng = random.Random(seed)
    texts = [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 120))) for _ in range(n_docs)
    ]
    dataset_dir = root / "dataset"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with open(dataset_dir / "train.jsonl", "w") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|unk|>"]),
    )
    model_dir = root / "model"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|unk|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(model_dir)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    return TinyLM(model_dir=model_dir, dataset_dir=dataset_dir)


def lm_runner_args(
    tiny: TinyLM, architecture: str, output_path: str | Path, *extra: str
) -> list[str]:
    """Arguments for ``python -m sae_lens.llm_sae_training_runner`` that train offline in seconds."""
    return [
        "-m",
        "sae_lens.llm_sae_training_runner",
        "--architecture",
        architecture,
        "--model_class_name",
        "AutoModelForCausalLM",
        "--model_name",
        str(tiny.model_dir),
        "--hook_name",
        tiny.hook_name,
        "--dataset_path",
        str(tiny.dataset_dir),
        "--streaming",
        "False",
        "--is_dataset_tokenized",
        "False",
        "--context_size",
        str(tiny.context_size),
        "--d_in",
        str(tiny.d_in),
        "--d_sae",
        "128",
        "--training_tokens",
        "8192",
        "--train_batch_size_tokens",
        "256",
        "--store_batch_size_prompts",
        "8",
        "--n_batches_in_buffer",
        "32",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--log_to_wandb",
        "False",
        "--n_checkpoints",
        "0",
        "--eval_every_n_wandb_logs",
        "1000000",
        "--output_path",
        str(output_path),
        *extra,
    ]


def cache_tiny_lm_activations(tiny: TinyLM, path: Path) -> None:
    """128 contexts of 32 positions of the tiny model's hook, with upstream's runner."""
    from sae_lens.cache_activations_runner import CacheActivationsRunner
    from sae_lens.config import CacheActivationsRunnerConfig

    cfg = CacheActivationsRunnerConfig(
        dataset_path=str(tiny.dataset_dir),
        model_name=str(tiny.model_dir),
        model_class_name="AutoModelForCausalLM",
        model_batch_size=8,
        hook_name=tiny.hook_name,
        d_in=tiny.d_in,
        context_size=32,
        training_tokens=128 * 32,
        new_cached_activations_path=str(path),
        device="cpu",
        streaming=False,
        buffer_size_gb=128 * 32 * tiny.d_in * 4 / 1e9 + 1e-6,
    )
    CacheActivationsRunner(cfg).run()


PLUGIN_SOURCES = {
    "decoder_orthogonality": REPO / "plugins" / "example-decoder-orthogonality",
    "threshold_topk": REPO / "plugins" / "example-threshold-topk",
    "toy": REPO / "tests" / "plugins" / "toy_plugin",
    "extras": REPO / "tests" / "plugins" / "extras_plugin",
    "broken": REPO / "tests" / "plugins" / "broken_plugin",
    "probes": REPO / "tests" / "plugins" / "probes_plugin",
    "clash": REPO / "tests" / "plugins" / "clash_plugin",
    "misspelt": REPO / "tests" / "plugins" / "misspelt_plugin",
}


@dataclass(frozen=True)
class PluginSite:
    """A directory holding pip-installed test plugins (see ``install_plugins``)."""

    path: Path

    def env(self, *plugins: str) -> dict[str, str]:
        """Environment that makes ``plugins`` (entry-point names) and the built-ins visible.

        An empty selection leaves SAE_LENS_EXT_LOAD_PLUGINS unset: every
        installed plugin loads.
        """
        env = {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.path), os.environ.get("PYTHONPATH")])
            )
        }
        if plugins:
            builtins = "freq_ordered,temporal_consistency,tsae,worst_reconstructed_resampler"
            env["SAE_LENS_EXT_LOAD_PLUGINS"] = ",".join([builtins, *plugins])
        return env


def install_plugins(target: Path) -> PluginSite:
    """``pip install --target`` the example plugin and the test plugins (no network)."""
    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            *map(str, PLUGIN_SOURCES.values()),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    return PluginSite(target)
