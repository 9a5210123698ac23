"""Run by tests/test_two_processes.py under `torchrun --nproc_per_node 2` (gloo, CPU). For each algorithm named
(`<name>_zero3`: under ZeRO-3), trains it with DeepSpeed on the toy task of tests/test_checkpoint.py and, on rank
0, saves every batch the loop collected (gathered from both processes' shards), the history and the final weights. For `partitioned`,
loads `<out>/checkpoint` under ZeRO-3 partitioned loading (`<out>/zero3.json`) and saves, per rank, what the
process holds and its peak memory."""
import json
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pftlab.algorithms.table import ALGORITHMS  # noqa: E402
from pftlab.core import distributed  # noqa: E402
from pftlab.core.stage import seed_everything  # noqa: E402
from pftlab.training.loop import train_policy  # noqa: E402
from pftlab.training.sources import make_source, sample_and_score  # noqa: E402
from tests.test_checkpoint import CFG, GENERATION, HP, TOKENIZER, loop_config, reward_fn  # noqa: E402
from tests.test_model import EOS, PAD, tiny_model  # noqa: E402

PAIRS = [{"prompt_ids": [3 + i % 5], "chosen_ids": [7, 8, EOS], "rejected_ids": [9, EOS]} for i in range(6)]
PROMPTS = [[3 + i] for i in range(5)]


class Recording:
    """A sample source that keeps (a CPU copy of) what it hands the loop."""

    def __init__(self, source):
        self.source, self.batches = source, []

    def collect(self, n, policy, ref):
        batch = self.source.collect(n, policy, ref)
        self.batches.append(batch)
        return batch

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def eos_prone(model):
    """EOS with probability about 0.8 at every token, so that the two processes' samples end at different steps:
    under ZeRO-3 the one done first must keep stepping with the other (every forward pass gathers weights)."""
    with torch.no_grad():
        model.transformer.ln_f.weight[0], model.transformer.ln_f.bias[0] = 0.0, 1.0
        model.transformer.wte.weight[EOS] = 0.0
        model.transformer.wte.weight[EOS, 0] = 6.0
    return model


def run(task: str, out: Path):
    """`<algorithm>` under ZeRO-2, or `<algorithm>_zero3` under ZeRO-3 (`<out>/zero3.json`) with an EOS-prone model,
    the reference a partitioned inference engine, and one collection of 3 prompts (uneven shards) at the end."""
    from pftlab.training.optimization import frozen_model, full_weights

    name, zero3 = task.removesuffix("_zero3"), task.endswith("_zero3")
    seed_everything(0)
    algorithm, hp = ALGORITHMS[name], HP[name]
    policy, ref = tiny_model(seed=1).train(), tiny_model(seed=1).requires_grad_(False)
    if zero3:
        policy, ref = eos_prone(policy), eos_prone(ref)
    config = str(out / "zero3.json") if zero3 else str(ROOT / "configs" / "deepspeed" / "zero2.json")
    ref = frozen_model(ref, config)
    source = Recording(make_source(algorithm, hp, pairs=PAIRS, prompts=PROMPTS, generation=GENERATION,
                                   reward_fn=reward_fn, tokenizer=TOKENIZER, seed=0, batch_size=CFG["batch_size"]))
    history = train_policy(algorithm, hp, loop_config(CFG | {"deepspeed": config}), 0, policy, ref, source)
    with full_weights(policy):  # (ZeRO-3: gathered on every process)
        weights = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    extra = {}
    if zero3:
        uneven = sample_and_score(policy, ref, PROMPTS[:3], 2, GENERATION, reward_fn, EOS, PAD)
        extra["uneven_rows"] = len(uneven.seqs)
    if distributed.is_main_process():
        torch.save({"batches": source.batches, "history": history, "weights": weights, **extra}, out / f"{task}.pt")


def anonymous_mb() -> float:
    """Memory this process owns (RssAnon): not the checkpoint file's pages, which the kernel's cache shares."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def partitioned(out: Path):
    import deepspeed

    from pftlab.lm.model import load_policy
    from pftlab.training.optimization import full_weights, partitioned_loading

    deepspeed.init_distributed()
    base, peak = anonymous_mb(), [0.0]

    def watch():  # RssAnon has no high-water mark of its own: sampled
        while True:
            peak[0] = max(peak[0], anonymous_mb())
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()
    with partitioned_loading(out / "zero3.json"):
        model = load_policy(out / "checkpoint")
    time.sleep(0.05)
    loading_peak = peak[0] - base  # before the check below gathers the whole weights
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    saved = load_policy(out / "checkpoint") if distributed.is_main_process() else None
    with full_weights(model):
        same = saved is None or all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                        saved.state_dict().values()))
    (out / f"partitioned_rank{distributed.rank()}.json").write_text(json.dumps(
        {"partitioned_at_load": all(hasattr(p, "ds_id") for p in model.parameters()), "held": held, "full": full,
         "peak_mb": loading_peak, "same_weights": same}))


if __name__ == "__main__":
    for task in sys.argv[2:]:
        partitioned(Path(sys.argv[1])) if task == "partitioned" else run(task, Path(sys.argv[1]))
