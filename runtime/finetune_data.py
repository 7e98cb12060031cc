"""Fine-tuning data: the PaddleNLP guide's SFT and DPO jsonl formats, tokenized into fixed-length rows.

SFT (the AdvertiseGen format, as PaddleFormers datasets/SFTDataset.py reads it): one JSON object per
line, `{"src": "prompt", "tgt": "response"}`, or a dialogue with lists of equal length (tgt[i]
answers src[i]). An example is the tokens of src[0] tgt[0] EOS src[1] tgt[1] EOS ... with no chat
template (PaddleFormers' NONE_CHAT_TEMPLATE concatenates the texts the same way); only the tgt
tokens and their EOS are trained on.

DPO (PaddleFormers datasets/DPODataset.py): `{"src": [...], "tgt": [...], "response": [a, b],
"sort": [sa, sb]}` with len(tgt) = len(src) - 1. The dialogue src[0] tgt[0] EOS ... src[-1] is the
prompt; the response with the larger sort is chosen, the other rejected (a response is a string or
a list of strings, the assistant and user turns that follow). A sample is two rows, prompt + chosen
+ EOS and prompt + rejected + EOS, trained on the responses only. (PaddleFormers packs prompt,
chosen and rejected into one sequence isolated by a FlashMask attention mask, a GPU kernel; two
rows give the same log-probabilities.)

Rows: a sample's inputs are the example's tokens but the last and its labels the tokens but the
first, -100 where not trained on, so an example of n tokens needs n <= seq_length + 1. Rows are
padded to seq_length with the tokenizer's pad token (EOS when it has none) and label -100; a
causal model never lets earlier positions see the padding. With packing (SFT), consecutive
examples share a row until the next does not fit; they then attend to the earlier examples in
their row and positions run on across them, because the loop feeds input_ids only (PaddleFormers
isolates packed examples with FlashMask, GPU-only). Labels never cross an example boundary.

Bad lines: malformed JSON, a missing or mistyped field, an example longer than seq_length + 1
tokens. bad_lines="error" (the default) stops at the first with "<file>:<line>: <what>";
bad_lines="skip" drops them and logs how many, with the first few reasons. Blank lines are
ignored. A file without one usable example is an error either way.

Samples: the rows are visited in a seeded random order per epoch, epochs repeating as needed, so
every rank sees the same global batch at each step.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import numpy as np

from runtime.data import load_tokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a position that is not trained on (PaddleFormers' convention)
BAD_LINE_POLICIES = ("error", "skip")
_REASONS_SHOWN = 3  # bad lines quoted in the skip warning


class BadLine(ValueError):
    """One line of a data file cannot become an example; the message says why (without the place)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """Token ids of one example and, per token, whether it is trained on (a response token)."""

    tokens: tuple[int, ...]
    trained: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.trained) or len(self.tokens) < 2:
            raise ValueError(f"example: {len(self.tokens)} tokens and {len(self.trained)} flags "
                             "(need equal lengths, at least 2)")

    def shifted(self) -> tuple[list[int], list[int]]:
        """(inputs, labels): the next token is the label, IGNORE_INDEX where it is not trained on."""
        labels = [t if keep else IGNORE_INDEX for t, keep in zip(self.tokens[1:], self.trained[1:], strict=True)]
        return list(self.tokens[:-1]), labels


class TextEncoder:
    """A local tokenizer checked against the model's vocabulary; text -> ids without special tokens."""

    def __init__(self, tokenizer_dir: str, *, vocab_size: int):
        self.tokenizer = load_tokenizer(tokenizer_dir)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {tokenizer_dir} has no eos token (fine-tuning examples end with one)")
        if len(self.tokenizer) > vocab_size:
            raise ValueError(f"tokenizer {tokenizer_dir} has {len(self.tokenizer)} tokens, more than the model's "
                             f"vocabulary of {vocab_size}")
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- reading ---------------------------------------------------------------------------------

