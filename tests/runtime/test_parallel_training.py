"""Multi-process training under each layout gives the losses of one process (same seed, same global batch).

Every case launches `python -m paddle.distributed.launch --nproc_per_node N tools/train.py args.json`
with a hand-made plan file and compares rank 0's metrics.jsonl with a single-process run of
tools/train.py on the same model, data, seed and global batch of 4 sequences x 32 tokens.

Tolerance: |loss - reference| <= 2e-4 at each of the 4 steps. Sharded layouts sum the same float32
products in another order (all-reduce, vocab-parallel cross entropy, micro-batch accumulation), which
moves a loss of ~7 by about 1e-6 per step; AdamW at lr 1e-2 amplifies that to at most ~3e-5 by step 4
(pipeline, 2 micro-batches). A wrong layout (a missing all-reduce, a mis-sharded batch) is off by > 1e-2.

What the CPU build of Paddle 3.3.1 cannot run is at the end, marked `gpu`.
"""

from __future__ import annotations

import pytest

from planner.frontends import load_model
from tests.runtime.helpers import gpus, make_plan, read_metrics, run_train, worker_logs, write_args, write_plan

STEPS = 4
TOLERANCE = 2e-4
TRAIN = dict(max_steps=STEPS, seed=1, learning_rate=1e-2, warmup_steps=1)


