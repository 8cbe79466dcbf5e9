"""Language-model sweeps: ``sae-lens train`` per variant, or one pass over the activations
for a group of variants.

Variants share a pass when everything but their SAE config is equal (model, hook, dataset,
context, batch size, training tokens, learning-rate schedule, seed, devices...) and their
SAEs read the data the same way (the same batch window and activation normalisation):
the conditions under which upstream's ``MultiSAETrainingRunner`` trains several SAEs on
one activation stream, plus the two that make each variant's batches exactly those
``sae-lens train`` would give it. The pass is the one of ``sae-lens train``: the first
variant's upstream runner (model, ``ActivationsStore``, window batches) serves each batch
to every variant's upstream ``SAETrainer``, stepped in lockstep by the core's
:class:`~sae_lens_ext.run.loop.TrainingLoop` (after-step work, guards, the training log),
as upstream's ``MultiSAETrainer`` steps its per-SAE trainers. Each variant starts from the
weights ``sae-lens train`` would give it (same seed, same random state) and ends as a
complete ``sae-lens train`` folder. A shared pass keeps no checkpoints: interrupted, it
starts again on the next run (finished variants are kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sae_lens_ext.errors import CliError, fail
from sae_lens_ext.run.sweep import Sweep, Variant, begin_variant, interrupted, is_done

#: Runner settings that do not change the activations a variant trains on.
NOT_DATA = (
    "sae",
    "output_path",
    "checkpoint_path",
    "logger",
    "n_checkpoints",
    "save_final_checkpoint",
)

Group = list[tuple[Variant, Any]]


def variant_args(variant: Variant) -> list[str]:
    """The variant's ``sae-lens train`` arguments (its output folder set by the sweep)."""
    from sae_lens_ext.run.lm_config import options_to_args

    settings = dict(variant.settings)
    for key in ("output_path", "checkpoint_path", "log_every", "progress"):
        if key in settings:
            raise fail(f"variant {variant.name}: {key} is set by the sweep; remove it")
    return options_to_args({**settings, "output_path": str(variant.folder)})


def parse_variant(sweep: Sweep, variant: Variant) -> Any:
    """Upstream's runner config of the variant, with every check ``sae-lens train`` makes
    before loading a model."""
    from sae_lens_ext.run import lm_config as checks
    from sae_lens_ext.run.lm import parse_config

    args = variant_args(variant)
    try:
        checks.check_architecture(args)
        return parse_config(args, None)
    except CliError as exc:
        raise fail(f"{sweep.file}: variant {variant.name}: {exc.format_message()}") from exc


def share_key(cfg: Any, variant: Variant) -> str | None:
    """Variants with the same key can share a pass; ``None``: this one trains alone."""
    from sae_lens_ext.data.windows import batch_window
    from sae_lens_ext.run.output import complete_checkpoints

    alone = (
        cfg.compile_sae
        or cfg.from_pretrained_path is not None
        or cfg.use_cached_activations
        or cfg.logger.log_to_wandb
        or complete_checkpoints(Path(cfg.checkpoint_path) if cfg.checkpoint_path else None)
    )
    if alone:
        return None
    data = {k: v for k, v in cfg.to_dict().items() if k not in NOT_DATA}
    data["batch_window"] = batch_window(cfg.sae)
    data["normalize_activations"] = cfg.sae.normalize_activations
    return json.dumps(data, sort_keys=True, default=str)


def group_lm(sweep: Sweep) -> list[Group]:
    """Parse every variant, then group those that can share a pass (in file order)."""
    groups: dict[str, Group] = {}
    for i, variant in enumerate(sweep.variants):
        cfg = parse_variant(sweep, variant)
        key = share_key(cfg, variant) if sweep.share_activations else None
        groups.setdefault(key or f"alone-{i}", []).append((variant, cfg))
    return list(groups.values())


def train_lm_variants(
    sweep: Sweep, groups: list[Group], log_every: int | None, progress: str
) -> None:
    from sae_lens_ext.run.lm import run_lm
    from sae_lens_ext.run.output import RunOutput

    for group in groups:
        todo = []
        for variant, cfg in group:
            if is_done(sweep, variant):
                variant.status = "done earlier"
                print(f"sweep: {variant.name}: done, skipped")
            else:
                todo.append((variant, cfg))
        if len(todo) > 1:
            train_shared(sweep, todo, log_every, progress)
            continue
        for variant, cfg in todo:
            resume = bool(_checkpoints(cfg))
            output = RunOutput(variant.folder, _checkpoint_dir(cfg), overwrite=False, resume=resume)
            output.check()
            print(f"sweep: {variant.name}: {'resuming' if output.resume else 'training'}")
            begin_variant(sweep, variant)
            try:
                run_lm(cfg, output, log_every=log_every, progress=progress)
            except CliError as exc:
                raise interrupted(variant, exc) from exc
            variant.status = "resumed" if output.resume else "trained"


