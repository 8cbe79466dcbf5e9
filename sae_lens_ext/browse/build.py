"""``sae-lens browse``: read whole contexts through an SAE, keep bounded statistics of its
latents, write the static browser (and, with ``--export``, other tools' formats)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens_ext.browse.collect import DEFAULT_CONTEXTS
from sae_lens_ext.errors import fail

#: Tokens read by default: a latent that fires once in 10,000 tokens gets about 100
#: firings to choose its top contexts from.
DEFAULT_TOKENS = 1_000_000
#: Latents browsed by default (the first ones; all of them when the SAE has fewer).
DEFAULT_LATENTS = 1_000
#: Byte-level BPE marks a tokenizer without a byte-level decoder leaves in its text.
BYTE_LEVEL = str.maketrans({"\u0120": " ", "\u010a": "\n", "\u0109": "\t"})


@dataclass(kw_only=True)
class BrowseOptions:
    """The options of ``sae-lens browse`` (see ``sae-lens browse --help``)."""

    latents: str | None = None
    tokens: int = DEFAULT_TOKENS
    contexts: int = DEFAULT_CONTEXTS
    output: str | None = None
    overwrite: bool = False
    export: tuple[str, ...] = ()
    progress: str = "auto"
    device: str | None = None
    dtype: str = "float32"
    model_name: str | None = None
    model_class_name: str | None = None
    dataset: str | None = None
    context_size: int | None = None


def parse_latents(spec: str | None, d_sae: int | None = None) -> list[int]:
    """``0:200,512,1000:`` -> latent indices (``START:END`` ranges, END excluded, either
    bound optional, and single latents); ``None``: the first ``DEFAULT_LATENTS``; ``all``:
    every latent. ``d_sae=None`` checks the syntax only."""
    size = d_sae if d_sae is not None else 1 << 62
    if spec is None:
        return list(range(min(DEFAULT_LATENTS, size)))
    if spec.strip() == "all":
        return list(range(size)) if d_sae is not None else []
    out: list[int] = []
    for part in spec.split(","):
        lo_text, colon, hi_text = part.partition(":")
        try:
            lo = int(lo_text) if lo_text.strip() else 0
            hi = (int(hi_text) if hi_text.strip() else size) if colon else lo + 1
        except ValueError as exc:
            raise fail(
                f"--latents {spec}: expected latents as START:END or numbers, comma-separated "
                "(e.g. 0:200,512), or 'all'"
            ) from exc
        if lo < 0 or hi <= lo:
            raise fail(f"--latents {spec}: {part.strip()} selects no latent")
        if hi > size:
            raise fail(f"--latents {spec}: {part.strip()} is outside the SAE's {d_sae} latents")
        out += list(range(lo, hi)) if d_sae is not None else []
    return list(dict.fromkeys(out))


def output_folder(target: str, options: BrowseOptions) -> Path:
    """Where the browser goes (``-o``; default ``RUN/browser``, ``./browser`` for a Hub id);
    refused before anything loads if it holds something it must not replace."""
    from sae_lens_ext.browse.render import GENERATOR

    if options.output:
        folder = Path(options.output)
    else:
        folder = Path(target) / "browser" if Path(target).is_dir() else Path("browser")
    if folder.exists() and not folder.is_dir():
        raise fail(f"-o {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()):
        index = folder / "index.html"
        ours = index.is_file() and GENERATOR in index.read_text(errors="replace")[:2000]
        if not ours:
            raise fail(f"-o {folder} holds other files; give a new or empty folder")
        if not options.overwrite:
            raise fail(f"-o {folder} already holds a browser; pass --overwrite to replace it")
    return folder


@contextlib.contextmanager
def staged_output(folder: Path) -> Iterator[Path]:
    """A hidden folder to write into; on success it replaces ``folder`` whole (the old
    browser is removed only then); on failure nothing is left behind."""
    parent = next(p for p in (folder.parent, *folder.parent.parents) if p.is_dir())
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=parent))
    try:
        yield tmp
        folder.parent.mkdir(parents=True, exist_ok=True)
        old = folder.with_name(f".replaced-{folder.name}-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TokenProgress:
    """Tokens read: a rich bar on a terminal, about 20 plain lines otherwise, or nothing."""

    def __init__(self, total: int, mode: str) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.mode = ("bar" if sys.stderr.isatty() else "plain") if mode == "auto" else mode
        self._bar: Any = None
        self._next_line = 0

    def __enter__(self) -> TokenProgress:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]reading"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,} tokens"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task("read", total=self.total)
        return self

    def advance(self, tokens: int) -> None:
        self.done += tokens
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done, self.total))
        elif self.mode == "plain" and self.done >= self._next_line:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            print(
                f"read {self.done:,}/{self.total:,} tokens ({rate:,.0f} tokens/s)",
                file=sys.stderr,
                flush=True,
            )
            self._next_line = self.done + max(1, self.total // 20)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def read(source: Any, latents: list[int], options: BrowseOptions, progress: TokenProgress) -> Any:
    """Stream ``options.tokens`` tokens of whole contexts through the SAE; the statistics
    the browser shows (:class:`~sae_lens_ext.browse.data.BrowserData`)."""
    import torch

    from sae_lens_ext.browse.collect import LatentCollector, batch_contexts, encode_contexts
    from sae_lens_ext.browse.source import contexts, sample_size

    sae, T = source.sae, source.context_size
    d_sae = int(sae.cfg.d_sae)
    collector = LatentCollector(
        d_sae, latents, context_size=T, contexts=options.contexts, device=sae.device
    )
    special = torch.tensor(source.special_ids, dtype=torch.long)
    sample: list[torch.Tensor] = []
    n_sample = sample_size(T, int(sae.cfg.d_in))
    for tokens, acts in contexts(source, options.tokens, batch_contexts(T, d_sae)):
        kept = sum(s.shape[0] for s in sample)
        if kept < n_sample:
            sample.append(acts[: n_sample - kept].float().cpu())
        keep = ~torch.isin(tokens, special.to(tokens.device))
        collector.update(encode_contexts(sae, acts), tokens, keep)
        progress.advance(tokens.numel())
    if collector.n_contexts == 0:
        raise fail(
            f"the dataset {source.settings['dataset_path']} holds no context of {T} tokens; "
            "give another --dataset or a smaller --context-size"
        )
    return finish(collector, source, latents, torch.cat(sample))


def finish(collector: Any, source: Any, latents: list[int], sample: Any) -> Any:
    import torch

    from sae_lens_ext.browse.collect import TopContexts
    from sae_lens_ext.browse.data import BrowserData
    from sae_lens_ext.metrics import EvalData

    n_tokens = int(collector.n_tokens)
    frequencies = collector.counts.double().cpu() / max(1, n_tokens)
    order = torch.argsort(-frequencies, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, len(order) + 1)
    top = collector.top
    tokenizer, texts = source.tokenizer, {}

    def token_text(token: int) -> str:
        if token not in texts:
            try:
                text = tokenizer.decode([token], clean_up_tokenization_spaces=False)
            except Exception:
                text = f"<{token}>"
            texts[token] = text.translate(BYTE_LEVEL)
        return texts[token]

    return BrowserData(
        sae=source.sae,
        latents=latents,
        d_sae=len(frequencies),
        context_size=source.context_size,
        n_tokens=n_tokens,
        n_contexts=collector.n_contexts,
        frequencies=frequencies,
        ranks=ranks,
        max_values=collector.max_values.cpu(),
        contexts=TopContexts(
            *(getattr(top, f).cpu() for f in ("max_values", "acts", "tokens", "context", "start"))
        ),
        hist_counts=collector.hist.cpu(),
        hist_edges=collector.histogram_edges(),
        sample=EvalData(sample, description=f"{source.settings['model_name']} {source.hook_name}"),
        token_text=token_text,
        model_name=str(source.settings["model_name"]),
        hook_name=source.hook_name,
        special_ids=list(source.special_ids),
    )


def plugin_panels(sae: Any, data: Any) -> list[Any]:
    """Every plugin's ``browser_panels`` for ``sae``, checked."""
    from sae_lens_ext.browse.data import Panel
    from sae_lens_ext.plugins import load_plugins

    panels: list[Panel] = []
    for contributed in load_plugins().hook.browser_panels(sae=sae, data=data):
        for panel in contributed or []:
            if not isinstance(panel, Panel):
                raise TypeError(f"browser_panels returned {panel!r}, not a Panel")
            panels.append(panel)
    return panels


