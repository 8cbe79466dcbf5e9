"""Loss terms on SAE-Lens's own architectures, through their training-only twins.

Per upstream architecture: a few steps of upstream's ``SAETrainer`` with a plugin loss
term, whose gradient must reach the weights; the saved SAE names the upstream
architecture and reloads with upstream's own inference class in a fresh interpreter
where sae-lens-ext cannot be imported. End to end: ``sae-lens train --architecture
standard --loss_terms ...``, a train sweep with a ``loss_terms`` variant per architecture,
and upstream's runner under the twins' names.
"""

from __future__ import annotations

import json
import site
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sae_lens_ext.api import hookimpl, register_plugin, twin_name
from tests.helpers import TinyLM, lm_runner_args, run_cli_commands, run_module, run_python

#: SAE-Lens's architectures the issue names, with the settings a tiny run needs.
UPSTREAM = {
    "standard": {},
    "topk": {"k": 8},
    "batchtopk": {"k": 8},
    "jumprelu": {},
    "gated": {},
    "matryoshka_batchtopk": {"k": 8, "matryoshka_widths": [16, 64]},
}
#: What each saves as (upstream's batchtopk variants save JumpReLU SAEs).
SAVED_AS = {
    "standard": ("standard", "StandardSAE"),
    "topk": ("topk", "TopKSAE"),
    "batchtopk": ("jumprelu", "JumpReLUSAE"),
    "jumprelu": ("jumprelu", "JumpReLUSAE"),
    "gated": ("gated", "GatedSAE"),
    "matryoshka_batchtopk": ("jumprelu", "JumpReLUSAE"),
}
D_IN, D_SAE, BATCH, STEPS = 16, 64, 128, 6


def code_energy(ctx: Any) -> torch.Tensor:
    """A test term that reaches every weight through the codes: mean squared code norm."""
    ctx.metrics["code_energy"] = ctx.feature_acts.detach().pow(2).sum(-1).mean()
    return ctx.feature_acts.pow(2).sum(-1).mean()


class CodeEnergyPlugin:
    @staticmethod
    @hookimpl
    def register_loss_terms(register: Any) -> None:
        from sae_lens_ext.api import LossTerm

        register(LossTerm("test_code_energy", code_energy, "mean squared code norm (tests)"))


@pytest.fixture(scope="module", autouse=True)
def code_energy_term() -> None:
    from sae_lens_ext.plugins import loss_terms

    if "test_code_energy" not in loss_terms():
        register_plugin(CodeEnergyPlugin, "test_code_energy")


def twin(architecture: str, loss_terms: str) -> Any:
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[twin_name(architecture)]
    torch.manual_seed(0)
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, loss_terms=loss_terms, **UPSTREAM[architecture])
    return cls(cfg)


def train(sae: Any, seed: int = 1) -> Any:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(4 * D_IN, D_IN, generator=generator)

    def batches() -> Any:
        while True:
            codes = torch.rand(BATCH, 4 * D_IN, generator=generator).pow(8)
            yield codes @ basis

    cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=STEPS * BATCH, device="cpu", autocast=False, lr=1e-3,
        lr_end=1e-3, lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9,
        adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1,
        train_batch_size_samples=BATCH, dead_feature_window=1000,
        feature_sampling_window=1000, logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches())
    trainer.fit()
    return trainer


