"""End-to-end tests of ``freq_ordered`` through unchanged upstream entry points, each in a
fresh interpreter: the LM runner (train, checkpoint, resume), SyntheticSAERunner,
MultiSAETrainingRunner, save -> load in another process, and SAE-Bench's core evals."""

from __future__ import annotations

import json

import pytest

from tests.helpers import lm_runner_args, run_module, run_python

pytestmark = pytest.mark.e2e

OPTIONS = {
    "plain": {},
    "layer_norm": {"layer_norm": True},
    "skip": {"skip_projection": True},
    "attention": {"attention": True, "attention_window": 8},
    "adaptive_resample": {"adaptive_l1": True, "resample_dead_every": 5},
    "all": {"layer_norm": True, "skip_projection": True, "attention": True, "attention_window": 8},
}

RUNNER_OPTIONS = {k: OPTIONS[k] for k in ("plain", "adaptive_resample", "all")}


def test_lm_runner_trains_and_resumes_with_frequency_buffer(tiny_lm, tmp_path):
    ckpt = tmp_path / "ckpt"
    flags = [
        "--ordering_coefficient",
        "0.3",
        "--sort_latents_every",
        "4",
        "--activations_mixing_fraction",
        "0",
    ]
    run_module(
        lm_runner_args(
            tiny_lm,
            "freq_ordered",
            tmp_path / "out1",
            *flags,
            "--n_checkpoints",
            "1",
            "--checkpoint_path",
            str(ckpt),
        )
    )
    (checkpoint,) = [
        p.parent
        for p in ckpt.glob("*/*/sae_weights.safetensors")
        if not p.parent.name.startswith("final")
    ]
    run_module(
        lm_runner_args(
            tiny_lm,
            "freq_ordered",
            tmp_path / "out2",
            *flags,
            "--resume_from_checkpoint",
            str(checkpoint),
        )
    )
    from safetensors.torch import load_file

    ck = load_file(checkpoint / "sae_weights.safetensors")
    a, b = (load_file(tmp_path / d / "sae_weights.safetensors") for d in ("out1", "out2"))
    name = json.loads((tmp_path / "out2" / "cfg.json").read_text())["architecture"]
    at_ckpt, full, resumed = (int(t["frequency_updates"]) for t in (ck, a, b))
    ck_sum, resumed_sum = float(ck["latent_frequency"].sum()), float(b["latent_frequency"].sum())
    assert name == "freq_ordered"
    assert 0 < at_ckpt < full
    assert resumed == full  # the resumed run counted on from the checkpoint's buffer
    assert ck_sum > 0 and resumed_sum > 0


def test_synthetic_runner_and_fresh_process_round_trip(tmp_path):
    """Train with SyntheticSAERunner (plain, adaptive L1 + resampling, and every
    architecture option at once), then load each in another process."""
    run_python(
        f"""
import json, torch
from sae_lens.synthetic import SyntheticSAERunner, SyntheticSAERunnerConfig, SyntheticModelConfig
from sae_lens.config import LoggingConfig
from sae_lens_ext_plugins.freq_ordered.sae import FreqOrderedTrainingSAEConfig
options = json.loads({json.dumps(json.dumps(RUNNER_OPTIONS))})
torch.manual_seed(0)
x = torch.randn(64, 16)
for name, kw in options.items():
    cfg = SyntheticSAERunnerConfig(
        synthetic_model=SyntheticModelConfig(num_features=48, hidden_dim=16, seed=0),
        sae=FreqOrderedTrainingSAEConfig(d_in=16, d_sae=64, sort_latents_every=4, **kw),
        training_samples=10_240, batch_size=512, lr=3e-3, eval_samples=2048,
        output_path={str(tmp_path)!r} + '/' + name, checkpoint_path=None,
        dead_feature_window=5, logger=LoggingConfig(log_to_wandb=False))
    result = SyntheticSAERunner(cfg).run()
    sae = result.sae.eval()
    assert result.final_eval.mcc > 0 and sae.frequency_updates.item() == 20, name
    acts = sae.encode(x)
    torch.save({{'acts': acts, 'out': sae.decode(acts), 'freq': sae.latent_frequency}},
               {str(tmp_path)!r} + '/' + name + '/expected.pt')
"""
    )
    out = run_python(
        f"""
import torch
from sae_lens import SAE
torch.manual_seed(0)
x = torch.randn(64, 16)
for name in {list(RUNNER_OPTIONS)!r}:
    sae = SAE.load_from_disk({str(tmp_path)!r} + '/' + name)
    exp = torch.load({str(tmp_path)!r} + '/' + name + '/expected.pt')
    acts = sae.encode(x)
    assert torch.equal(acts, exp['acts']), name
    assert torch.equal(sae.decode(acts), exp['out']), name
    assert torch.equal(sae.latent_frequency, exp['freq']), name
print('ok')
"""
    )
    assert out.stdout.strip().endswith("ok")