def facts(source: Any) -> dict[str, str]:
    """What the index page says about the SAE and its data."""
    cfg, settings = source.sae.cfg, source.settings
    hook = str(settings["hook_name"])
    if source.hook_name != hook:
        hook += f" (read at {source.hook_name})"
    return {
        "architecture": cfg.architecture(),
        "d_sae": f"{cfg.d_sae:,}",
        "model": str(settings["model_name"]),
        "hook": hook,
        "dataset": str(settings["dataset_path"]),
    }


def browse(target: str, options: BrowseOptions) -> int:
    """The body of ``sae-lens browse``."""
    from sae_lens_ext.browse.source import open_source
    from sae_lens_ext.run.lm_config import check_device

    parse_latents(options.latents)  # the syntax, before anything loads
    folder = output_folder(target, options)
    if options.device:
        check_device("device", options.device)
    device = options.device or _default_device()
    given = {
        "model_name": options.model_name,
        "model_class_name": options.model_class_name,
        "dataset_path": options.dataset,
        "context_size": options.context_size,
    }
    source = open_source(target, given, device, options.dtype)
    latents = parse_latents(options.latents, int(source.sae.cfg.d_sae))
    with TokenProgress(options.tokens, options.progress) as progress:
        data = read(source, latents, options, progress)
    written = write(folder, source, data, options)
    read_tokens = data.n_contexts * source.context_size
    ended = "; the dataset ended" if read_tokens < options.tokens else ""
    print(
        f"Browser of {len(latents):,} latents of {source.name} written to {folder} "
        f"({read_tokens:,} tokens read{ended}): open {folder / 'index.html'}"
    )
    for path in written:
        print(f"Exported {path}")
    return 0


def write(folder: Path, source: Any, data: Any, options: BrowseOptions) -> list[Path]:
    from sae_lens_ext.browse.logits import promoted_tokens
    from sae_lens_ext.browse.render import write_browser

    reason = source.no_unembedding
    if reason is None and int(source.sae.cfg.d_in) != int(source.model.cfg.d_model):
        reason = f"the SAE's d_in ({source.sae.cfg.d_in}) is not the model's d_model"
    promoted = None if reason else promoted_tokens(source.model, source.sae, data.latents)
    panels = plugin_panels(source.sae, data)
    exported = []
    with staged_output(folder) as tmp:
        write_browser(tmp, data, promoted, panels, facts(source), source.name, reason)
        if "neuronpedia" in options.export:
            from sae_lens_ext.browse.export import write_neuronpedia

            exported.append(write_neuronpedia(tmp, data, promoted, source))
    return [folder / p.relative_to(tmp) for p in exported]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
