"""Third-party plugins, pip-installed as their own distributions, seen by unchanged upstream code.

Every test runs in a fresh interpreter: registration comes from the start-up hook and the
entry points alone.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import lm_runner_args, run_cli_commands, run_module, run_python

pytestmark = pytest.mark.e2e

#: Four steps of upstream's unchanged SAETrainer on 64 random rows of width 8, with a
#: dead-latent window of 2 steps (inserted into the subprocess code below as `{FIT_FOUR_STEPS}`).
FIT_FOUR_STEPS = """data = iter(lambda: torch.randn(64, 8), None)
trainer_cfg = SAETrainerConfig(
    n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False, total_training_samples=4 * 64,
    device='cpu', autocast=False, lr=1e-3, lr_end=1e-3, lr_scheduler_name='constant', lr_warm_up_steps=0,
    adam_beta1=0.9, adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=64,
    dead_feature_window=2, feature_sampling_window=1000, logger=LoggingConfig(log_to_wandb=False),
)
trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
trainer.fit()"""


def test_registry_and_disk_round_trip(plugin_site, tmp_path):
    out = run_python(
        f"""
import sys, torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
assert 'toy_relu' in SAE_CLASS_REGISTRY and 'toy_relu' in SAE_TRAINING_CLASS_REGISTRY
from sae_lens_ext_toy.sae import ToyReluTrainingSAE, ToyReluTrainingSAEConfig
torch.manual_seed(0)
sae = ToyReluTrainingSAE(ToyReluTrainingSAEConfig(d_in=8, d_sae=32))
sae.save_inference_model({str(tmp_path)!r})
loaded = SAE.load_from_disk({str(tmp_path)!r})
x = torch.randn(16, 8)
assert type(loaded).__name__ == 'ToyReluSAE', type(loaded)
assert torch.equal(loaded.encode(x), sae.encode(x))
assert torch.equal(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))
print('ok')
""",
        env=plugin_site.env("toy"),
    )
    assert out.stdout.strip() == "ok"


def test_example_loss_term_enters_losses_and_gradient(plugin_site):
    out = run_python(
        """
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens_ext_toy.sae import ToyReluTrainingSAE, ToyReluTrainingSAEConfig

