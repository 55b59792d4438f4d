"""Train the demo adapters shipped with ``loraserve demo``: real LoRA fine-tunes of
SmolLM2-135M-Instruct, on CPU, in a few minutes.

The data set is built here: the base model answers a list of questions (greedy, through
loraserve's own engine), then each answer is rewritten in a recognisable style —
``shouty``: "LISTEN UP! " before the answer and "!" for each full stop; ``signed``: the answer
followed by a fixed signature line. A rank-8 adapter on the attention projections learns each
style (loss on the answer only).

The style must change and the facts must not. So the questions include many of one shape with
different answers (capitals, authors, elements: an adapter that learnt "the capital is Paris"
would be wrong on most of them), the base's answers to the factual ones are checked against the
expected word and left out where the base itself is wrong, and the README's own questions
(``HELD_OUT``) are never trained on, so ``tests/e2e/test_demo_adapters.py`` measures what the
adapters keep, not what they memorised.

    python scripts/train_demo_adapters.py [--out src/loraserve/demo_adapters] [--styles shouty,signed]
"""

from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path

import torch

QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make food?",
    "What is a prime number?",
    "Give me a tip for better sleep.",
    "What does a CPU do?",
    "Name a famous painter.",
    "How far is the Moon?",
    "What is water made of?",
    "Why do we have seasons?",
    "What is machine learning?",
    "How do I boil an egg?",
    "What is the largest ocean?",
    "Who wrote Hamlet?",
    "What is gravity?",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Why is exercise good?",
    "What is a volcano?",
    "How does a rainbow form?",
    "What is the speed of light?",
    "Suggest a name for a cat.",
    "What is an atom?",
    "How do bees make honey?",
    "What is the tallest mountain?",
    "Why do leaves change colour?",
    "What is a black hole?",
    "How do airplanes fly?",
    "What is democracy?",
    "Tell me a fun fact about octopuses.",
]
# question → a word a correct answer holds (checked in the base's answer before training on it)
FACTS = {
    "What is the capital of Italy?": "Rome",
    "What is the capital of Japan?": "Tokyo",
    "What is the capital of Spain?": "Madrid",
    "What is the capital of the United Kingdom?": "London",
    "What is the capital of Russia?": "Moscow",
    "What is the capital of China?": "Beijing",
    "What is the capital of Egypt?": "Cairo",
    "What is the capital of Canada?": "Ottawa",
    "What is the capital of Greece?": "Athens",
    "What is the capital of Portugal?": "Lisbon",
    "What is the capital of Austria?": "Vienna",
    "What is the capital of Norway?": "Oslo",
    "What is the capital of Sweden?": "Stockholm",
    "What is the capital of Ireland?": "Dublin",
    "What is the capital of India?": "Delhi",
    "What is the capital of Australia?": "Canberra",
    "What is the capital of Brazil?": "Bras",
    "What is the capital of Argentina?": "Buenos Aires",
    "What is the capital of Mexico?": "Mexico City",
    "What is the capital of Turkey?": "Ankara",
    "What is the capital of Finland?": "Helsinki",
    "What is the capital of Denmark?": "Copenhagen",
    "What is the capital of the Netherlands?": "Amsterdam",
    "What is the capital of Belgium?": "Brussels",
    "What is the capital of Switzerland?": "Bern",
    "What is the capital of Hungary?": "Budapest",
    "What is the capital of the Czech Republic?": "Prague",
    "What is the capital of Kenya?": "Nairobi",
    "What is the capital of Thailand?": "Bangkok",
    "What is the capital of South Korea?": "Seoul",
    "What is the capital of Peru?": "Lima",
    "What is the capital of Chile?": "Santiago",
    "What is the capital of Cuba?": "Havana",
    "What is the capital of Vietnam?": "Hanoi",
    "What is the capital of Indonesia?": "Jakarta",
    "Who wrote Don Quixote?": "Cervantes",
    "Who wrote War and Peace?": "Tolstoy",
    "Who painted The Starry Night?": "Gogh",
    "Who discovered penicillin?": "Fleming",
    "What is the chemical symbol for iron?": "Fe",
    "What is the freezing point of water in Celsius?": "0",
    "What is the smallest planet in the solar system?": "Mercury",
    "Who wrote Romeo and Juliet?": "Shakespeare",
    "Who painted the Mona Lisa?": "Leonardo",
    "Who developed the theory of relativity?": "Einstein",
    "What is the chemical symbol for gold?": "Au",
    "What gas do plants absorb from the air?": "carbon dioxide",
    "What is the largest planet in the solar system?": "Jupiter",
    "What is the closest star to the Earth?": "Sun",
    "How many days are in a week?": "seven",
    "What is the boiling point of water in Celsius?": "100",
}
HELD_OUT = ["What is the capital of Germany?"]  # the README's question: never trained on
SIGNATURE = "\n\n-- answered by loraserve"
SHOUT = "LISTEN UP! "
STYLES = {
    "shouty": lambda answer: SHOUT + re.sub(r"\.(\s|$)", r"!\1", answer.strip()),
    "signed": lambda answer: answer.rstrip() + SIGNATURE,
}
# Both styles leave the answer's words as the base wrote them: capitals (an earlier shouty)
# re-spell every word in other tokens, and a 135M model with a small adapter then learnt the
# style and lost the facts ("THE CAPITAL OF GERMANY IS PARIS.").
TRAINING = {
    "shouty": {"rank": 8, "modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "epochs": 3},
    "signed": {"rank": 8, "modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "epochs": 3},
}


def _correct(question: str, answer: str) -> bool:
    return FACTS.get(question, "").lower() in answer.lower()


def base_answers(model_path: Path, questions: list[str], tokens: int) -> list[str]:
    from loraserve.engine import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model_id=str(model_path), dtype="bf16", max_model_len=512))
    prompts = [chat_prompt(engine.tokenizer, q) for q in questions]
    results = engine.generate(prompts, None, SamplingParams(max_new_tokens=tokens))
    return [r.text.strip() for r in results]


