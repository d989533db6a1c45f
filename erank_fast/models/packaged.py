"""Rerankers that ship inside erank_fast: an offline base model plus a LoRA adapter.

Each lives in a directory of ``erank_fast/models/`` holding a peft adapter and
``erank_fast.json``: the base model's offline name and the reranker settings the adapter was
trained for (``think``, ``score_mode``, the prompt ``template``, token limits). Those settings
are defaults: anything the caller passes to ``Reranker.from_pretrained`` wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# erank-smol: the default; erank-smol-fast: trained on the "doc-last" prompt layout, ~1.8× the
# documents per second on CPU (train/RESULTS.md has both)
PACKAGED_DIRS = {"erank-smol": PACKAGE_DIR / "erank_smol",
                 "erank-smol-fast": PACKAGE_DIR / "erank_smol_fast"}
SETTINGS_FILE = "erank_fast.json"
SETTING_KEYS = ("think", "score_mode", "instruction", "template", "max_query_tokens",
                "max_doc_tokens",
                "max_think_tokens")


@dataclass(frozen=True)
class PackagedReranker:
    name: str
    base: str  # an offline model name (see loading.OFFLINE_MODELS)
    adapter: Path
    settings: dict = field(default_factory=dict)


def packaged_reranker(name) -> PackagedReranker | None:
    """The packaged reranker called ``name``, or None when ``name`` is not one."""
    if not isinstance(name, str) or name not in PACKAGED_DIRS:
        return None
    directory = PACKAGED_DIRS[name]
    settings_path = directory / SETTINGS_FILE
    if not settings_path.is_file():
        raise FileNotFoundError(
            f"{name!r} is missing from this installation ({settings_path} not found); "
            "reinstall erank_fast")
    meta = json.loads(settings_path.read_text(encoding="utf-8"))
    settings = {k: meta[k] for k in SETTING_KEYS if k in meta}
    return PackagedReranker(name, meta["base"], directory, settings)
