"""examples/quickstart.yaml: the training half is wired as the README's main job expects."""

from __future__ import annotations

from pathlib import Path

from sailk8s.spec import load_pipeline

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def test_quickstart_chains_captioner_pretrain_curriculum_and_evaluate() -> None:
    p = load_pipeline(QUICKSTART)
    names = [s.name for s in p.order()]
    assert names.index("captioner") < names.index("recaption") < names.index("filter")
    assert names.index("filter") < names.index("pretrain") < names.index("sft") < names.index("evaluate")
    captioner, recaption = p.stage("captioner"), p.stage("recaption")
    assert recaption.config["model"] == captioner.outputs[0] and "captioner" in recaption.depends
    pretrain = p.stage("pretrain").typed_config()
    assert pretrain.substages[0].train == ["projector"]  # type: ignore[attr-defined]
    sft = p.stage("sft").typed_config()
    assert len(sft.stages) >= 2  # type: ignore[attr-defined]
    assert sft.model.init_from == p.stage("pretrain").outputs[0]  # type: ignore[attr-defined]
    evaluate = p.stage("evaluate")
    assert evaluate.config["model"] == p.stage("sft").outputs[0]
    assert evaluate.inputs == ["data/samples/eval"]