def grads(loss_terms):
    torch.manual_seed(0)
    sae = ToyReluTrainingSAE(ToyReluTrainingSAEConfig(d_in=8, d_sae=32, loss_terms=loss_terms))
    step = TrainStepInput(sae_in=torch.randn(64, 8), coefficients={'l1': 1.0, 'decoder_orthogonality': 1.0},
                          dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    out = sae.training_forward_pass(step)
    out.loss.backward()
    return out, sae.W_dec.grad.clone()

plain, g0 = grads('')
ortho, g1 = grads('decoder_orthogonality=1.0@10')
assert 'decoder_orthogonality_loss' in ortho.losses and 'decoder_orthogonality_loss' not in plain.losses
assert ortho.losses['decoder_orthogonality_loss'].item() > 0
assert not torch.allclose(g0, g1)
print(ortho.losses['decoder_orthogonality_loss'].item())
""",
        env=plugin_site.env("toy", "decoder_orthogonality"),
    )
    assert float(out.stdout) > 0


def test_upstream_lm_runner_trains_plugin_architecture_with_plugin_loss(
    plugin_site, tiny_lm, tmp_path
):
    env = plugin_site.env("toy", "decoder_orthogonality")
    help_out = run_module(["-m", "sae_lens.llm_sae_training_runner", "--help"], env=env)
    assert "toy_relu" in help_out.stdout
    run_module(
        lm_runner_args(
            tiny_lm, "toy_relu", tmp_path / "out", "--loss_terms", "decoder_orthogonality=0.1@4"
        ),
        env=env,
    )
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == "toy_relu"
    details = cfg["metadata"]["training_architecture_details"]
    assert details["loss_terms"] == "decoder_orthogonality=0.1@4"


def test_resampler_plugin_wins_and_optimizer_rows_reset(plugin_site):
    """Under the unchanged upstream SAETrainer: the toy resampler is used, moments reset."""
    out = run_python(
        """
import torch
from sae_lens.config import SAETrainerConfig, LoggingConfig
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens_ext_toy.sae import ToyReluTrainingSAE, ToyReluTrainingSAEConfig

torch.manual_seed(0)
sae = ToyReluTrainingSAE(ToyReluTrainingSAEConfig(d_in=8, d_sae=32, resample_dead_every=4))
with torch.no_grad():
    sae.b_enc[:5] = -1e4          # latents 0..4 can never fire
{FIT_FOUR_STEPS}
expected = torch.zeros(8); expected[0] = 3.0
assert sae.n_resampled == 5, sae.n_resampled
assert torch.equal(sae.W_dec[:5], expected.repeat(5, 1))
state = trainer.optimizer.state[sae.W_dec]
assert torch.all(state['exp_avg'][:5] == 0) and torch.all(state['exp_avg_sq'][:5] == 0)
assert state['exp_avg'][5:].abs().sum() > 0
assert torch.all(trainer.optimizer.state[sae.b_enc]['exp_avg'][:5] == 0)
print('ok')
""".replace("{FIT_FOUR_STEPS}", FIT_FOUR_STEPS),
        env=plugin_site.env("toy"),
    )
    assert out.stdout.strip() == "ok"


def test_broken_plugin_warns_and_sae_lens_still_imports(plugin_site):
    out = run_python(
        "import warnings; warnings.simplefilter('always')\n"
        "import sae_lens\n"
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "print('toy_relu' in SAE_CLASS_REGISTRY)\n",
        env=plugin_site.env("toy", "broken"),
    )
    assert out.stdout.strip() == "True"
    assert "plugin 'broken' (sae-lens-ext-broken 0.0.1) skipped (import failed)" in out.stderr
    assert "this plugin is broken on purpose" in out.stderr


def test_sae_lens_plugins_command_lists_everything(plugin_site):
    out = run_module(
        ["-m", "sae_lens_ext.cli", "plugins", "--json"],
        env=plugin_site.env("toy", "decoder_orthogonality", "broken"),
    )
    infos = {i["name"]: i for i in json.loads(out.stdout)}
    assert infos["toy"]["distribution"] == "sae-lens-ext-toy"
    assert infos["toy"]["version"] == "0.0.1"
    assert infos["toy"]["architectures"] == ["toy_relu"]
    assert infos["toy"]["resampler"] is True
    assert infos["decoder_orthogonality"]["loss_terms"] == ["decoder_orthogonality"]
    assert infos["broken"]["error"].startswith("import failed")
    assert infos["worst_reconstructed_resampler"]["distribution"] == "sae-lens-ext"
    table = run_module(["-m", "sae_lens_ext.cli", "plugins"], env=plugin_site.env("toy")).stdout
    assert "toy_relu" in table


# --- errors a plugin causes name it; the failure policy; logging steps --------------------


def test_upstream_runner_errors_name_the_plugin_and_the_term(plugin_site, tiny_lm, tmp_path):
    """Upstream's own runner, unchanged: an exception in a term and a NaN term each stop it
    with an exception naming the term and its plugin."""
    cases = {
        "raises": "sae_lens_ext.plugins.PluginError: loss term 'raises' of plugin 'probes' "
        "(sae-lens-ext-probes 0.0.1) raised RuntimeError: this loss term fails on purpose "
        "(training step 0)",
        "not_finite": "sae_lens_ext.plugins.LossTermNotFinite: training step 0: loss term "
        "'not_finite' of plugin 'probes' (sae-lens-ext-probes 0.0.1) is not finite (NaN or inf)",
    }
    for term, message in cases.items():
        args = lm_runner_args(tiny_lm, "toy_relu", tmp_path / term, "--loss_terms", f"{term}=1")
        proc = run_module(args, env=plugin_site.env("toy", "probes"), check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "not_finite" / "cfg.json").exists()  # a diverged SAE is not saved


def test_failing_metric_and_figure_plugins_lose_no_training(plugin_site, tmp_path):
    """demo and evaluate with a plugin whose metric and figure hooks raise: both finish,
    the SAE, log and the other plugins' metrics and figures are written, and the failing
    plugin is named once per hook."""
    env = {**plugin_site.env("toy", "extras", "probes"), "PYTHONWARNINGS": "default"}
    demo_args = ["demo", "--architecture", "toy_relu", "--samples", "4096", "--eval-samples",
                 "1024", "-o", "run"]  # fmt: skip
    demo, evaluate = run_cli_commands(
        [demo_args, ["evaluate", "run", "--samples", "1024"]], cwd=tmp_path, env=env
    )
    assert demo[0] == 0 and evaluate[0] == 0, (demo[2][-2000:], evaluate[2][-2000:])
    for hook in ("evaluation_metrics", "run_figures"):
        message = (
            f"plugin 'probes' (sae-lens-ext-probes 0.0.1) skipped ({hook} failed): "
            "RuntimeError: this"
        )
        assert demo[2].count(message) == 1, demo[2][-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "toy_decoder_norm" in metrics  # the extras plugin's metric is kept
    assert (tmp_path / "run" / "plots" / "toy_decoder_norms.png").is_file()
    assert (tmp_path / "run" / "cfg.json").is_file()
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert "toy_decoder_norm" in json.dumps(evaluation)


def test_collisions_and_misspelt_hooks_are_named_once(plugin_site):
    """Installed distributions: the built-in keeps ``frequency_ordering``, SAE-Lens keeps
    ``standard``, ``twin`` (probes and clash) is refused for both, the misspelt plugin is
    skipped; each said once although registration runs several times."""
    out = run_python(
        """
import warnings
warnings.simplefilter("always")
import sae_lens
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens_ext import plugins
from sae_lens_ext.registration import register_with_sae_lens
register_with_sae_lens(); register_with_sae_lens()
terms = plugins.loss_terms()
print(SAE_CLASS_REGISTRY["standard"][0].__name__)
print(terms["frequency_ordering"].fn.__module__)
print("twin" in terms, "clash_only" in terms, plugins.pm.get_plugin("misspelt") is None)
""",
        env=plugin_site.env("probes", "clash", "misspelt"),
    )
    assert out.stdout.split() == [
        "StandardSAE",
        "sae_lens_ext_plugins.freq_ordered.losses",
        "False",
        "True",
        "True",
    ]
    said = [
        "plugin 'clash' (sae-lens-ext-clash 0.0.1) also registers loss term "
        "'frequency_ordering', which the built-in plugin 'freq_ordered' (sae-lens-ext ",
        "plugin 'clash' (sae-lens-ext-clash 0.0.1) registers architecture 'standard', which "
        "is SAE-Lens's own (sae_lens.saes.standard_sae.StandardSAE); SAE-Lens's is kept",
        "loss term 'twin' is registered by plugin 'clash' (sae-lens-ext-clash 0.0.1) and "
        "plugin 'probes' (sae-lens-ext-probes 0.0.1), so none of them is used",
        "plugin 'misspelt' (sae-lens-ext-misspelt 0.0.1) skipped (unknown hook): ValueError: "
        "'register_loss_term' (did you mean 'register_loss_terms'?) is not a hook",
    ]
    for message in said:
        assert out.stderr.count(message) == 1, (message, out.stderr[-3000:])


def test_a_term_logs_on_every_logging_step_of_sae_lens_train(plugin_site, tiny_lm, tmp_path):
    """A term that sets its metric only when ``ctx.is_logging_step``: the metric is in every
    record of training_log.jsonl, computed on that very step, and on the progress lines."""
    train = [
        "train", "--architecture", "toy_relu", "--model_class_name",
        "AutoModelForCausalLM", "--model_name", str(tiny_lm.model_dir), "--hook_name",
        tiny_lm.hook_name, "--d_in", "64", "--d_sae", "128", "--dataset_path",
        str(tiny_lm.dataset_dir), "--streaming", "False", "--is_dataset_tokenized",
        "False", "--context_size", "32", "--training_tokens", "5120",
        "--train_batch_size_tokens", "256", "--n_batches_in_buffer", "32",
        "--loss_terms", "logs_on_logging_steps=0.1", "--log-every", "3",
    ]  # fmt: skip
    quiet, plain = run_cli_commands(
        [
            [*train, "--output_path", "quiet", "--progress", "none"],  # logs every 3rd step
            [*train, "--output_path", "plain", "--progress", "plain"],  # a line every step
        ],
        cwd=tmp_path,
        env=plugin_site.env("toy", "probes"),
    )
    assert quiet[0] == 0 and plain[0] == 0, (quiet[2][-3000:], plain[2][-3000:])
    records = [json.loads(line) for line in (tmp_path / "quiet" / "training_log.jsonl").open()]
    assert [r["step"] for r in records] == [3, 6, 9, 12, 15, 18, 20]
    for record in records:
        assert record["probe_logged_at_step"] == record["step"] - 1, record
        assert record["probe_decoder_square"] > 0
        assert record["logs_on_logging_steps_loss"] > 0
    lines = [ln for ln in plain[2].splitlines() if ln.startswith("step ")]
    assert len(lines) == 20 and all(f"probe_logged_at_step {i}" in ln for i, ln in enumerate(lines))


def test_a_term_logs_on_upstreams_wandb_steps(plugin_site):
    """Upstream's SAETrainer, driven as its ``fit`` drives it (wandb on, but disabled): on
    the steps it logs, ``build_train_step_log_dict`` holds the term's metric of that step;
    on the others the term computed nothing."""
    out = run_python(
        """
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens_ext_toy.sae import ToyReluTrainingSAE, ToyReluTrainingSAEConfig

torch.manual_seed(0)
sae = ToyReluTrainingSAE(
    ToyReluTrainingSAEConfig(d_in=8, d_sae=32, loss_terms="logs_on_logging_steps=0.1")
)
cfg = SAETrainerConfig(
    n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
    total_training_samples=10 * 64, device="cpu", autocast=False, lr=1e-3, lr_end=1e-3,
    lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9, adam_beta2=0.999,
    lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=64,
    dead_feature_window=5, feature_sampling_window=1000,
    logger=LoggingConfig(log_to_wandb=True, wandb_log_frequency=3),
)
trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(lambda: torch.randn(64, 8), None))
logged = {}
for _ in range(10):
    output = trainer.step(torch.randn(64, 8))
    if (trainer.n_training_steps + 1) % cfg.logger.wandb_log_frequency == 0:  # fit's test
        log = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
        logged[trainer.n_training_steps] = log["metrics/probe_logged_at_step"]
        assert log["metrics/probe_decoder_square"] > 0
    else:
        assert "probe_logged_at_step" not in output.metrics
    trainer.n_training_steps += 1
