"""lm-evaluation-harness against a real server, scored against lm-eval's own transformers (+ PEFT)
backend on the same tiny model: ``local-completions`` loglikelihood (token-id prompts, ``echo``,
``logprobs``) and ``local-chat-completions`` generate_until, on the base model and an adapter."""

from __future__ import annotations

import json

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

QUESTIONS = [
    {"question": "the quick brown", "choices": [" fox", " dog", " lora"], "answer": 0},
    {"question": "hello", "choices": [" world", " there"], "answer": 1},
    {"question": "a lora adapter", "choices": [" is small", " is large", " jumps"], "answer": 0},
]
CHOICE_TASK = """task: loraserve_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
GENERATE_TASK = """task: loraserve_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: " fox"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("lmeval")
    store, base = make_engine_store(root)
    tasks = root / "tasks"
    tasks.mkdir()
    data = tasks / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tasks / "choice.yaml").write_text(CHOICE_TASK.format(data=data))
    (tasks / "generate.yaml").write_text(GENERATE_TASK.format(data=data))
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("OPENAI_API_KEY", "unused")
    with ServerProcess(["--model-store", str(store)]) as server:
        yield server, base, store / "tiny" / "adapters" / "qv", tasks


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def evaluate(model: str, model_args: dict, task: str, tasks_dir, chat: bool = False) -> list[dict]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        log_samples=True,
        task_manager=TaskManager(include_path=str(tasks_dir)),
        apply_chat_template=chat,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return sorted(results["samples"][task], key=lambda s: (s["doc_id"], str(s["arguments"])))


def merged(base, adapter, target):
    """The base model with PEFT's merge of ``adapter``, saved with the base's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not target.exists():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(target)
        AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target


@pytest.mark.parametrize("adapter", [None, "qv"])
def test_loglikelihood_scores_equal_transformers_and_peft(env, adapter):
    server, base, adapter_path, tasks = env
    served = {
        "model": adapter or "tiny",
        "base_url": f"{server.base_url}/v1/completions",
        "tokenizer_backend": "huggingface",
        "tokenizer": str(base),
        "tokenized_requests": True,
        "num_concurrent": 1,
        "max_retries": 1,
    }
    ours = evaluate("local-completions", served, "loraserve_choice", tasks)
    # lm-eval's `peft=` resizes the embeddings to len(tokenizer) (the tiny model has two spare
    # rows), which changes the softmax: PEFT's own merge, saved as a plain model, instead.
    pretrained = merged(base, adapter_path, tasks.parent / "merged") if adapter else base
    reference = {"pretrained": str(pretrained), "dtype": "float32", "device": "cpu", "batch_size": 1}
    theirs = evaluate("hf", reference, "loraserve_choice", tasks)
    assert len(ours) == len(theirs) == len(QUESTIONS)
    for mine, expected in zip(ours, theirs):
        scores = [float(r[0][0]) for r in mine["resps"]]
        wanted = [float(r[0][0]) for r in expected["resps"]]
        assert scores == pytest.approx(wanted, abs=1e-3)
        assert [bool(r[0][1]) for r in mine["resps"]] == [bool(r[0][1]) for r in expected["resps"]]
        assert mine["acc"] == expected["acc"]


@pytest.mark.parametrize("adapter", [None, "qv"])
def test_chat_generate_until_equals_transformers(env, adapter):
    server, base, adapter_path, tasks = env
    served = {
        "model": adapter or "tiny",
        "base_url": f"{server.base_url}/v1/chat/completions",
        "tokenizer_backend": None,
        "tokenized_requests": False,
        "num_concurrent": 1,
        "max_retries": 1,
    }
    ours = evaluate("local-chat-completions", served, "loraserve_generate", tasks, chat=True)
    pretrained = merged(base, adapter_path, tasks.parent / "merged") if adapter else base
    reference = {"pretrained": str(pretrained), "dtype": "float32", "device": "cpu", "batch_size": 1}
    theirs = evaluate("hf", reference, "loraserve_generate", tasks, chat=True)
    assert [s["resps"] for s in ours] == [s["resps"] for s in theirs]
    assert any(text for s in ours for text in s["resps"][0]), "the model said nothing: a weak comparison"
