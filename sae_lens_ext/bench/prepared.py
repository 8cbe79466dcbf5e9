"""One SAE and its model, prepared for SAE-Bench: what every evaluation module reads.

SAE-Bench reads ``sae.cfg.hook_name``, ``model_name``, ``hook_layer``... and adds its own
fields to the cfg (``general_utils.load_and_format_sae``). The evaluations get a shallow
copy of the caller's SAE (the same parameters) with a copy of its cfg, so the caller's
object and cfg are left as they were, except that the SAE is moved to the evaluation
device and dtype (as SAE-Bench's ``run_eval`` moves it).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_ext.bench.errors import OutOfContextError
from sae_lens_ext.bench.models import (
    default_device,
    load_hooked_transformer,
    load_sae,
    resolve_path,
    to_torch_dtype,
)
from sae_lens_ext.bench.process_state import global_rng_restored
from sae_lens_ext.bench.settings import (
    BenchSettings,
    out_of_context_benches,
    out_of_context_reason,
    sae_bench_config_class,
    sae_bench_dtype,
)

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass
class BenchRun:
    """One SAE and its model, prepared for SAE-Bench (what each bench runner reads).

    ``sae`` is the evaluations' copy (the caller's parameters, a cfg of its own with
    SAE-Bench's fields); ``settings`` has its paths made absolute.
    """

    sae: SAE
    model: HookedTransformer
    release: str
    sae_id: str
    model_name: str
    sae_hook_name: str
    device: str
    llm_dtype: str
    settings: BenchSettings
    output_dir: Path
    scratch: Path
    eval_id: str

    @property
    def sae_name(self) -> str:
        return f"{self.release}_{self.sae_id}"

    def result_path(self, bench: str) -> Path:
        """SAE-Bench's file for this SAE (general_utils.get_results_filepath)."""
        from sae_bench.sae_bench_utils import general_utils

        folder = self.output_dir / bench
        folder.mkdir(parents=True, exist_ok=True)
        return Path(general_utils.get_results_filepath(str(folder), self.release, self.sae_id))

    def config(self, bench: str, **values: Any) -> Any:
        """SAE-Bench's config of ``bench`` with ``values`` (``None``: its default), then overrides."""
        config_class = sae_bench_config_class(bench)
        names = {f.name for f in dataclasses.fields(config_class)}
        chosen = {k: v for k, v in values.items() if v is not None and k in names}
        return config_class(**{**chosen, **self.settings.overrides.get(bench, {})})

    def dataset_path(self, name: str) -> str:
        """``name`` as ``datasets.load_dataset`` should read it: ``data_dir/<name>`` when
        ``data_dir`` holds a copy there, else ``name`` itself (a hub id or a path)."""
        data_dir = self.settings.data_dir
        if data_dir is not None and (Path(data_dir) / name).exists():
            return str(Path(data_dir) / name)
        return name


@contextlib.contextmanager
def prepared_run(
    sae: SAE | str | Path,
    settings: BenchSettings,
    output_dir: str | Path,
    *,
    name: str | None = None,
    benches: Sequence[str] = (),
) -> Iterator[BenchRun]:
    """The SAE and its model, set up as SAE-Bench expects them, for the ``with`` block;
    :class:`OutOfContextError` (before the model loads) if ``benches`` cannot evaluate it."""
    from sae_bench.sae_bench_utils import get_eval_uuid

    device = settings.device or default_device()
    data_dir = _data_dir(settings.data_dir)
    callers_sae, release, sae_id = load_sae(sae, device=device, name=name)
    unfit = out_of_context_benches(callers_sae.cfg, benches)
    if unfit:
        raise OutOfContextError(f"{out_of_context_reason(callers_sae.cfg, unfit)}; leave them out")
    model_name, llm_dtype = _model_and_dtype(callers_sae, settings)
    metadata = callers_sae.cfg.metadata
    with global_rng_restored():  # a model may be initialised at random before its weights load
        model, hook_name = load_hooked_transformer(
            model_name,
            metadata.hook_name,
            device=device,
            dtype=llm_dtype,
            from_pretrained_kwargs=metadata.model_from_pretrained_kwargs,
        )
    callers_sae.to(device=device, dtype=to_torch_dtype(llm_dtype))
    fields: dict[str, Any] = {"model_name": model_name, "hook_name": hook_name}
    if metadata.prepend_bos is None:
        fields["prepend_bos"] = model.cfg.default_prepend_bos
    # paths the user gave are relative to the caller's working directory
    settings = dataclasses.replace(
        settings, dataset=resolve_path(settings.dataset), data_dir=data_dir
    )
    with tempfile.TemporaryDirectory(prefix="sae_bench_") as scratch:
        yield BenchRun(
            sae=sae_for_sae_bench(callers_sae, release, device, **fields),
            model=model,
            release=release,
            sae_id=sae_id,
            model_name=model_name,
            sae_hook_name=metadata.hook_name,
            device=device,
            llm_dtype=llm_dtype,
            settings=settings,
            output_dir=Path(output_dir).resolve(),
            scratch=Path(scratch),
            eval_id=get_eval_uuid(),
        )


def sae_for_sae_bench(sae: SAE, release: str, device: str, **metadata: Any) -> SAE:
    """The SAE as SAE-Bench reads it, the caller's object and cfg left as they are.

    A shallow copy of the module (the same parameters and buffers: nothing is duplicated,
    and it is on ``sae``'s device) with a deep copy of the cfg, ``metadata`` set on the
    copy's ``cfg.metadata`` and SAE-Bench's own cfg fields added by
    ``general_utils.load_and_format_sae``.
    """
    from sae_bench.sae_bench_utils import general_utils

    bench_sae = copy.copy(sae)
    bench_sae.cfg = copy.deepcopy(sae.cfg)
    for key, value in metadata.items():
        setattr(bench_sae.cfg.metadata, key, value)
    general_utils.load_and_format_sae(release, bench_sae, device)
    return bench_sae


def _model_and_dtype(sae: SAE, settings: BenchSettings) -> tuple[str, str]:
    """The model to load (a local folder made absolute) and its dtype."""
    metadata = sae.cfg.metadata
    model_name = resolve_path(settings.model_name or metadata.model_name)
    if not metadata.hook_name:
        raise ValueError("the SAE's cfg.metadata has no hook_name: SAE-Bench needs one")
    if not model_name:
        raise ValueError("the SAE's cfg.metadata has no model_name: set BenchSettings.model_name")
    return model_name, settings.dtype or sae_bench_dtype(model_name)


def _data_dir(path: str | Path | None) -> Path | None:
    """``data_dir`` made absolute (the caller's working directory), checked to be a folder."""
    if path is None:
        return None
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir {path} is not a folder")
    return folder
