"""How much faster on-policy collection gets when it is split across processes, as a ratio measured in one run.

    python bench/collection_split.py                       # 64 prompts x 4 samples, the default CPU model
    python bench/collection_split.py --processes 8 --prompts 512     # on a GPU node: one process per GPU

The same collection (`training/sources.sample_and_score`: sampling with KV cache, reference and behaviour
log-probs, gathering) is timed with one process and with `--processes` processes under torchrun, each process
sampling its shard of the prompts (best of `--repeats`, after a warm-up). On the CPU the machine's cores are
divided among the processes, so the ratio shows what splitting gains at equal hardware. Results go to stdout
and `--out` (default `bench/results/collection_split.json`). Not a test: timings vary with load.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args):
    """One process of a torchrun launch: time the collection, rank 0 writes the seconds to `--result`."""
    import torch
    import yaml
    from transformers import GPT2Config, GPT2LMHeadModel

    from pftlab.core import distributed
    from pftlab.core.distributed import place
    from pftlab.training.sources import sample_and_score

    world = distributed.world_size()
    if distributed.device().type == "cpu":
        torch.set_num_threads(max(1, args.cores // world))
    if world > 1:
        torch.distributed.init_process_group("gloo" if distributed.device().type == "cpu" else "nccl")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    m = params["model"]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=params["tokenizer"]["vocab_size"], n_positions=args.prompt_tokens + args.new_tokens,
                        n_embd=m["n_embd"], n_layer=m["n_layer"], n_head=m["n_head"], eos_token_id=0, pad_token_id=1,
                        bos_token_id=0)
    policy, ref = place(GPT2LMHeadModel(config).eval()), place(GPT2LMHeadModel(config).eval())
    prompts = torch.randint(2, config.vocab_size, (args.prompts, args.prompt_tokens),
                            generator=torch.Generator().manual_seed(1), device=torch.device("cpu")).tolist()
    generation = {"max_new_tokens": args.new_tokens, "temperature": 1.0, "batch_size": args.generation_batch}

    def collect():
        if world > 1:
            torch.distributed.barrier()
        start = time.perf_counter()
        batch = sample_and_score(policy, ref, prompts, args.k, generation, None, 0, 1, desc="bench")
        if world > 1:
            torch.distributed.barrier()
        assert len(batch.seqs) == args.prompts * args.k  # every process holds the whole batch
        return time.perf_counter() - start

    collect()  # warm-up
    best = min(collect() for _ in range(args.repeats))
    if distributed.is_main_process():
        Path(args.result).write_text(json.dumps({"seconds": best}))
    if world > 1:
        torch.distributed.destroy_process_group()


def launch(args, processes: int) -> float:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [torchrun, "--standalone", "--nproc_per_node", str(processes), __file__, "--worker",
                   "--result", str(result)] + [a for a in sys.argv[1:] if a != "--worker"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.cores // processes))}
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        if run.returncode != 0:
            sys.exit(f"collection_split: {processes} process(es) failed:\n{run.stderr[-3000:]}")
        return json.loads(result.read_text())["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--generation-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads shared by the processes")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "collection_split.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    one = launch(args, 1)
    split = launch(args, args.processes)
    result = {"machine": platform.processor() or platform.machine(), "cores": args.cores, "prompts": args.prompts,
              "samples_per_prompt": args.k, "new_tokens": args.new_tokens, "processes": args.processes,
              "seconds_one_process": round(one, 3), f"seconds_{args.processes}_processes": round(split, 3),
              "speedup": round(one / split, 3)}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