def term_gradient(architecture: str) -> dict[str, float]:
    """Norm of each weight's gradient difference with and without the term, on one step
    from the same weights and batch: the term's own gradient."""
    from sae_lens.saes.sae import TrainStepInput

    grads = []
    for terms in ("", "test_code_energy=1.0"):
        sae = twin(architecture, terms)
        x = torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(3))
        coefficients = {
            k: v if isinstance(v, float) else v.value for k, v in sae.get_coefficients().items()
        }
        out = sae.training_forward_pass(TrainStepInput(x, coefficients, None, 0, False))
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None})
    return {n: float((grads[1][n] - grads[0][n]).norm()) for n in grads[0]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each twin trained a few steps with the term by upstream's ``SAETrainer`` and saved;
    then every folder reloaded in one interpreter that cannot import sae-lens-ext."""
    root = tmp_path_factory.mktemp("twins")
    x = torch.randn(8, D_IN, generator=torch.Generator().manual_seed(5))
    torch.save(x, root / "x.pt")
    trained: dict[str, Any] = {}
    for architecture in UPSTREAM:
        sae = twin(architecture, "test_code_energy=0.5@2")
        untouched = {n: p.detach().clone() for n, p in sae.named_parameters()}
        trainer = train(sae)
        sae.save_inference_model(root / architecture)
        trained[architecture] = {"trainer": trainer, "sae": sae, "before": untouched}
    return {"root": root, "x": x, "trained": trained, "reloaded": reload_without_package(root)}


#: Fresh interpreter, no site hooks (-S: neither sae-lens-ext's start-up hook nor its
#: editable-install path), isolated (-I); only the venv's site-packages is put back.
RELOAD = """
import importlib.util, json, sys
sys.path.append(sys.argv[1])
assert importlib.util.find_spec("sae_lens_ext") is None, "sae_lens_ext is importable"
import torch
from sae_lens import SAE
root = sys.argv[2]
x = torch.load(root + "/x.pt")
out = {}
for name in json.loads(sys.argv[3]):
    sae = SAE.load_from_disk(root + "/" + name)
    out[name] = {"class": type(sae).__name__, "architecture": sae.cfg.architecture(),
                 "decoded": sae.decode(sae.encode(x)).tolist()}
print("RESULT", json.dumps(out))
"""


def reload_without_package(root: Path) -> dict[str, Any]:
    (packages,) = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    proc = run_module(["-I", "-S", "-c", RELOAD, packages, str(root), json.dumps(list(UPSTREAM))],
                      env={"SAE_LENS_EXT_AUTOLOAD": "0"})  # fmt: skip
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


@pytest.mark.parametrize("architecture", list(UPSTREAM))
def test_the_terms_gradient_reaches_the_weights(architecture: str) -> None:
    difference = term_gradient(architecture)  # the term reads the codes: the encoder moves
    assert difference["W_enc"] > 1e-3, difference


@pytest.mark.parametrize("architecture", list(UPSTREAM))
def test_trained_with_a_term_saved_as_upstream_reloaded_without_the_package(
    saved: dict[str, Any], architecture: str
) -> None:
    run = saved["trained"][architecture]
    sae, trainer = run["sae"], run["trainer"]
    assert trainer.n_training_steps == STEPS
    assert not torch.equal(sae.W_dec.detach(), run["before"]["W_dec"])
    folder = saved["root"] / architecture
    cfg = json.loads((folder / "cfg.json").read_text())
    name, cls = SAVED_AS[architecture]
    assert cfg["architecture"] == name and "loss_terms" not in cfg
    assert cfg["metadata"]["training_architecture"] == twin_name(architecture)
    assert cfg["metadata"]["training_architecture_details"]["loss_terms"] == (
        "test_code_energy=0.5@2"
    )
    reloaded = saved["reloaded"][architecture]
    assert (reloaded["class"], reloaded["architecture"]) == (cls, name)
    from sae_lens import SAE

    here = SAE.load_from_disk(folder)  # with the package: the same class, the same outputs
    assert type(here).__name__ == cls
    expected = here.decode(here.encode(saved["x"]))
    torch.testing.assert_close(torch.tensor(reloaded["decoded"]), expected)


def test_upstream_names_are_unchanged_and_twins_never_collide() -> None:
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
    from sae_lens.saes.standard_sae import StandardTrainingSAE

    assert SAE_TRAINING_CLASS_REGISTRY["standard"][0] is StandardTrainingSAE
    twins = [n for n in SAE_TRAINING_CLASS_REGISTRY if n.endswith("_with_loss_terms")]
    assert {twin_name(a) for a in UPSTREAM} <= set(twins)
    assert not set(twins) & set(SAE_CLASS_REGISTRY)  # training-only: no inference entry
    assert "temporal_with_loss_terms" not in twins  # upstream's temporal is inference-only
    # plugin architectures take loss terms themselves: no twin
    assert not {"freq_ordered_with_loss_terms", "tsae_with_loss_terms"} & set(twins)


def test_a_class_that_skips_calculate_aux_loss_cannot_take_terms_silently() -> None:
    from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

    sae = twin("standard", "test_code_energy=1.0")

    def bare_forward(step_input: TrainStepInput) -> TrainStepOutput:
        acts, pre = sae.encode_with_hidden_pre(step_input.sae_in)
        out = sae.decode(acts)
        loss = (out - step_input.sae_in).pow(2).sum(-1).mean()
        return TrainStepOutput(step_input.sae_in, out, acts, pre, loss, {"mse_loss": loss})

    from sae_lens.saes.standard_sae import StandardTrainingSAE

    sae.begin_step = lambda s: s  # type: ignore[method-assign]
    output = bare_forward(TrainStepInput(torch.randn(8, D_IN), {}, None, 0, False))
    with pytest.raises(RuntimeError, match="does not call calculate_aux_loss"):
        sae.end_step(TrainStepInput(torch.randn(8, D_IN), {}, None, 0, False), output)
    assert StandardTrainingSAE.training_forward_pass  # upstream's own does call it


# --- end to end ---------------------------------------------------------------------------
TRAIN = ["--d_sae", "64", "--context_size", "32", "--training_tokens", "4096",
         "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "8",
         "--n_batches_in_buffer", "32", "--n_batches_for_norm_estimate", "2",
         "--n_checkpoints", "0", "--progress", "none"]  # fmt: skip


def lm_flags(tiny: TinyLM) -> list[str]:
    return ["--model_class_name", "AutoModelForCausalLM", "--model_name", str(tiny.model_dir),
            "--hook_name", tiny.hook_name, "--d_in", str(tiny.d_in),
            "--dataset_path", str(tiny.dataset_dir), "--streaming", "False",
            "--is_dataset_tokenized", "False"]  # fmt: skip


def upstream_flags(architecture: str) -> list[str]:
    return [
        part
        for key, value in UPSTREAM[architecture].items()
        for part in (f"--{key}", *map(str, value if isinstance(value, list) else [value]))
    ]


@pytest.mark.e2e
@pytest.mark.timeout(1500)  # seven tiny LM runs and their evaluations
def test_sae_lens_train_and_a_sweep_take_loss_terms_on_every_upstream_architecture(
    plugin_site: Any, tiny_lm: TinyLM, tmp_path: Path
) -> None:
    env = plugin_site.env("decoder_orthogonality")
    term = "decoder_orthogonality=0.1@2"
    variants = [
        {"name": a, "architecture": a, "loss_terms": term, **UPSTREAM[a]} for a in UPSTREAM
    ]
    base = dict(zip(lm_flags(tiny_lm)[::2], lm_flags(tiny_lm)[1::2], strict=True))
    base.update(zip(TRAIN[::2], TRAIN[1::2], strict=True))
    base.pop("--progress")
    sweep = {"kind": "train", "output": str(tmp_path / "sweep"), "evaluate": {"samples": 1024},
             "base": {k.removeprefix("--"): v for k, v in base.items()}, "variants": variants}  # fmt: skip
    (tmp_path / "twins.json").write_text(json.dumps(sweep))  # YAML is a superset of JSON
    train = ["train", "--architecture", "standard", "--loss_terms", term, *lm_flags(tiny_lm),
             *TRAIN, "--output_path", str(tmp_path / "train-standard")]  # fmt: skip
    results = run_cli_commands(
        [train, ["sweep", str(tmp_path / "twins.json"), "--progress", "none"]],
        cwd=tmp_path,
        env=env,
    )
    for code, out, err in results:
        assert code in (0, None), f"{out[-2000:]}\n{err[-4000:]}"
    assert results[0][2].count("training standard_with_loss_terms") == 1  # said, once
    folders = {"standard": tmp_path / "train-standard"} | {
        f"sweep/{a}": tmp_path / "sweep" / a for a in UPSTREAM
    }
    for label, folder in folders.items():
        cfg = json.loads((folder / "cfg.json").read_text())
        architecture = label.removeprefix("sweep/")
        assert cfg["architecture"] == SAVED_AS[architecture][0], label
        assert cfg["metadata"]["training_architecture"] == twin_name(architecture), label
        log = [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines()]
        assert any("decoder_orthogonality_loss" in json.dumps(row) for row in log), label


@pytest.mark.e2e
@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_upstream_runner_trains_the_twin_and_saves_the_upstream_architecture(
    plugin_site: Any, tiny_lm: TinyLM, tmp_path: Path, architecture: str
) -> None:
    env = plugin_site.env("decoder_orthogonality")
    args = lm_runner_args(tiny_lm, twin_name(architecture), tmp_path / "out",
                          "--loss_terms", "decoder_orthogonality=0.1", "--d_sae", "64",
                          *upstream_flags(architecture))  # fmt: skip
    run_module(args, env=env)
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == architecture
    details = cfg["metadata"]["training_architecture_details"]
    assert details["loss_terms"] == "decoder_orthogonality=0.1"
    # upstream's own name is untouched: no loss-term option there
    proc = run_module(
        lm_runner_args(tiny_lm, architecture, tmp_path / "plain", "--loss_terms", "x=1"),
        env=env,
        check=False,
    )
    assert proc.returncode != 0 and "unrecognized arguments: --loss_terms" in proc.stderr
    out = run_python(
        "import sae_lens, sys; from sae_lens import SAE\n"
        f"print(type(SAE.load_from_disk({str(tmp_path / 'out')!r})).__name__)",
        env={"SAE_LENS_EXT_AUTOLOAD": "0"},
    )
    assert out.stdout.strip() == SAVED_AS[architecture][1]
    assert sys.executable  # the same interpreter family as the test


def test_the_twin_fields_are_the_loss_term_configs_own() -> None:
    from dataclasses import fields

    from sae_lens.saes.sae import TrainingSAEConfig

    from sae_lens_ext.training.sae import LossTermTrainingSAEConfig
    from sae_lens_ext.training.twins import TWIN_FIELDS

    base = {f.name for f in fields(TrainingSAEConfig)}
    own = [f.name for f in fields(LossTermTrainingSAEConfig) if f.name not in base]
    assert tuple(own) == TWIN_FIELDS