print(logged)
""",
        env={**plugin_site.env("toy", "probes"), "WANDB_MODE": "disabled"},
    )
    assert out.stdout.strip() == "{2: 2, 5: 5, 8: 8}"


def test_the_example_architecture_resamples_folds_and_takes_its_term(plugin_site, tmp_path):
    """plugins/example-threshold-topk (docs/writing-a-plugin.md) under upstream's unchanged
    SAETrainer: its resampler rewrites dead latents' rows, threshold included, with fresh
    optimizer moments; its term enters the loss; the saved SAE folds exactly."""
    out = run_python(
        f"""
import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig, LoggingConfig
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens_ext_threshold_topk.sae import ThresholdTopKTrainingSAE, ThresholdTopKTrainingSAEConfig

torch.manual_seed(0)
cfg = ThresholdTopKTrainingSAEConfig(d_in=8, d_sae=32, k=4, resample_dead_every=4,
                                     loss_terms="decoder_coactivation=0.5",
                                     loss_term_options="coactivation_latents=16")
sae = ThresholdTopKTrainingSAE(cfg)
with torch.no_grad():
    sae.b_enc[:5] = -1e4          # latents 0..4 can never fire
    sae.threshold[:5] = 7.0
{FIT_FOUR_STEPS}
assert sae.n_resampled >= 5, sae.n_resampled
assert torch.equal(sae.threshold[:5].detach(), torch.zeros(5))
assert torch.equal(sae.b_enc[:5].detach(), torch.zeros(5))
torch.testing.assert_close(sae.W_dec[:5].norm(dim=-1), torch.ones(5))
state = trainer.optimizer.state[sae.threshold]
assert torch.all(state['exp_avg'][:5] == 0) and state['exp_avg'][5:].abs().sum() > 0
step = sae.training_forward_pass(__import__('sae_lens.saes.sae', fromlist=['x']).TrainStepInput(
    torch.randn(64, 8), {{'l0': 0.01, 'decoder_coactivation': 0.5}}, None, 0, False))
