"""The chaos pipeline's stages as the scenario drawer sees them."""

from __future__ import annotations

from sailk8s.testing.chaos.scenario import StageShape

# ingest: ~12 shards over 2 ranks; captioner: checkpoints at steps 3, 6, 9; filter: ~8 shards.
CHAOS_SHAPES = [StageShape("ingest", True, 10), StageShape("captioner", False, 3),
                StageShape("filter", True, 7)]
