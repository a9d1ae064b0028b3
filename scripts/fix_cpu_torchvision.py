"""Make PyPI's (CUDA) torchvision importable beside CPU torch, for the vLLM test venv only.

vLLM's InternVL path imports torchvision (transformers' fast image and video processors), but
PyPI's torchvision wheel is a CUDA build: its C ops do not load with torch+cpu, and importing it
fails in `torchvision/_meta_registrations.py` (`operator torchvision::nms does not exist`),
whose two `register_fake` registrations are the only unguarded ones. This guards them like the
file's own `register_meta` is guarded (`torchvision.extension._has_ops()`), so only torchvision's
pure-Python transforms are used. Idempotent; run with the venv's interpreter:

    .venv-vllm/bin/python scripts/fix_cpu_torchvision.py

GPU images do not need it: their torchvision matches their CUDA torch.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GUARD = "(torch.library.register_fake({op}) if torchvision.extension._has_ops() else (lambda f: f))"
OPS = ('"torchvision::nms"', '"torchvision::qnms"')


def patch(path: Path) -> bool:
    """Guard the unguarded registrations in `path`; True when the file changed."""
    text = original = path.read_text()
    for op in OPS:
        text = text.replace(f"@torch.library.register_fake({op})", "@" + GUARD.format(op=op))
    if text == original:
        return False
    path.write_text(text)
    return True


def main() -> int:
    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    if spec is None or spec.origin is None:
        print("torchvision is not installed: nothing to fix")
        return 0
    target = Path(spec.origin).parent / "_meta_registrations.py"
    print(("guarded" if patch(target) else "already guarded:"), target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
