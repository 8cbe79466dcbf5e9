"""The body of ``sae-lens upload`` (imports SAE-Lens and huggingface_hub)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sae_lens_ext.errors import FAILURE, fail, one_line

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def upload(path: str, *, repo_id: str, sae_id: str | None, revision: str, add_readme: bool) -> int:
    folder = Path(path)
    if not folder.is_dir():
        raise fail(f"PATH {path}: no such folder")
    missing = [n for n in ("cfg.json", "sae_weights.safetensors") if not (folder / n).is_file()]
    if missing:
        raise fail(
            f"PATH {path} holds no trained SAE (missing {', '.join(missing)}); give the "
            "output folder of `sae-lens train` or `sae-lens demo`"
        )
    if not _REPO_ID.match(repo_id):
        raise fail(f"--repo-id {repo_id!r}: expected USER/NAME")
    sae_id = sae_id or folder.resolve().name
    architecture = json.loads((folder / "cfg.json").read_text()).get("architecture")

    from huggingface_hub.errors import HfHubHTTPError
    from sae_lens import SAE
    from sae_lens.training.upload_saes_to_huggingface import upload_saes_to_huggingface

    from sae_lens_ext.plugins import architectures as plugin_architectures

    try:
        SAE.load_from_disk(folder)  # refuse to upload what would not load back
    except Exception as exc:
        raise fail(
            f"PATH {path}: the SAE does not load ({type(exc).__name__}: {one_line(exc)}); "
            f"is the plugin for architecture {architecture!r} installed?"
        ) from exc
    try:
        upload_saes_to_huggingface(
            {sae_id: folder},
            hf_repo_id=repo_id,
            hf_revision=revision,
            show_progress=False,
            add_default_readme=add_readme,
        )
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise fail(
                f"the Hub refused {repo_id} (HTTP {status}): log in with `hf auth login` "
                "or set HF_TOKEN to a token with write access",
                FAILURE,
            ) from exc
        raise fail(f"upload to {repo_id} failed: {one_line(exc)}", FAILURE) from exc
    except Exception as exc:
        from sae_lens_ext.run.lm_config import is_network_error

        if is_network_error(exc):
            raise fail(
                "the Hugging Face Hub cannot be reached (offline?); retry with network "
                f"access ({type(exc).__name__})",
                FAILURE,
            ) from exc
        raise
    print(
        f"Uploaded {folder} to {repo_id} (revision {revision}) as {sae_id}/\n"
        f"Load it with: SAE.from_pretrained({repo_id!r}, {sae_id!r})"
        + (
            f"  (architecture {architecture!r} needs sae-lens-ext and its plugin installed)"
            if architecture in plugin_architectures()
            else ""
        )
    )
    return 0
