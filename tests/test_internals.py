"""The upstream names ``docs/internals.md`` lists: a change upstream fails here, loudly."""

from __future__ import annotations

import inspect
import re

from tests.helpers import REPO


def test_private_upstream_names_still_exist_with_the_signatures_we_call():
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, _parse_cfg_args

    assert list(inspect.signature(_parse_cfg_args).parameters) == ["args"]
    for name in ("_set_sae_metadata", "_compile_sae_if_needed"):
        method = getattr(LanguageModelSAETrainingRunner, name)
        assert list(inspect.signature(method).parameters) == ["self"], name


def test_runner_methods_a_cached_run_reuses_read_only_cfg_and_sae():
    """``run/lm.py``'s cached-activation runner skips upstream's constructor (no model, no
    store): the methods it reuses must read nothing else from ``self``."""
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    for name in ("save_final_sae", "_set_sae_metadata", "_compile_sae_if_needed"):
        source = inspect.getsource(getattr(LanguageModelSAETrainingRunner, name))
        assert set(re.findall(r"self\.(\w+)", source)) <= {"cfg", "sae"}, name


def test_public_seams_of_the_loop_exist():
    from sae_lens.training.sae_trainer import SAETrainer

    for name in (
        "step",
        "maybe_reset_sparsity",
        "full_sparsity_window_log",
        "set_final_sae_metadata",
        "save_checkpoint",
        "load_trainer_state",
        "build_train_step_log_dict",
    ):
        assert callable(getattr(SAETrainer, name)), name
    params = inspect.signature(SAETrainer.save_checkpoint).parameters
    assert {"checkpoint_name", "base_path"} <= set(params)
    init = inspect.signature(SAETrainer.__init__).parameters
    assert {"cfg", "sae", "data_provider", "evaluator", "save_checkpoint_fn"} <= set(init)


def test_every_private_name_used_is_documented():
    """Any ``._name`` of an upstream object called from the code is listed in internals.md."""
    documented = set(
        re.findall(r"`[\w.]*?(_[a-z]\w+)\(", (REPO / "docs" / "internals.md").read_text())
    )
    used = set()
    for path in [*(REPO / "sae_lens_ext").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        text = path.read_text()
        used |= set(re.findall(r"\brunner\.(_[a-z]\w+)\(", text))
        used |= set(re.findall(r"from sae_lens[\w.]* import (_[a-z]\w+)", text))
    assert used and used <= documented, used - documented


def test_private_sae_bench_names_still_exist_with_the_signatures_we_call():
    from sae_bench.evals.absorption.main import _aggregate_results_df

    assert list(inspect.signature(_aggregate_results_df).parameters) == ["df"]