def test_multi_sae_runner_and_sae_bench_core_evals(tiny_lm, tmp_path):
    out = run_python(
        f"""
import json, torch
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
from sae_lens.config import LoggingConfig
from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
from sae_lens_ext_plugins.freq_ordered.sae import FreqOrderedTrainingSAEConfig
cfg = MultiSAETrainingRunnerConfig(
    saes={{'fo': FreqOrderedTrainingSAEConfig(d_in=64, d_sae=128, sort_latents_every=4, layer_norm=True),
           'std': StandardTrainingSAEConfig(d_in=64, d_sae=128)}},
    hook_names={tiny_lm.hook_name!r}, model_name={str(tiny_lm.model_dir)!r},
    model_class_name='AutoModelForCausalLM', dataset_path={str(tiny_lm.dataset_dir)!r},
    streaming=False, context_size=32, training_tokens=4096, train_batch_size_tokens=256,
    store_batch_size_prompts=8, n_batches_in_buffer=32, n_eval_batches=1,
    logger=LoggingConfig(log_to_wandb=False), output_path={str(tmp_path / "multi")!r},
    checkpoint_path=None)
saes = MultiSAETrainingRunner(cfg).run()
fo = saes['fo']
assert type(fo).__name__ == 'FreqOrderedTrainingSAE' and fo.frequency_updates.item() == 16

# SAE-Bench core evals on the freq_ordered SAE just trained and saved
from sae_lens import SAE
from sae_lens.load_model import load_model
from sae_lens.training.activations_store import ActivationsStore
from sae_bench.evals.core.main import run_evals
from sae_bench.evals.core.eval_config import CoreEvalConfig
sae = SAE.load_from_disk({str(tmp_path / "multi" / "fo")!r})
assert type(sae).__name__ == 'FreqOrderedSAE' and sae.cfg.metadata.hook_name == {tiny_lm.hook_name!r}
sae.fold_W_dec_norm()
from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
_, sae, _ = load_and_format_sae('custom', sae, 'cpu')  # checks unit decoder norms, fills cfg
model = load_model('AutoModelForCausalLM', {str(tiny_lm.model_dir)!r}, device='cpu',
                   hook_names=[{tiny_lm.hook_name!r}])
store = ActivationsStore.from_sae(model, sae, {str(tiny_lm.dataset_dir)!r}, context_size=32,
                                  streaming=False, store_batch_size_prompts=8,
                                  n_batches_in_buffer=32, train_batch_size_tokens=256)
metrics, _ = run_evals(sae, store, model, CoreEvalConfig(
    model_name='tiny-gpt2', batch_size_prompts=8, n_eval_reconstruction_batches=2,
    n_eval_sparsity_variance_batches=2, compute_kl=True, compute_ce_loss=True,
    compute_sparsity_metrics=True, compute_variance_metrics=True))
print('METRICS', json.dumps(metrics, default=str))
"""
    )
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("METRICS ")]
    metrics = json.loads(line.removeprefix("METRICS "))
    assert metrics["reconstruction_quality"]["explained_variance"] > -1
    assert metrics["sparsity"]["l0"] > 0
    assert 0 < metrics["model_behavior_preservation"]["kl_div_score"] <= 1.5