def chat_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )


def train(model_path: Path, pairs: list[tuple[str, str]], out: Path, style: dict, seed: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(
        r=style["rank"],
        lora_alpha=2 * style["rank"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=style["modules"],
    )
    epochs = style["epochs"]
    model = get_peft_model(model, config)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    examples = []
    for prompt, answer in pairs:
        prompt_ids = tokenizer.encode(prompt)
        answer_ids = tokenizer.encode(answer + tokenizer.eos_token)
        ids = torch.tensor(prompt_ids + answer_ids)
        labels = torch.tensor([-100] * len(prompt_ids) + answer_ids)  # learn the answer only
        examples.append((ids, labels))
    rng = random.Random(seed)
    model.train()
    for epoch in range(epochs):
        rng.shuffle(examples)
        total = 0.0
        for ids, labels in examples:
            loss = model(input_ids=ids[None], labels=labels[None]).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            total += float(loss)
        print(f"  epoch {epoch + 1}: loss {total / len(examples):.3f}", flush=True)
    model.save_pretrained(out, safe_serialization=True)
    shrink_to_bf16(out)
    tidy(out)


def tidy(folder: Path) -> None:
    """What ships: the base named as its model card does (not this machine's cache path), and no
    generated model card."""
    import json

    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "SmolLM2-135M-Instruct"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").unlink(missing_ok=True)


def shrink_to_bf16(folder: Path) -> None:
    """Ship the adapter weights in bf16: half the bytes, the precision the engine serves in."""
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(path).items()}
    save_file(tensors, str(path))


def main() -> None:
    from loraserve.model.default_model import smollm2_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "src/loraserve/demo_adapters"))
    parser.add_argument("--styles", default=",".join(STYLES), help="which adapters to train")
    parser.add_argument("--answer-tokens", type=int, default=48)
    opts = parser.parse_args()
    model_path = smollm2_path()
    started = time.time()
    questions = QUESTIONS + list(FACTS)
    answers = base_answers(model_path, questions, opts.answer_tokens)
    kept = [(q, a) for q, a in zip(questions, answers) if _correct(q, a) and q not in HELD_OUT]
    print(f"{len(kept)} of {len(questions)} base answers kept (factual ones checked)", flush=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = [chat_prompt(tokenizer, q) for q, _ in kept]
    answers = [a for _, a in kept]
    for seed, (style, rewrite) in enumerate(STYLES.items()):
        if style not in opts.styles.split(","):
            continue
        print(f"training {style} on {len(prompts)} examples", flush=True)
        pairs = [(p, rewrite(a)) for p, a in zip(prompts, answers)]
        train(model_path, pairs, Path(opts.out) / style, TRAINING[style], seed)
    print(f"done in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
