"""``python -m tests.no_torch_daemon run -c config.yaml``: the real daemon in a process where ``import torch``
and ``import transformers`` fail, as on a small node installed with ``pip install 'streamclf[triton]'``."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

BLOCKED = ("torch", "transformers", "torchvision", "safetensors")


class _Blocker(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: a node without torch)")
        return None


def block() -> None:
    sys.meta_path.insert(0, _Blocker())


if __name__ == "__main__":
    block()
    from streamclf import cli

    code = cli.main()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if loaded:  # cli.main exits the process itself on the run path; this covers the others
        print(f"loaded despite the block: {loaded}", file=sys.stderr)
    sys.exit(code)
