"""Pretraining data: token windows from .bin/.idx files (PaddleNLP / Megatron format) or synthetic tokens.

A sample is `seq_length + 1` consecutive tokens of the corpus; the model reads
the first `seq_length` (input_ids) and predicts the last `seq_length` (labels,
already shifted). Samples are numbered 0..num_samples-1 and fully determined
by (corpus, seq_length, seed, index), so every rank and every layout sees the
same global batch at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Mixes the seed with the sample index into one RandomState seed (a large prime keeps them apart).
_SEED_STRIDE = 1_000_003


class MockPretrainDataset:
    """Deterministic synthetic token windows, like Megatron-LM's --mock-data.

    Each sample is an arithmetic progression modulo the vocabulary with a random start and a
    small random stride, so there is something to learn and the loss falls within a few steps.
    """

    def __init__(self, *, num_samples: int, seq_length: int, vocab_size: int, seed: int):
        for name, value in (("num_samples", num_samples), ("seq_length", seq_length), ("vocab_size", vocab_size)):
            if value < 1:
                raise ValueError(f"mock data: {name} must be >= 1, got {value}")
        self.num_samples, self.seq_length, self.vocab_size, self.seed = num_samples, seq_length, vocab_size, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"mock data: sample {index} out of range 0..{self.num_samples - 1}")
        rng = np.random.RandomState((self.seed * _SEED_STRIDE + index) % 2**32)
        start, stride = rng.randint(self.vocab_size), rng.randint(1, 8)
        tokens = (start + stride * np.arange(self.seq_length + 1)) % self.vocab_size
        return _split(tokens)


class IndexedPretrainDataset:
    """Token windows over a memory-mapped .bin/.idx corpus, read with PaddleFormers' MMapIndexedDataset.

    Each epoch walks the documents in a seeded random order as one token stream and cuts it into
    windows of seq_length + 1 tokens that overlap by one (the last label is the next input); the
    windows of an epoch are visited in a seeded random order. Epochs repeat as needed.
    """

    def __init__(self, prefix: str, *, num_samples: int, seq_length: int, vocab_size: int, seed: int):
        from paddleformers.data.indexed_dataset import MMapIndexedDataset

        if not MMapIndexedDataset.exists(prefix):
            raise ValueError(f"pretraining data: {prefix}.bin / {prefix}.idx not found "
                             "(data must be 'mock' or the path prefix of a .bin/.idx pair)")
        self.corpus = MMapIndexedDataset(prefix, skip_warmup=True)
        self.prefix, self.num_samples, self.seq_length, self.vocab_size = prefix, num_samples, seq_length, vocab_size
        sizes = self.corpus.sizes.astype(np.int64)
        self.tokens_per_epoch = int(sizes.sum())
        self.samples_per_epoch = (self.tokens_per_epoch - 1) // seq_length
        if self.samples_per_epoch < 1:
            raise ValueError(f"pretraining data {prefix}: {self.tokens_per_epoch} tokens, fewer than one sample of "
                             f"seq_length + 1 = {seq_length + 1}")
        epochs = -(-num_samples // self.samples_per_epoch)
        rng = np.random.RandomState(seed % 2**32)
        # Per epoch: document order, start offset of each document in the stream, window order.
        self._doc_order, self._doc_start, self._window_order = [], [], []
        for _ in range(epochs):
            order = rng.permutation(len(sizes))
            self._doc_order.append(order)
            self._doc_start.append(np.concatenate([[0], np.cumsum(sizes[order])]))
            self._window_order.append(rng.permutation(self.samples_per_epoch))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"pretraining data: sample {index} out of range 0..{self.num_samples - 1}")
        epoch, position = divmod(index, self.samples_per_epoch)
        begin = int(self._window_order[epoch][position]) * self.seq_length
        tokens = self._stream(epoch, begin, self.seq_length + 1)
        if tokens.max() >= self.vocab_size:
            raise ValueError(f"pretraining data {self.prefix}: token id {int(tokens.max())} is outside the model's "
                             f"vocabulary of {self.vocab_size} (was it tokenized for another model?)")
        return _split(tokens)

    def _stream(self, epoch: int, begin: int, length: int) -> np.ndarray:
        """Tokens [begin, begin + length) of epoch `epoch`'s document stream."""
        starts, order = self._doc_start[epoch], self._doc_order[epoch]
        parts, position = [], begin
        doc = int(np.searchsorted(starts, position, side="right")) - 1
        while length > 0:
            offset = position - int(starts[doc])
            chunk, _ = self.corpus.get(int(order[doc]), offset=offset,
                                       length=min(length, int(starts[doc + 1]) - position))
            parts.append(chunk)
            position += len(chunk)
            length -= len(chunk)
            doc += 1
        return np.concatenate(parts)


