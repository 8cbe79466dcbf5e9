"""The body of ``sae-lens upload`` (imports SAE-Lens and huggingface_hub)."""

from __future__ import annotations

import re
from pathlib import Path

from sae_lens_ext.errors import FAILURE, fail, one_line

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def upload(path: str, *, repo_id: str, sae_id: str | None, revision: str, add_readme: bool) -> int:
    """Check that PATH holds an SAE that loads, then run SAE-Lens's uploader."""
    folder = Path(path)
    if not _REPO_ID.match(repo_id):
        raise fail(f"--repo-id {repo_id!r}: expected USER/NAME")
    from sae_lens_ext.plugins import architectures as plugin_architectures
    from sae_lens_ext.run.output import load_saved_sae

    architecture = load_saved_sae(folder).cfg.architecture()  # refuse what would not load back
    sae_id = sae_id or folder.resolve().name
    push(folder, repo_id, sae_id, revision, add_readme)
    note = (
        f"  (architecture {architecture!r} needs sae-lens-ext and its plugin installed)"
        if architecture in plugin_architectures()
        else ""
    )
    print(
        f"Uploaded {folder} to {repo_id} (revision {revision}) as {sae_id}/\n"
        f"Load it with: SAE.from_pretrained({repo_id!r}, {sae_id!r}){note}"
    )
    return 0


def push(folder: Path, repo_id: str, sae_id: str, revision: str, add_readme: bool) -> None:
    """``upload_saes_to_huggingface``, with the Hub's refusals as one line naming the fix."""
    from huggingface_hub.errors import HfHubHTTPError
    from sae_lens.training.upload_saes_to_huggingface import upload_saes_to_huggingface

    from sae_lens_ext.run.lm_config import is_network_error

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
        if is_network_error(exc):
            raise fail(
                "the Hugging Face Hub cannot be reached (offline?); retry with network "
                f"access ({type(exc).__name__})",
                FAILURE,
            ) from exc
        raise