def _checkpoint_dir(cfg: Any) -> Path | None:
    return Path(cfg.checkpoint_path) if cfg.checkpoint_path else None


def _checkpoints(cfg: Any) -> list[Path]:
    from sae_lens_ext.run.output import complete_checkpoints

    return complete_checkpoints(_checkpoint_dir(cfg))


# --- one pass for several variants ---------------------------------------------------------------


def build_runners(cfgs: list[Any]) -> list[Any]:
    """Upstream's runner of each variant on one model (loaded once), each SAE initialised
    from the random state ``sae-lens train`` would have; the state after the first
    variant's set-up is restored, so the shared data stream is the first variant's."""
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    from sae_lens_ext.run import lm
    from sae_lens_ext.run.lm_config import hub_error
    from sae_lens_ext.run.loop import rng_state, seed_everything, set_rng_state

    first = cfgs[0]
    seed_everything(first.seed)
    model = lm.load_model(first)
    lm.check_context(first, model)
    before, after, runners = rng_state(), None, []
    for cfg in cfgs:
        set_rng_state(before)
        try:
            with lm._quiet_override_warning():
                runners.append(LanguageModelSAETrainingRunner(cfg, override_model=model))
        except Exception as exc:
            raise hub_error(
                "dataset_path", cfg.dataset_path, exc, "--dataset_path ./data-dir --streaming False"
            ) from exc
        after = after or rng_state()
    set_rng_state(after or before)
    for runner in runners:
        lm.check_d_in(runner)
        lm.record_inputs(runner)
    return runners


def train_shared(sweep: Sweep, group: Group, log_every: int | None, progress: str) -> None:
    """Train a group of variants on one pass over the activations (see the module docstring)."""
    from sae_lens_ext.data.windows import mark_layout_served
    from sae_lens_ext.run import lm
    from sae_lens_ext.run.output import METRICS_FILENAME, RunOutput, write_json

    variants, cfgs = [v for v, _ in group], [c for _, c in group]
    print(
        f"sweep: {', '.join(v.name for v in variants)}: training in one pass over the activations",
        file=sys.stderr,
    )
    outputs = [RunOutput(v.folder, None, overwrite=False, resume=False) for v in variants]
    for variant, output in zip(variants, outputs, strict=True):
        output.check()
        begin_variant(sweep, variant)
    t0 = time.perf_counter()
    runners = build_runners(cfgs)
    source = lm.data_provider(runners[0])
    for runner in runners:
        mark_layout_served(runner.sae)
    loops = _lockstep_loops(runners, source, outputs, log_every, progress)
    try:
        with contextlib.ExitStack() as stack:
            for output in outputs:
                stack.enter_context(output.running())
            loops[0].run()  # finishes the first; each other one is finished below
            for i, (variant, runner, loop, output) in enumerate(
                zip(variants, runners, loops, outputs, strict=True)
            ):
                sae = loop.finish() if i else loop.sae
                metrics = lm.run_summary(runner.cfg, loop, t0)
                sparsity = loop.trainer.log_feature_sparsity
                with output.staging() as tmp:
                    runner.save_final_sae(sae, str(tmp), log_feature_sparsity=sparsity)
                    write_json(tmp / METRICS_FILENAME, metrics)
                variant.status = f"trained (one pass for {len(variants)})"
    except CliError as exc:
        together = Variant("+".join(v.name for v in variants), {}, {})
        raise interrupted(together, exc) from exc
    finally:
        if hasattr(source, "close"):
            source.close()


def _lockstep_loops(
    runners: list[Any],
    source: Iterator[torch.Tensor],
    outputs: list[Any],
    log_every: int | None,
    progress: str,
) -> list[Any]:
    """The core loop of each variant, the first reading ``source`` and stepping the others
    in lock-step on its batches; checkpoints off (see the module docstring)."""
    from sae_lens_ext.run.loop import LockstepData, TrainingLoop
    from sae_lens_ext.run.progress import RunLogger
    from sae_lens_ext.training.sae import make_trainer

    def loop(i: int, lockstep: list[Any]) -> Any:
        cfg = dataclasses.replace(
            runners[i].cfg.to_sae_trainer_config(),
            n_checkpoints=0,
            checkpoint_path=None,
            save_final_checkpoint=False,
        )
        data = source if i == 0 else LockstepData()
        trainer = make_trainer(cfg, runners[i].sae, data, evaluator=runners[i].evaluator)
        logger = RunLogger(
            outputs[i].log_path,
            cfg.total_training_samples,
            cfg.train_batch_size_samples,
            log_every,
            progress if i == 0 else "none",
        )
        return TrainingLoop(trainer, data, logger=logger, lockstep=lockstep)

    others = [loop(i, []) for i in range(1, len(runners))]
    return [loop(0, others), *others]


