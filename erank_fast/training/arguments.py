"""One flag style for every script in ``train/``: ``--snake_case``, as TRL's parser and the
YAML configs spell them; each flag also answers to its ``--kebab-case`` spelling, as TRL's
parser does."""

from __future__ import annotations

import argparse


class ScriptParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--a_b`` options also accept ``--a-b``."""

    def add_argument(self, *names, **kwargs):
        aliases = [n.replace("_", "-") for n in names
                   if n.startswith("--") and "_" in n and n.replace("_", "-") not in names]
        return super().add_argument(*names, *aliases, **kwargs)
