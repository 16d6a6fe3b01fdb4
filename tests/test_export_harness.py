"""The standard evaluation harness on an export: lm-evaluation-harness (`lm_eval --model hf`)
scores a local multiple-choice task, written by the test and read offline, and its
log-likelihoods equal speedrun's own scoring of the same continuations."""

import json

import pytest

from speedrun.config import load_config
from speedrun.export import export_run
from speedrun.model import continuation_logprob
from test_export import SAMPLE, make_run, random_model, shrunk

pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

TASK = """task: speedrun_parity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.parametrize("recipe", ["nanogpt-cpu", "shakespeare-char"])  # GPT2LMHeadModel; custom code
def test_harness_log_likelihoods_equal_ours(recipe, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    from speedrun.tokenizer import EOT, CharTokenizer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = CharTokenizer(sorted(set(SAMPLE + "abcdefghijklmnopqrstuvwxyz0123456789+=")), eot=EOT)
    cfg = load_config(recipe)
    cfg.model = shrunk(cfg.model, tok.vocab_size)
    model = random_model(cfg.model).eval()
    export_run(make_run(tmp_path / "run", cfg, model, tok), tmp_path / "hf")
    items = [{"context": f"what is {a} plus {b} =", "choices": [str(a + b), str(a + b + 1), "no idea"], "gold": 0}
             for a, b in ((1, 2), (12, 30), (7, 7), (250, 250))]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "parity.yaml").write_text(TASK.format(items=tmp_path / "items.jsonl"))
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'},trust_remote_code=True,dtype=float32",
        tasks=["speedrun_parity"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        log_samples=True, device="cpu", batch_size=4)  # right-padded batches
    samples = results["samples"]["speedrun_parity"]
    assert len(samples) == len(items)
    correct = 0
    for sample in samples:
        ours = []
        for args, (response,) in zip(sample["arguments"], sample["resps"], strict=True):
            context, continuation = args if isinstance(args, (list, tuple)) else (args["arg_0"], args["arg_1"])
            assert continuation.startswith(" ")  # the harness's target delimiter, scored as part of the answer
            ours.append(continuation_logprob(model, tok.encode(context), tok.encode(continuation)))
            assert abs(response[0] - ours[-1][0]) <= 1e-4 and response[1] == ours[-1][1]
        correct += max(range(len(ours)), key=lambda i: ours[i][0]) == sample["target"]
    assert results["results"]["speedrun_parity"]["acc,none"] == pytest.approx(correct / len(items))