# --- evaluation -----------------------------------------------------------------------------------


def bench_option_strings(options: dict[str, Any]) -> tuple[str, ...]:
    """``{bench: {field: value}}`` as ``--bench-option BENCH.FIELD=VALUE`` strings."""
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise fail("bench_options: expected {bench: {field: value}}")
    return tuple(
        f"{bench}.{name}={json.dumps(value)}"
        for bench, fields in options.items()
        for name, value in fields.items()
    )


def missing_benches(folder: Path, benches: list[str]) -> list[str]:
    from sae_lens_ext.run.results import BENCH_DIR

    return [b for b in benches if not any((folder / BENCH_DIR / b).glob("*_eval_results.json"))]


def fit_benches(variant: Variant, benches: list[str]) -> list[str]:
    """``benches`` without those that cannot evaluate the variant's SAE (saying why)."""
    from sae_lens import SAE

    from sae_lens_ext.bench import out_of_context_benches, out_of_context_reason

    cfg = SAE.load_from_disk(variant.folder).cfg if benches else None
    unfit = out_of_context_benches(cfg, benches)
    if unfit:
        print(f"sweep: {variant.name}: skipped {out_of_context_reason(cfg, unfit)}")
    return [bench for bench in benches if bench not in unfit]


@dataclasses.dataclass
class EvaluationPlan:
    """What ``evaluate:`` of a train sweep asks for, checked before anything trains."""

    samples: int
    benches: list[str]
    bench_options: tuple[str, ...]
    settings: dict[str, Any]


def evaluation_plan(sweep: Sweep) -> EvaluationPlan:
    """The sweep's ``evaluate:`` settings, every key and value checked (one line naming the
    file otherwise)."""
    from sae_lens_ext.run.evaluate_bench import BenchOptions, bench_names, parse_bench_options
    from sae_lens_ext.run.values import NotANumber, coerce, field_types, to_number

    settings = dict(sweep.evaluate)
    where = f"{sweep.file}: evaluate:"
    try:
        samples = int(to_number(settings.pop("samples", 100_000), int))
    except NotANumber as exc:
        raise fail(f"{where} samples: {exc}") from None
    bench = settings.pop("bench", None)
    try:
        benches = (
            bench_names(",".join(bench) if isinstance(bench, list) else str(bench)) if bench else []
        )
        extra = bench_option_strings(settings.pop("bench_options", {}) or {})
        parse_bench_options(extra)
    except CliError as exc:
        raise fail(f"{where} {exc.format_message()}") from exc
    types = field_types(BenchOptions)
    known = set(types) - {"benches", "bench_options", "overrides"}  # the keys above set these
    unknown = sorted(set(settings) - known)
    if unknown:
        raise fail(
            f"{where} unknown key {unknown[0]!r}; known: "
            f"samples, bench, bench_options, {', '.join(sorted(known - {'samples'}))}"
        )
    for key, value in settings.items():
        try:
            settings[key] = coerce(value, types[key])
        except NotANumber as exc:
            raise fail(f"{where} {key}: {value!r}: {exc}") from None
    return EvaluationPlan(samples, benches, extra, settings)


def evaluate_lm_variants(sweep: Sweep, plan: EvaluationPlan | None = None) -> None:
    """``sae-lens evaluate`` of every trained variant that lacks it (``evaluation.json``),
    then the SAE-Bench benches of ``evaluate: bench:`` that it lacks."""
    from sae_lens_ext.run.evaluate import evaluate
    from sae_lens_ext.run.evaluate_bench import BenchOptions, evaluate_bench
    from sae_lens_ext.run.results import EVALUATION_FILENAME

    plan = plan or evaluation_plan(sweep)
    for variant in sweep.variants:
        if not (variant.folder / "cfg.json").is_file():
            continue
        if not (variant.folder / EVALUATION_FILENAME).is_file():
            print(f"sweep: {variant.name}: evaluating")
            evaluate(str(variant.folder), samples=plan.samples, seed=1234, as_json=False)
        todo = fit_benches(variant, missing_benches(variant.folder, plan.benches))
        if todo:
            print(f"sweep: {variant.name}: SAE-Bench {', '.join(todo)}")
            options = BenchOptions(
                benches=",".join(todo),
                bench_options=plan.bench_options,
                samples=plan.samples,
                name=variant.name,
                **plan.settings,
            )
            evaluate_bench(str(variant.folder), options)
