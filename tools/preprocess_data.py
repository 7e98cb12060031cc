"""Tokenize a text or jsonl corpus into the .bin/.idx pretraining format (PaddleNLP / Megatron).

    python tools/preprocess_data.py --input corpus.jsonl --tokenizer path/to/tokenizer_dir \\
        --output-prefix data/corpus [--json-key text] [--no-eos]

A .jsonl/.json input holds one JSON object per line with the text under
--json-key; any other file is plain text with one document per line. The
result, data/corpus.bin + data/corpus.idx, is what `"data": "data/corpus"`
in a training arguments file reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tokenize a corpus into .bin/.idx pretraining files.")
    parser.add_argument("--input", required=True, help="corpus file: .jsonl/.json (one object per line) or plain text")
    parser.add_argument("--tokenizer", required=True, help="local tokenizer directory")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    parser.add_argument("--json-key", default="text", help="field holding the text in jsonl input (default: text)")
    parser.add_argument("--no-eos", action="store_true", help="do not append the tokenizer's EOS to each document")
    options = parser.parse_args(argv)

    from runtime.data import preprocess_corpus

    try:
        stats = preprocess_corpus(options.input, options.tokenizer, options.output_prefix, json_key=options.json_key,
                                  append_eos=not options.no_eos)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {options.output_prefix}.bin/.idx: {stats.documents} documents, {stats.tokens} tokens ({stats.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
