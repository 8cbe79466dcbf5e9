"""End-to-end: the unchanged upstream LM runner, save -> load in a fresh process, SAE-Bench."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, lm_runner_args, run_python

pytestmark = pytest.mark.e2e

TRAIN_AND_DUMP = """
import sys, json, torch
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, _parse_cfg_args
args = json.loads(sys.argv[1])
sae = LanguageModelSAETrainingRunner(_parse_cfg_args(args)).run()
assert sae.guard.steps == 2048 // 256, sae.guard.steps  # the core guard watched each step
torch.manual_seed(0)
x = torch.randn(16, 64)
with torch.no_grad():
    torch.save({"x": x, "acts": sae.encode(x), "out": sae(x)}, sys.argv[2])
"""

LOAD_AND_COMPARE = """
import sys, torch
from sae_lens import SAE
sae = SAE.load_from_disk(sys.argv[1])
ref = torch.load(sys.argv[2])
assert type(sae).__name__ == "TemporalConsistencySAE", type(sae)
assert sae.cfg.activation_fn == "gelu"
with torch.no_grad():
    assert torch.equal(sae.encode(ref["x"]), ref["acts"])
    assert torch.equal(sae(ref["x"]), ref["out"])
print("IDENTICAL")
"""


def test_lm_runner_trains_and_save_load_is_exact(tiny_lm, tmp_path):
    out = tmp_path / "sae"
    args = lm_runner_args(
        tiny_lm,
        "temporal_consistency",
        out,
        "--activations_mixing_fraction",
        "0",
        "--temporal_window",
        "4",
        "--temporal_coefficient",
        "0.1",
        "--activation_fn",
        "gelu",
        "--training_tokens",
        "2048",
    )[2:]  # drop "-m module": the runner is called in-process below
    ref = tmp_path / "ref.pt"
    run_python(
        TRAIN_AND_DUMP.replace("sys.argv[1]", repr(json.dumps(args))).replace(
            "sys.argv[2]", repr(str(ref))
        )
    )
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "temporal_consistency"
    details = cfg["metadata"]["training_architecture_details"]
    assert details["temporal_window"] == 4 and details["temporal_loss_form"] == "tv"
    proc = run_python(
        LOAD_AND_COMPARE.replace("sys.argv[1]", repr(str(out))).replace(
            "sys.argv[2]", repr(str(ref))
        )
    )
    assert "IDENTICAL" in proc.stdout


BAD_LAYOUTS = {
    # upstream's runner: the mixing fraction cannot be seen from the SAE, so the first step
    # says so (once) instead of passing silently; what the metadata records is checked
    "mixing": ([], "NO ERROR"),
    "context-not-multiple": (
        ["--activations_mixing_fraction", "0", "--context_size", "30"],
        "context_size=30 (after seqpos_slice): the SAE trains on windows of 4 consecutive "
        "positions, so windows would straddle two sequences; set context_size to a multiple of 4",
    ),
    "window-larger-than-context": (
        ["--activations_mixing_fraction", "0", "--temporal_window", "64"],
        "context_size=32: the SAE trains on windows of 64 consecutive positions, more than a "
        "context holds",
    ),
    "batch-not-multiple": (
        ["--activations_mixing_fraction", "0", "--train_batch_size_tokens", "250"],
        "training step 0: a batch of 250 rows is not whole windows of 4 consecutive positions",
    ),
}

RUN_BAD_AND_ABLATE = """
import json, sys
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, _parse_cfg_args
cases, ablation = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name, args in cases.items():
    try:
        LanguageModelSAETrainingRunner(_parse_cfg_args(args)).run()
        print(name, "=> NO ERROR")
    except Exception as exc:
        print(name, "=>", type(exc).__name__, str(exc).splitlines()[0])
sys.path.insert(0, REPO_ROOT)  # benchmarks/ is importable from the repository's root
from benchmarks.temporal_training import run_lm_ablation
rows = run_lm_ablation([2, 4], [0.1], runner_config=ablation,
                       sae_config={"d_in": 64, "d_sae": 128}, n_eval_sequences=16)