def read_examples(path: str, to_example, *, bad_lines: str, what: str) -> tuple[list, int]:
    """(examples, skipped lines) of a jsonl file; to_example(record) -> example, raising BadLine."""
    if bad_lines not in BAD_LINE_POLICIES:
        raise ValueError(f"bad_lines={bad_lines!r} is not one of {', '.join(BAD_LINE_POLICIES)}")
    examples, skipped, lines = [], [], 0
    try:
        with open(path, encoding="utf-8") as source:
            for number, line in enumerate(source, start=1):
                if not line.strip():
                    continue
                lines += 1
                try:
                    examples.append(to_example(json.loads(line)))
                    continue
                except json.JSONDecodeError as err:
                    reason = f"not valid JSON ({err.msg} at column {err.colno})"
                except BadLine as err:
                    reason = str(err)
                if bad_lines == "error":
                    raise ValueError(f"{what} data {path}:{number}: {reason} "
                                     "(mode_args bad_lines=\"skip\" drops such lines)")
                skipped.append(f"{path}:{number}: {reason}")
    except OSError as err:
        raise ValueError(f"{what} data: cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} data {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not lines:
        raise ValueError(f"{what} data {path}: the file holds no examples (it is empty)")
    if not examples:
        raise ValueError(f"{what} data {path}: none of its {lines} lines is usable; first: {skipped[0]}")
    if skipped:
        log.warning("%s data %s: skipped %d of %d lines (bad_lines=skip): %s", what, path, len(skipped), lines,
                    "; ".join(skipped[:_REASONS_SHOWN]))
    return examples, len(skipped)


def _texts(record, key: str, *, allow_empty: bool = False) -> list[str]:
    """record[key] as a list of non-empty strings (a string is a one-turn list)."""
    if not isinstance(record, dict):
        raise BadLine(f"expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise BadLine(f"missing field {key!r}")
    value = [record[key]] if isinstance(record[key], str) else record[key]
    if (not isinstance(value, list) or (not value and not allow_empty)
            or not all(isinstance(text, str) and text.strip() for text in value)):
        raise BadLine(f"field {key!r} must be a non-empty string or a list of non-empty strings, got {record[key]!r}")
    return value


def _check_length(tokens: int, seq_length: int) -> None:
    if tokens < 2:
        raise BadLine(f"the texts give {tokens} token(s); an example needs at least 2")
    if tokens > seq_length + 1:
        raise BadLine(f"{tokens} tokens, longer than seq_length + 1 = {seq_length + 1} "
                      "(the row holds the example shifted by one)")


def sft_example(record, encoder: TextEncoder, seq_length: int) -> Example:
    """One SFT line as an Example (see the module docstring)."""
    src, tgt = _texts(record, "src"), _texts(record, "tgt")
    if len(src) != len(tgt):
        raise BadLine(f"src has {len(src)} turns and tgt {len(tgt)}; they must be equal")
    tokens, trained = [], []
    for prompt, response in zip(src, tgt, strict=True):
        prompt_ids, response_ids = encoder.encode(prompt), encoder.encode(response) + [encoder.eos]
        tokens += prompt_ids + response_ids
        trained += [False] * len(prompt_ids) + [True] * len(response_ids)
    _check_length(len(tokens), seq_length)
    return Example(tokens=tuple(tokens), trained=tuple(trained))


def dpo_example(record, encoder: TextEncoder, seq_length: int) -> tuple[Example, Example]:
    """One DPO line as (chosen, rejected) Examples (see the module docstring)."""
    src, tgt = _texts(record, "src"), _texts(record, "tgt", allow_empty=True)
    if len(tgt) != len(src) - 1:
        raise BadLine(f"tgt must have one turn fewer than src, got {len(src)} src and {len(tgt)} tgt turns")
    responses = record.get("response")
    if not isinstance(responses, list) or len(responses) != 2:
        raise BadLine(f"field 'response' must be a list of 2 responses, got {responses!r}")
    responses = [_texts({"response": r}, "response") for r in responses]
    sort = record.get("sort")
    if (not isinstance(sort, list) or len(sort) != 2
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sort) or sort[0] == sort[1]):
        raise BadLine(f"field 'sort' must be 2 different numbers (the larger marks the chosen response), got {sort!r}")
    prompt = []
    for turn, text in enumerate(src):
        prompt += encoder.encode(text) + (encoder.encode(tgt[turn]) + [encoder.eos] if turn < len(tgt) else [])
    pair = []
    for response in (responses[0], responses[1]) if sort[0] > sort[1] else (responses[1], responses[0]):
        answer = [token for text in response for token in encoder.encode(text)] + [encoder.eos]
        _check_length(len(prompt) + len(answer), seq_length)
        pair.append(Example(tokens=tuple(prompt + answer), trained=(False,) * len(prompt) + (True,) * len(answer)))
    return pair[0], pair[1]


# ---- rows and datasets ------------------------------------------------------------------------

def _row(inputs: list[int], labels: list[int], seq_length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    fill = seq_length - len(inputs)
    return (np.array(inputs + [pad] * fill, dtype="int64"), np.array(labels + [IGNORE_INDEX] * fill, dtype="int64"))


def sft_rows(examples: list[Example], *, seq_length: int, pad: int, packing: bool) -> list:
    """(inputs [seq_length], labels [seq_length]) rows: one per example, or examples packed in order."""
    pieces = [example.shifted() for example in examples]
    if not packing:
        return [_row(inputs, labels, seq_length, pad) for inputs, labels in pieces]
    rows, inputs, labels = [], [], []
    for piece_inputs, piece_labels in pieces:
        if len(inputs) + len(piece_inputs) > seq_length:
            rows.append(_row(inputs, labels, seq_length, pad))
            inputs, labels = [], []
        inputs, labels = inputs + piece_inputs, labels + piece_labels
    rows.append(_row(inputs, labels, seq_length, pad))
    return rows


def dpo_rows(pairs: list[tuple[Example, Example]], *, seq_length: int, pad: int) -> list:
    """(inputs [2, seq_length], labels [2, seq_length]) rows, chosen first."""
    rows = []
    for chosen, rejected in pairs:
        both = [_row(*example.shifted(), seq_length, pad) for example in (chosen, rejected)]
        rows.append((np.stack([both[0][0], both[1][0]]), np.stack([both[0][1], both[1][1]])))
    return rows


class RowDataset:
    """`num_samples` samples drawn from fixed rows, in a seeded random order per epoch.

    skipped_lines: the data file's lines dropped under bad_lines="skip".
    """

    def __init__(self, rows: list, *, num_samples: int, seed: int, skipped_lines: int = 0):
        if not rows or num_samples < 1:
            raise ValueError(f"row dataset: need rows and num_samples >= 1, got {len(rows)} rows, {num_samples}")
        rng = np.random.RandomState(seed % 2**32)
        epochs = math.ceil(num_samples / len(rows))
        self._order = np.concatenate([rng.permutation(len(rows)) for _ in range(epochs)])[:num_samples]
        self.rows, self.skipped_lines = rows, skipped_lines

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self._order):
            raise IndexError(f"row dataset: sample {index} out of range 0..{len(self._order) - 1}")
        return self.rows[int(self._order[index])]


def build_sft_dataset(path: str, tokenizer_dir: str, *, seq_length: int, vocab_size: int, num_samples: int,
                      seed: int, packing: bool, bad_lines: str) -> RowDataset:
    """The SFT samples of a jsonl file (see the module docstring)."""
    encoder = TextEncoder(tokenizer_dir, vocab_size=vocab_size)
    examples, skipped = read_examples(path, lambda record: sft_example(record, encoder, seq_length),
                                      bad_lines=bad_lines, what="SFT")
    rows = sft_rows(examples, seq_length=seq_length, pad=encoder.pad, packing=packing)
    return RowDataset(rows, num_samples=num_samples, seed=seed, skipped_lines=skipped)


def build_dpo_dataset(path: str, tokenizer_dir: str, *, seq_length: int, vocab_size: int, num_samples: int,
                      seed: int, bad_lines: str) -> RowDataset:
    """The DPO samples (chosen and rejected rows) of a jsonl file (see the module docstring)."""
    encoder = TextEncoder(tokenizer_dir, vocab_size=vocab_size)
    pairs, skipped = read_examples(path, lambda record: dpo_example(record, encoder, seq_length),
                                   bad_lines=bad_lines, what="DPO")
    rows = dpo_rows(pairs, seq_length=seq_length, pad=encoder.pad)
    return RowDataset(rows, num_samples=num_samples, seed=seed, skipped_lines=skipped)


__all__ = ["IGNORE_INDEX", "BAD_LINE_POLICIES", "BadLine", "Example", "TextEncoder", "read_examples", "sft_example",
           "dpo_example", "sft_rows", "dpo_rows", "RowDataset", "build_sft_dataset", "build_dpo_dataset"]