def _losses(tmp_path, name, model, layout, *, nproc, to_static=False, data="mock", device="cpu", **extra):
    """Run one layout (nproc 1: a plain process) of `model` (preset name or config.json path); rank 0's losses."""
    directory = tmp_path / name
    directory.mkdir()
    plan = write_plan(make_plan(load_model(model), device=device, **layout), directory / "plan.json")
    args = write_args(directory / "args.json", model=model, plan=str(plan), output_dir=str(directory / "out"),
                      to_static=to_static, data=data, **TRAIN, **extra)
    done = run_train(args, nproc=nproc, log_dir=directory / "logs")
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}\n{worker_logs(directory / 'logs')}"
    losses = [line["loss"] for line in read_metrics(directory / "out")]
    assert len(losses) == STEPS
    return losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-process losses per (model, data), computed once per module on demand."""
    computed = {}
    root = tmp_path_factory.mktemp("reference")

    def losses(model: str, data: str = "mock") -> list[float]:
        key = (model, data)
        if key not in computed:
            computed[key] = _losses(root, f"{model}-{len(computed)}", model, dict(mbs=4), nproc=1, data=data)
        return computed[key]

    return losses


def _assert_parity(losses, expected):
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(losses, expected, strict=True)), (losses, expected)
    assert expected[-1] < expected[0]  # the reference learns, so equal losses mean equal updates


# (test id, model, layout, to_static, processes). Global batch 4 in every layout.
CPU_CASES = [
    ("llama-dp2", "llama-tiny", dict(dp=2, mbs=2), False, 2),
    ("llama-mp2", "llama-tiny", dict(mp=2, mbs=4), False, 2),
    ("llama-dp2-accumulate-recompute", "llama-tiny", dict(dp=2, mbs=1, micro_batches=2, recompute="full"), False, 2),
    ("llama-sharding1", "llama-tiny", dict(dp=2, mbs=2, sharding=1), False, 2),
    ("llama-sharding2", "llama-tiny", dict(dp=2, mbs=2, sharding=2), False, 2),
    ("llama-sharding3", "llama-tiny", dict(dp=2, mbs=2, sharding=3), False, 2),
    ("llama-dp2xmp2", "llama-tiny", dict(dp=2, mp=2, mbs=2), False, 4),
    ("llama-static-single", "llama-tiny", dict(mbs=4), True, 1),
    ("llama-static-dp2", "llama-tiny", dict(dp=2, mbs=2), True, 2),
    ("llama-static-mp2", "llama-tiny", dict(mp=2, mbs=4), True, 2),
    ("llama-static-sharding1", "llama-tiny", dict(dp=2, mbs=2, sharding=1), True, 2),
    ("llama-static-sharding2", "llama-tiny", dict(dp=2, mbs=2, sharding=2), True, 2),
    ("llama-static-sharding3", "llama-tiny", dict(dp=2, mbs=2, sharding=3), True, 2),
    ("llama-static-pp2", "llama-tiny", dict(pp=2, mbs=2, micro_batches=2), True, 2),
    ("qwen2-dp2", "qwen2-tiny", dict(dp=2, mbs=2), False, 2),
    ("gpt3-dp2", "gpt3-tiny", dict(dp=2, mbs=2), False, 2),
    ("deepseek-v3-dp2", "deepseek-v3-tiny", dict(dp=2, mbs=2), False, 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, model, layout, to_static, nproc", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_layout_matches_single_process(tmp_path, reference, name, model, layout, to_static, nproc):
    losses = _losses(tmp_path, name, model, layout, nproc=nproc, to_static=to_static)
    _assert_parity(losses, reference(model))


@pytest.mark.slow
def test_corpus_data_dp2_matches_single_process(tmp_path, reference, tiny_corpus, tiny_tokenizer_dir):
    from runtime.data import preprocess_corpus

    prefix = str(tmp_path / "corpus")
    preprocess_corpus(str(tiny_corpus), str(tiny_tokenizer_dir), prefix)
    losses = _losses(tmp_path, "corpus-dp2", "llama-tiny", dict(dp=2, mbs=2), nproc=2, data=prefix)
    _assert_parity(losses, reference("llama-tiny", prefix))


PLANNED_CASES = [
    # The planner picks the layout for 2 CPU processes (dp=2 with sharding stage 1 at this size).
    ("llama-auto", "llama-tiny", "auto"),
    # A layout string; for GPT the planner adds sequence parallelism (SequenceParallelEnable on the norms).
    ("gpt3-mp2-planned", "gpt3-tiny", "mp=2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, model, plan", PLANNED_CASES, ids=[c[0] for c in PLANNED_CASES])
def test_planned_in_process_matches_single_process(tmp_path, reference, name, model, plan):
    import json

    args = write_args(tmp_path / "args.json", model=model, plan=plan, output_dir=str(tmp_path / "out"),
                      seq_length=32, global_batch_size=4, **TRAIN)
    done = run_train(args, nproc=2, log_dir=tmp_path / "logs")
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}\n{worker_logs(tmp_path / 'logs')}"
    applied = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert (applied["cluster"]["device"], applied["cluster"]["num_devices"]) == ("cpu", 2)
    if plan != "auto":
        assert applied["layout"]["mp"] == 2
    _assert_parity([line["loss"] for line in read_metrics(tmp_path / "out")], reference(model))


# ---- blocked on CPU -------------------------------------------------------------------------
# Each of these fails on the CPU build of Paddle 3.3.1 for the reason in its comment; they run
# where a CUDA build sees enough GPUs.

def _four_layer_llama(directory) -> str:
    """A 4-layer variant of llama-tiny as a config.json path (virtual pipeline stages need pp * vpp layers)."""
    import json

    path = directory / "llama-4layer" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 176, "vocab_size": 512, "max_position_embeddings": 256}))
    return str(path)


GPU_CASES = [
    # Dynamic pipeline: cross-mesh reshard segfaults in the CPU wheel (GetDefaultPlace indexes an empty
    # custom-device list), so on CPU pipelines run only under to_static.
    ("llama-dynamic-pp2", "llama-tiny", dict(pp=2, mbs=2, micro_batches=2), False, 2, {}),
    # 1F1B and VPP deadlock on CPU: gloo sends are synchronous, the schedules interleave sends and receives.
    ("llama-static-pp2-1f1b", "llama-tiny", dict(pp=2, mbs=1, micro_batches=4), True, 2,
     {"pipeline_schedule": "1F1B"}),
    ("llama4-static-pp2-vpp2", "four-layers", dict(pp=2, vpp=2, mbs=1, micro_batches=4), True, 2, {}),
    # dp2 x mp2 under to_static hangs on CPU: gloo contexts of the 4-rank sub-groups are created in
    # different orders on different ranks ("Connection refused", then a gloo timeout).
    ("llama-static-dp2xmp2", "llama-tiny", dict(dp=2, mp=2, mbs=2), True, 4, {}),
    # pp2 x dp2 under to_static fails the same way on CPU (ProcessGroupGloo.create: "Connection refused").
    ("llama-static-pp2xdp2", "llama-tiny", dict(pp=2, dp=2, mbs=1, micro_batches=2), True, 4, {}),
    # Mixed precision: Paddle's AMP does nothing on CPU places.
    ("llama-dp2-bf16", "llama-tiny", dict(dp=2, mbs=2), False, 2, {"dtype": "bfloat16"}),
]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("name, model, layout, to_static, nproc, extra", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_gpu_layout_matches_single_process(tmp_path, name, model, layout, to_static, nproc, extra):
    if gpus() < nproc:
        pytest.skip(f"needs a CUDA build of Paddle and {nproc} GPUs")
    from runtime.apply import detect_launch

    device = detect_launch().device
    model = _four_layer_llama(tmp_path) if model == "four-layers" else model
    single = _losses(tmp_path, "single", model, dict(mbs=4), nproc=1, device=device)
    losses = _losses(tmp_path, name, model, layout, nproc=nproc, to_static=to_static, device=device, **extra)
    tolerance = 5e-2 if extra.get("dtype") == "bfloat16" else TOLERANCE  # bf16 keeps 8 mantissa bits
    assert all(abs(a - b) <= tolerance for a, b in zip(losses, single, strict=True)), (losses, single)
