"""runtime/data.py and tools/preprocess_data.py: mock tokens, .bin/.idx corpora, deterministic windows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.data import IndexedPretrainDataset, MockPretrainDataset, build_pretrain_dataset, preprocess_corpus
from tests.runtime.helpers import REPO, subprocess_env


def test_mock_samples_are_deterministic_shifted_progressions():
    data = MockPretrainDataset(num_samples=8, seq_length=16, vocab_size=50, seed=3)
    again = MockPretrainDataset(num_samples=8, seq_length=16, vocab_size=50, seed=3)
    other = MockPretrainDataset(num_samples=8, seq_length=16, vocab_size=50, seed=4)
    for index in range(8):
        inputs, labels = data[index]
        assert inputs.dtype == labels.dtype == np.int64 and inputs.shape == labels.shape == (16,)
        np.testing.assert_array_equal(inputs[1:], labels[:-1])
        stride = (labels[0] - inputs[0]) % 50
        np.testing.assert_array_equal((labels - inputs) % 50, np.full(16, stride))  # learnable: a fixed stride
        assert inputs.max() < 50
        np.testing.assert_array_equal(inputs, again[index][0])
    assert any(not np.array_equal(data[i][0], other[i][0]) for i in range(8))
    with pytest.raises(IndexError):
        data[8]


@pytest.fixture(scope="module")
def corpus_prefix(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir):
    prefix = str(tmp_path_factory.mktemp("bin") / "corpus")
    stats = preprocess_corpus(str(tiny_corpus), str(tiny_tokenizer_dir), prefix)
    assert stats.documents == 120 and stats.dtype == "uint16"
    return prefix


def test_preprocess_writes_one_item_per_document_with_eos(corpus_prefix, tiny_corpus, tiny_tokenizer_dir):
    from paddleformers.data.indexed_dataset import MMapIndexedDataset

    from runtime.data import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    corpus = MMapIndexedDataset(corpus_prefix, skip_warmup=True)
    texts = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    assert len(corpus) == len(texts)
    for index in (0, 57, 119):
        expected = tokenizer(texts[index], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        np.testing.assert_array_equal(corpus[index], expected)
    assert tokenizer.unk_token_id not in np.concatenate([corpus[i] for i in range(len(corpus))])


def test_windows_are_consecutive_stream_tokens(corpus_prefix):
    data = IndexedPretrainDataset(corpus_prefix, num_samples=30, seq_length=24, vocab_size=512, seed=5)
    documents = [data.corpus[int(i)] for i in range(len(data.corpus))]
    stream = np.concatenate([documents[int(d)] for d in data._doc_order[0]]).astype(np.int64)
    starts = set()
    for index in range(min(30, data.samples_per_epoch)):
        inputs, labels = data[index]
        tokens = np.concatenate([inputs, labels[-1:]])
        begin = int(data._window_order[0][index]) * 24
        np.testing.assert_array_equal(tokens, stream[begin:begin + 25])
        starts.add(begin)
    assert len(starts) == min(30, data.samples_per_epoch)  # no window repeats within an epoch


def test_windows_are_deterministic_and_repeat_over_epochs(corpus_prefix):
    first = IndexedPretrainDataset(corpus_prefix, num_samples=400, seq_length=32, vocab_size=512, seed=1)
    second = IndexedPretrainDataset(corpus_prefix, num_samples=400, seq_length=32, vocab_size=512, seed=1)
    reseeded = IndexedPretrainDataset(corpus_prefix, num_samples=400, seq_length=32, vocab_size=512, seed=2)
    assert 400 > first.samples_per_epoch  # several epochs
    for index in (0, first.samples_per_epoch + 3, 399):
        np.testing.assert_array_equal(first[index][0], second[index][0])
    assert not np.array_equal(first[0][0], reseeded[0][0])


def test_tokens_outside_the_vocabulary_are_refused(corpus_prefix):
    data = IndexedPretrainDataset(corpus_prefix, num_samples=4, seq_length=32, vocab_size=5, seed=1)
    with pytest.raises(ValueError, match="outside the model's vocabulary of 5"):
        data[0]


def test_missing_corpus_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"nothing\.bin / .*nothing\.idx not found"):
        build_pretrain_dataset(str(tmp_path / "nothing"), num_samples=1, seq_length=8, vocab_size=10, seed=0)


def test_preprocess_tool_on_plain_text(tmp_path, tiny_tokenizer_dir):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat\n\nbig red house near the tree\n")
    prefix = tmp_path / "out" / "text"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(text),
                           "--tokenizer", str(tiny_tokenizer_dir), "--output-prefix", str(prefix), "--no-eos"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {prefix}.bin/.idx: 2 documents, 9 tokens (uint16)" in done.stdout


def test_preprocess_tool_reports_a_bad_record(tmp_path, tiny_tokenizer_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "the cat"}) + "\n")
    done = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(bad),
                           "--tokenizer", str(tiny_tokenizer_dir), "--output-prefix", str(tmp_path / "x")],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {bad}:1: expected a JSON object with a string field 'text'"
