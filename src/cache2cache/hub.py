"""Hugging Face Hub repositories: download a fuser or a model by repo id, push a fuser.

A fuser repo holds what a fuser folder holds (config.json, model.safetensors, README.md, and whatever its run
left: training log, plots, data manifest); of a model repo only the config, tokenizer and safetensors weights are
fetched (never pickled weights). Downloads go through `huggingface_hub` and its cache, so offline mode
(`HF_HUB_OFFLINE=1`) loads what was downloaded before and fails at once, with a clear message, otherwise; an
unreachable Hub fails in about a second instead of after transformers' minute of retries.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import C2CError

FILES = ["config.json", "model.safetensors", "README.md", "*.json", "*.jsonl", "*.png"]  # a fuser repo
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]  # config, tokenizer, weights
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(spec: str) -> bool:
    """`owner/name`, and not a path that exists or starts like one."""
    return bool(_REPO_ID.match(spec)) and not spec.startswith((".", "/", "~")) and not Path(spec).exists()


def download(repo_id: str, revision: str | None = None, what: str = "fuser") -> Path:
    """The local folder of a fuser (or, with `what="model"`, a model) repo, downloaded once into the Hub cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,  # fmt: skip
    )

    # read the environment now, not at import: huggingface_hub reads it once, when first imported
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        patterns = FILES if what == "fuser" else MODEL_FILES
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline,
                                      cache_dir=os.environ.get("HF_HUB_CACHE"), etag_timeout=5))  # fmt: skip
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise C2CError(f"{what} {repo_id!r} is not in the local Hub cache and {why}: download it once online, or "
                       f"give a {what} folder") from None  # fmt: skip
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise C2CError(f"no {what} repo {repo_id!r}{f' at revision {revision}' if revision else ''} on the Hub "
                       f"({type(e).__name__})") from None  # fmt: skip
    except (HfHubHTTPError, OSError) as e:
        raise C2CError(f"could not download {what} {repo_id!r}: {str(e).splitlines()[0] if str(e) else e!r}") from None


def push(folder: Path, repo_id: str, private: bool = False, token: str | None = None,
         message: str = "Upload cache2cache fuser") -> str:  # fmt: skip
    """Create the repo if needed and upload a saved fuser folder; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=message,
                                 allow_patterns=FILES)  # fmt: skip
    except (HfHubHTTPError, OSError) as e:
        raise C2CError(
            f"could not push the fuser to {repo_id!r}: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None
    return str(getattr(info, "commit_url", info))