print("ROWS", json.dumps(rows))
"""


@pytest.fixture(scope="module")
def lm_report(tiny_lm, tmp_path_factory):
    """One fresh interpreter (one import of sae_lens): every bad layout through the upstream
    runner, then the LM ablation through upstream's multi-SAE runner."""
    tmp = tmp_path_factory.mktemp("lm_report")
    cases = {
        name: lm_runner_args(tiny_lm, "temporal_consistency", tmp / name, *extra)[2:]
        for name, (extra, _) in BAD_LAYOUTS.items()
    }
    ablation = dict(
        model_name=str(tiny_lm.model_dir),
        model_class_name="AutoModelForCausalLM",
        hook_names=tiny_lm.hook_name,
        dataset_path=str(tiny_lm.dataset_dir),
        streaming=False,
        context_size=32,
        training_tokens=2048,
        train_batch_size_tokens=256,
        store_batch_size_prompts=8,
        n_batches_in_buffer=32,
        output_path=None,
    )
    code = RUN_BAD_AND_ABLATE.replace("sys.argv[1]", repr(json.dumps(cases)))
    code = code.replace("sys.argv[2]", repr(json.dumps(ablation)))
    return run_python(code.replace("REPO_ROOT", repr(str(REPO))))


def test_lm_runner_bad_layout_fails_clearly(lm_report):
    """Each bad setting that the SAE can see fails at the first step with one line naming it."""
    lines = dict(line.split(" => ", 1) for line in lm_report.stdout.splitlines() if " => " in line)
    for name, (_, message) in BAD_LAYOUTS.items():
        assert message in lines[name], (name, lines.get(name), lm_report.stderr[-2000:])
    assert "cannot be checked from here" in lm_report.stderr  # the mixing case, said once


def test_lm_ablation_one_pass_through_multi_sae_runner(lm_report):
    line = next(x for x in lm_report.stdout.splitlines() if x.startswith("ROWS "))
    rows = json.loads(line[5:])
    assert [(r["window"], r["coefficient"]) for r in rows] == [(2, 0.1), (4, 0.1)]
    assert all(r["n_steps"] == 2048 // 256 and r["l0"] > 0 for r in rows)


SAE_BENCH = """
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer, HookedTransformerConfig
from sae_lens.training.activations_store import ActivationsStore
from sae_bench.evals.core.main import run_evals
from sae_bench.evals.core.eval_config import CoreEvalConfig
from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
from sae_lens_ext_plugins.temporal_consistency.data import SyntheticSequenceConfig
from sae_lens_ext_plugins.temporal_consistency.sae import TemporalConsistencyTrainingSAEConfig
import sys
sys.path.insert(0, REPO_ROOT)  # benchmarks/ is importable from the repository's root
from benchmarks.temporal_training import train_on_sequences
from sae_lens import SAE

torch.manual_seed(0)
model = HookedTransformer(HookedTransformerConfig(
    n_layers=1, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=64, act_fn="relu"))
hook = "blocks.0.hook_resid_post"
tokens = torch.randint(1, 64, (64, 32))
_, cache = model.run_with_cache(tokens, names_filter=[hook])
acts = cache[hook]  # (64, 32, 16): sequences for the temporal loss
result = train_on_sequences(TemporalConsistencyTrainingSAEConfig(d_in=16, d_sae=32, l1_coefficient=0.01),
                            acts, training_steps=20, batch_size=256, lr=3e-3)
result.sae.cfg.metadata.hook_name = hook
result.sae.cfg.metadata.model_name = "tiny"
result.sae.cfg.metadata.context_size = 32
result.sae.cfg.metadata.prepend_bos = False
result.sae.save_inference_model("SAVE_DIR")
sae = SAE.load_from_disk("SAVE_DIR", fold_W_dec_norm=True)  # as SAE-Bench loads pretrained SAEs
_, sae, _ = load_and_format_sae("custom", sae, "cpu")
# an iterable dataset: no set_format("torch"), whose formatter imports torchvision
dataset = Dataset.from_dict({"tokens": tokens.tolist()}).to_iterable_dataset()
store = ActivationsStore.from_sae(model=model, sae=sae, dataset=dataset,
                                  context_size=32, store_batch_size_prompts=4, train_batch_size_tokens=128,
                                  n_batches_in_buffer=4, device="cpu")
metrics, _ = run_evals(sae, store, model, CoreEvalConfig(
    batch_size_prompts=4, n_eval_reconstruction_batches=2, n_eval_sparsity_variance_batches=2,
    compute_sparsity_metrics=True, compute_variance_metrics=True, compute_kl=True, compute_ce_loss=True,
    compute_featurewise_density_statistics=False, compute_featurewise_weight_based_metrics=False,
    exclude_special_tokens_from_reconstruction=False))
l0 = metrics["sparsity"]["l0"]
ev = metrics["reconstruction_quality"]["explained_variance"]
print("METRICS", metrics)
assert l0 > 0, metrics
print("CORE", l0, ev, metrics["model_performance_preservation"]["ce_loss_score"])
"""


def test_sae_bench_core_runs(tmp_path):
    code = SAE_BENCH.replace("SAVE_DIR", str(tmp_path / "sae"))
    proc = run_python(code.replace("REPO_ROOT", repr(str(REPO))))
    assert "CORE" in proc.stdout
