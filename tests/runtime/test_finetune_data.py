"""runtime/finetune_data.py: the guide's SFT and DPO jsonl formats, rows, packing, and bad data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from runtime.finetune_data import (
    IGNORE_INDEX,
    Example,
    TextEncoder,
    build_dpo_dataset,
    build_sft_dataset,
    dpo_example,
    sft_example,
    sft_rows,
)

VOCAB = 512


@pytest.fixture(scope="module")
def encoder(tiny_tokenizer_dir):
    return TextEncoder(str(tiny_tokenizer_dir), vocab_size=VOCAB)


def _jsonl(path, *lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_sft_example_trains_on_targets_and_their_eos_only(encoder):
    example = sft_example({"src": ["the cat", "a dog"], "tgt": ["sat", "ran far"]}, encoder, 32)
    ids = encoder.encode
    assert list(example.tokens) == ids("the cat") + ids("sat") + [encoder.eos] + ids("a dog") + ids("ran far") + [
        encoder.eos]
    assert list(example.trained) == [False, False, True, True, False, False, True, True, True]
    inputs, labels = example.shifted()
    assert inputs == list(example.tokens[:-1])
    # position t predicts token t + 1; prompt tokens are never labels
    assert labels == [IGNORE_INDEX, example.tokens[2], example.tokens[3], IGNORE_INDEX, IGNORE_INDEX,
                      example.tokens[6], example.tokens[7], example.tokens[8]]


def test_padding_and_packing_rows(encoder):
    one = Example(tokens=(5, 6, 7), trained=(False, True, True))
    two = Example(tokens=(8, 9), trained=(False, True))
    padded = sft_rows([one, two], seq_length=4, pad=encoder.pad, packing=False)
    pad = encoder.pad
    assert [row[0].tolist() for row in padded] == [[5, 6, pad, pad], [8, pad, pad, pad]]
    assert padded[0][1].tolist() == [6, 7, IGNORE_INDEX, IGNORE_INDEX]
    packed = sft_rows([one, two, one], seq_length=4, pad=encoder.pad, packing=True)
    # [5 6 | 8] fit in 4 positions; the third example starts a new row. No label crosses an example boundary.
    assert [row[0].tolist() for row in packed] == [[5, 6, 8, encoder.pad], [5, 6, encoder.pad, encoder.pad]]
    assert packed[0][1].tolist() == [6, 7, 9, IGNORE_INDEX]
    assert all(row[0].dtype == np.int64 and row[0].flags["C_CONTIGUOUS"] for row in packed)


def test_dpo_pair_orders_by_sort_and_shares_the_prompt(encoder):
    record = {"src": ["the cat", "a dog"], "tgt": ["sat"], "response": ["ran far", ["flew", "home", "away"]],
              "sort": [1, 3]}
    chosen, rejected = dpo_example(record, encoder, 32)
    prompt = encoder.encode("the cat") + encoder.encode("sat") + [encoder.eos] + encoder.encode("a dog")
    assert list(chosen.tokens) == prompt + encoder.encode("flew home away") + [encoder.eos]
    assert list(rejected.tokens) == prompt + encoder.encode("ran far") + [encoder.eos]
    assert chosen.trained == (False,) * len(prompt) + (True,) * 4


def test_datasets_repeat_rows_in_seeded_epochs(tmp_path, tiny_tokenizer_dir, finetune_data):
    sft = build_sft_dataset(str(finetune_data["sft"]), str(tiny_tokenizer_dir), seq_length=32, vocab_size=VOCAB,
                            num_samples=10, seed=3, packing=False, bad_lines="error")
    assert len(sft) == 10 and sft[0][0].shape == (32,)
    first_epoch = sorted(int(sft._order[i]) for i in range(4))
    assert first_epoch == [0, 1, 2, 3]  # each row once per epoch
    dpo = build_dpo_dataset(str(finetune_data["dpo"]), str(tiny_tokenizer_dir), seq_length=32, vocab_size=VOCAB,
                            num_samples=4, seed=3, bad_lines="error")
    inputs, labels = dpo[0]
    assert inputs.shape == labels.shape == (2, 32)


# ---- bad data: each kind stops with the file and line, or is skipped and counted -------------------------

GOOD = {"src": "the cat", "tgt": "sat on a mat"}
BAD_SFT_LINES = [
    ("malformed", '{"src": "the cat", "tgt": ', r"not valid JSON"),
    ("missing field", {"src": "the cat"}, r"missing field 'tgt'"),
    ("wrong type", {"src": "the cat", "tgt": 3}, r"field 'tgt' must be a non-empty string"),
    # 40 prompt tokens, 1 target token and EOS
    ("too long", {"src": " ".join(["the cat"] * 20), "tgt": "sat"}, r"42 tokens, longer than seq_length \+ 1 = 33"),
]


@pytest.mark.parametrize("kind, line, message", BAD_SFT_LINES, ids=[case[0] for case in BAD_SFT_LINES])
def test_bad_sft_line_stops_with_file_and_line_or_is_skipped_and_counted(tmp_path, tiny_tokenizer_dir, caplog,
                                                                         kind, line, message):
    path = _jsonl(tmp_path / "data.jsonl", GOOD, "", line, GOOD)  # the blank line 2 is ignored
    build = dict(seq_length=32, vocab_size=VOCAB, num_samples=4, seed=0, packing=False)
    with pytest.raises(ValueError, match=rf"^SFT data {path}:3: {message}.*bad_lines=\"skip\""):
        build_sft_dataset(path, str(tiny_tokenizer_dir), bad_lines="error", **build)
    with caplog.at_level(logging.WARNING, logger="runtime.finetune_data"):
        dataset = build_sft_dataset(path, str(tiny_tokenizer_dir), bad_lines="skip", **build)
    assert dataset.skipped_lines == 1 and len(dataset.rows) == 2
    assert f"skipped 1 of 3 lines (bad_lines=skip): {path}:3:" in caplog.text


def test_bad_dpo_lines_name_the_field(tmp_path, tiny_tokenizer_dir):
    good = {"src": ["the cat"], "tgt": [], "response": ["sat", "ran"], "sort": [1, 0]}
    cases = [({**good, "sort": [1, 1]}, r"field 'sort' must be 2 different numbers"),
             ({k: v for k, v in good.items() if k != "response"}, r"field 'response' must be a list of 2"),
             ({**good, "tgt": ["sat"]}, r"tgt must have one turn fewer than src")]
    for record, message in cases:
        path = _jsonl(tmp_path / "dpo.jsonl", good, record)
        with pytest.raises(ValueError, match=rf"^DPO data {path}:2: {message}"):
            build_dpo_dataset(path, str(tiny_tokenizer_dir), seq_length=32, vocab_size=VOCAB, num_samples=2, seed=0,
                              bad_lines="error")


def test_empty_or_all_bad_files_are_errors_under_either_policy(tmp_path, tiny_tokenizer_dir):
    build = dict(seq_length=32, vocab_size=VOCAB, num_samples=4, seed=0, packing=False)
    empty = _jsonl(tmp_path / "empty.jsonl", "", "  ")
    all_bad = _jsonl(tmp_path / "bad.jsonl", "{", {"src": "x"})
    for policy in ("error", "skip"):
        with pytest.raises(ValueError, match=rf"^SFT data {empty}: the file holds no examples \(it is empty\)"):
            build_sft_dataset(empty, str(tiny_tokenizer_dir), bad_lines=policy, **build)
    with pytest.raises(ValueError, match=rf"none of its 2 lines is usable; first: {all_bad}:1: not valid JSON"):
        build_sft_dataset(all_bad, str(tiny_tokenizer_dir), bad_lines="skip", **build)
    with pytest.raises(ValueError, match=r"SFT data: cannot read .*missing.jsonl: No such file"):
        build_sft_dataset(str(tmp_path / "missing.jsonl"), str(tiny_tokenizer_dir), bad_lines="skip", **build)


def test_tokenizer_must_fit_the_vocabulary(tiny_tokenizer_dir):
    with pytest.raises(ValueError, match=r"has \d+ tokens, more than the model's vocabulary of 8"):
        TextEncoder(str(tiny_tokenizer_dir), vocab_size=8)
