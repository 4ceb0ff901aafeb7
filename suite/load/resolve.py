"""Fit a LoadSpec to the deployment it loads: prompt form (framework quirk) and tokenizer (`auto`).

Runs before any load starts, so a missing tokenizer is one ConfigError line, not a run of failed requests.
  completions_prompt auto -> token_ids, or text where the framework's endpoint rejects token ids
                             (Framework.prompt_token_ids, declared in suite/frameworks/<name>.py)
  tokenizer auto          -> emulated: "words" (the emulator's rule: one token per word)
                             CPU: the tiny model's tokenizer, rebuilt here by suite.cpu.tinymodel (deterministic)
                             GPU: the served MODEL's tokenizer from the Hugging Face cache under MODEL_CACHE_DIR
                             (<cache>/hub/models--org--name/snapshots/<rev>/), or MODEL itself when it is a folder
"""

from __future__ import annotations

import os
from pathlib import Path

from suite.config import ConfigError
from suite.deploy.model import Backend, Deployment
from suite.load.spec import LoadSpec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def resolve_spec(spec: LoadSpec, deployment: Deployment | str | None = None, settings=None) -> LoadSpec:
    """A copy with completions_prompt and (where text is sent) tokenizer concrete. Raises ConfigError."""
    dep = _deployment(deployment)
    form = spec.completions_prompt
    if form == "auto":
        from suite.frameworks.base import get

        form = "token_ids" if dep is None or get(dep.framework).prompt_token_ids else "text"
    out = spec.model_copy(update={"completions_prompt": form})
    if out.text_prompts and out.tokenizer == "auto":
        if dep is None:
            raise ConfigError("tokenizer 'auto' needs the deployment (pdsuite load --deployment NAME); "
                              "or set tokenizer: words | hf:<local folder>")
        out = out.model_copy(update={"tokenizer": auto_tokenizer(dep, settings)})
    return out


def auto_tokenizer(dep: Deployment, settings=None) -> str:
    if dep.emulated:
        return "words"
    if dep.backend is Backend.CPU:
        return f"hf:{tiny_model_dir()}"
    if settings is None:
        from suite.config import load_settings

        settings = load_settings()
    return f"hf:{hf_snapshot(settings.MODEL, settings.MODEL_CACHE_DIR)}"


def hf_snapshot(model: str, cache_dir: str) -> Path:
    """The local folder holding MODEL's tokenizer: MODEL as a folder, <cache>/MODEL, or the hub cache snapshot."""
    cache = Path(cache_dir).expanduser()
    for folder in (Path(model).expanduser(), cache / model):
        if folder.is_dir() and _has_tokenizer(folder):
            return folder
    repo = cache / "hub" / ("models--" + model.replace("/", "--"))
    snaps = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = snaps / ref.read_text().strip()
        if _has_tokenizer(pinned):
            return pinned
    found = sorted((p for p in snaps.iterdir() if _has_tokenizer(p)), key=lambda p: p.stat().st_mtime) \
        if snaps.is_dir() else []
    if found:
        return found[-1]
    raise ConfigError(f"tokenizer 'auto': no local tokenizer for MODEL={model} (looked in {snaps}/<rev>/); "
                      "download the model into MODEL_CACHE_DIR first, or set tokenizer: hf:<local folder>")


def tiny_model_dir() -> Path:
    """The CPU backend's tiny model, built on this host (same fixed corpus as images/vllm-cpu, so same tokenizer)."""
    folder = Path(os.environ.get("PDSUITE_TINY_MODEL_DIR", "~/.cache/pdsuite/tiny-llama")).expanduser()
    if not _has_tokenizer(folder):
        from suite.cpu.tinymodel import build

        try:
            build(folder)
        except (OSError, ValueError, ImportError) as e:
            raise ConfigError(f"tokenizer 'auto': cannot build the tiny model's tokenizer in {folder}: {e}") from e
    return folder


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in TOKENIZER_FILES)


def _deployment(dep: Deployment | str | None) -> Deployment | None:
    if dep is None or isinstance(dep, Deployment):
        return dep
    from suite.deploy.catalog import get

    try:
        return get(dep)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"unknown deployment {dep!r}: {e}") from e
