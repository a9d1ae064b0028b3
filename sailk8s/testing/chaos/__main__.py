"""`python -m sailk8s.testing.chaos --list`: the fault catalogue; `--draw SEED`: a seed's scenario."""

from __future__ import annotations

import argparse

from sailk8s.testing.chaos.catalogue import CATALOGUE, CONTAINERS, KUBE, LOCAL
from sailk8s.testing.chaos.scenario import draw
from sailk8s.testing.chaos.shapes import CHAOS_SHAPES


def main(argv: list[str] | None = None) -> int:
    """Print the catalogue (one kind a line) or the scenarios of some seeds."""
    parser = argparse.ArgumentParser(prog="python -m sailk8s.testing.chaos")
    parser.add_argument("--list", action="store_true", help="print the fault catalogue, one kind a line")
    parser.add_argument("--draw", type=int, nargs="*", metavar="SEED", help="print these seeds' scenarios")
    args = parser.parse_args(argv)
    if args.list or args.draw is None:
        for kind in CATALOGUE:
            print(kind.line())
    for seed in args.draw or []:
        for backend in (LOCAL, KUBE, CONTAINERS):
            print(draw(seed, backend, CHAOS_SHAPES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
