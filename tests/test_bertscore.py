"""BERTScore of explanations: equal to the bert-score package on a tiny local BERT, offline."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from mentalglm.core.errors import MentalGLMError

pytest.importorskip("torch", reason="BERTScore needs the torch extra")

CANDIDATES = ["发帖者整夜失眠，情绪低落。", "没有明显问题", "", "自责和疲惫，想要消失"]
REFERENCES = ["发帖者长期失眠，情绪低落，兴趣减退。", "和朋友聚会，工作顺利，没有问题。", "情绪低落",
              "疲惫，自责，想要消失。"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random BERT with a character vocabulary, saved as a local folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    chars = sorted(set("".join(CANDIDATES + REFERENCES)))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]),
                                      encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(chars), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layer", [2, 3])
def test_scores_equal_the_bert_score_package(encoder, layer):
    bert_score = pytest.importorskip("bert_score", reason="bert-score is the outside reference (test extra)")
    from mentalglm.evaluation.bertscore import BERTScorer

    ours = BERTScorer(encoder, layer=layer).score(CANDIDATES, REFERENCES)
    assert ours[2] == (0.0, 0.0, 0.0)  # an empty explanation (bert-score scores it 0 as well, with a warning)
    # bert-score 0.3.13 cannot encode an empty text with transformers 5: compared on the others.
    kept = [i for i, text in enumerate(CANDIDATES) if text]
    precision, recall, f1 = bert_score.BERTScorer(model_type=str(encoder), num_layers=layer).score(
        [CANDIDATES[i] for i in kept], [REFERENCES[i] for i in kept])
    for position, index in enumerate(kept):
        p, r, f = ours[index]
        assert p == pytest.approx(float(precision[position]), abs=1e-5)
        assert r == pytest.approx(float(recall[position]), abs=1e-5)
        assert f == pytest.approx(float(f1[position]), abs=1e-5)


def test_a_missing_folder_or_layer_is_one_line(encoder, tmp_path):
    from mentalglm.evaluation.bertscore import BERTScorer

    with pytest.raises(MentalGLMError, match="no such model folder"):
        BERTScorer(tmp_path / "nothing")
    with pytest.raises(MentalGLMError, match="layers 1 to 3"):
        BERTScorer(encoder, layer=7)


def test_evaluate_adds_bertscore_with_its_interval(encoder, tmp_path):
    from pathlib import Path

    outputs = Path(__file__).parents[1] / "mentalglm" / "samples" / "depression.outputs.jsonl"
    out = tmp_path / "run"
    result = run_cli("evaluate", "--task", "depression", "--backend", "replay", "--model", str(outputs),
                     "--data", "sample:depression", "--output-dir", str(out), "--bootstrap", "100",
                     "--bertscore-model", str(encoder), "--quiet")
    assert result.returncode == 0, result.stderr
    section = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["explanations"]
    assert 0 < section["bertscore_f1"] <= 1 and section["bertscore_model"] == {"model": encoder.name, "layer": 3}
    assert section["intervals"]["bertscore_f1"]["low"] <= section["bertscore_f1"]
    assert "BERTScore F1" in (out / "report.md").read_text(encoding="utf-8")