assert step.losses['decoder_coactivation_loss'] > 0 and 'l0_loss' in step.losses
sae.save_inference_model({str(tmp_path)!r})
loaded = SAE.load_from_disk({str(tmp_path)!r})
x = torch.randn(32, 8)
before = loaded.decode(loaded.encode(x))
loaded.fold_W_dec_norm()
torch.testing.assert_close(loaded.decode(loaded.encode(x)), before, rtol=1e-5, atol=1e-6)
print(type(loaded).__name__)
""",
        env=plugin_site.env("threshold_topk"),
    )
    assert out.stdout.strip() == "ThresholdTopKSAE"


def test_the_docs_teach_the_shipped_example_plugin():
    """Each file block of docs/writing-a-plugin.md is the file shipped in
    plugins/example-threshold-topk (the doc test installs and runs the blocks)."""
    from tests.helpers import REPO
    from tests.test_docs import blocks

    shipped = REPO / "plugins" / "example-threshold-topk"
    files = {
        b.directive.split(" ", 1)[1].removeprefix("my-plugin/"): b.body
        for b in blocks("docs/writing-a-plugin.md")
        if b.directive.startswith("file my-plugin/")
    }
    assert sorted(files) == sorted(
        str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.suffix in (".py", ".toml")
    )
    for name, body in files.items():
        assert body + "\n" == (shipped / name).read_text(), name