def _split(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Two separate contiguous arrays: dist.shard_tensor of a strided view reads wrong elements in Paddle 3.3.1.
    tokens = tokens.astype("int64")
    return np.ascontiguousarray(tokens[:-1]), np.ascontiguousarray(tokens[1:])


@dataclass(frozen=True, slots=True, kw_only=True)
class CorpusStats:
    """What preprocess_corpus wrote: documents, tokens (including appended EOS) and the token dtype."""

    documents: int
    tokens: int
    dtype: str


def load_tokenizer(directory: str):
    """A tokenizer from a local directory (tokenizer.json / tokenizer_config.json or sentencepiece files)."""
    from pathlib import Path

    from paddleformers.transformers import AutoTokenizer

    if not Path(directory).is_dir():
        raise ValueError(f"tokenizer: {directory} is not a directory (give a local tokenizer directory)")
    return AutoTokenizer.from_pretrained(directory)


def read_documents(path: str, *, json_key: str = "text"):
    """Documents of a corpus file: one JSON object per line (text under `json_key`) for .jsonl/.json,
    else one document per non-empty line of plain text."""
    import json
    from pathlib import Path

    is_json = Path(path).suffix in (".jsonl", ".json")
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            if not is_json:
                yield line.rstrip("\n")
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get(json_key), str):
                raise ValueError(f"{path}:{number}: expected a JSON object with a string field {json_key!r}")
            yield record[json_key]


def preprocess_corpus(input_path: str, tokenizer_dir: str, output_prefix: str, *, json_key: str = "text",
                      append_eos: bool = True) -> CorpusStats:
    """Tokenize a corpus into output_prefix.bin/.idx (one item per document), readable by IndexedPretrainDataset.

    Token ids are stored as uint16 when the vocabulary fits (< 65500, PaddleNLP's rule), else int32.
    """
    from pathlib import Path

    from paddleformers.data.indexed_dataset import MMapIndexedDatasetBuilder

    tokenizer = load_tokenizer(tokenizer_dir)
    eos = tokenizer.eos_token_id if append_eos else None
    if append_eos and eos is None:
        raise ValueError(f"tokenizer {tokenizer_dir} has no eos token; pass append_eos=False (--no-eos) or add one")
    dtype = np.uint16 if len(tokenizer) < 65500 else np.int32
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".bin", ".idx"):
        Path(output_prefix + suffix).unlink(missing_ok=True)  # the builder appends to an existing .bin
    builder = MMapIndexedDatasetBuilder(output_prefix + ".bin", dtype=dtype)
    documents = tokens = 0
    for text in read_documents(input_path, json_key=json_key):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if not ids:
            continue
        builder.add_item(np.array(ids, dtype=dtype))
        builder.end_document()
        documents += 1
        tokens += len(ids)
    if not documents:
        raise ValueError(f"{input_path}: no documents with tokens")
    builder.finalize(output_prefix + ".idx")
    return CorpusStats(documents=documents, tokens=tokens, dtype=np.dtype(dtype).name)


def build_pretrain_dataset(data: str, *, num_samples: int, seq_length: int, vocab_size: int, seed: int):
    """`data` is "mock" or a .bin/.idx path prefix; returns a map-style dataset of (input_ids, labels)."""
    if data == "mock":
        return MockPretrainDataset(num_samples=num_samples, seq_length=seq_length, vocab_size=vocab_size, seed=seed)
    return IndexedPretrainDataset(data, num_samples=num_samples, seq_length=seq_length, vocab_size=vocab_size,
                                  seed=seed)


__all__ = ["MockPretrainDataset", "IndexedPretrainDataset", "CorpusStats", "build_pretrain_dataset", "load_tokenizer",
           "preprocess_corpus", "read_documents"]
