"""Fixtures shared by the runtime tests: a tiny word-level tokenizer and corpus built on the spot (no hub)."""

from __future__ import annotations

import json
import random

import pytest

WORDS = ("the cat sat on a mat while dog ran far away from big red house near green tree under blue sky "
         "and then it rained all day long so every bird flew home").split()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A local word-level tokenizer directory (tokenizer.json + tokenizer_config.json) over WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([" ".join(WORDS)],
                                  trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PretrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>"}))
    return directory


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A jsonl corpus of 120 random-length documents over WORDS."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w") as sink:
        for _ in range(120):
            sink.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))}) + "\n")
    return path


@pytest.fixture(scope="session")
def finetune_data(tmp_path_factory):
    """Memorisable fine-tuning sets over WORDS in the guide's formats: {"sft": 4 src/tgt lines, "dpo": 4 pairs}."""
    rng = random.Random(1)
    directory = tmp_path_factory.mktemp("finetune")

    def words(count: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(count))

    sft, dpo = directory / "sft.jsonl", directory / "dpo.jsonl"
    sft.write_text("".join(json.dumps({"src": words(rng.randint(2, 5)), "tgt": words(rng.randint(3, 8))}) + "\n"
                           for _ in range(4)))
    dpo.write_text("".join(json.dumps({"src": [words(3)], "tgt": [], "response": [words(4), words(5)],
                                       "sort": rng.choice([[2, 0], [0, 2]])}) + "\n" for _ in range(4)))
    return {"sft": sft, "dpo": dpo}
