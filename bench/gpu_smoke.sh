#!/usr/bin/env bash
# The GPU path, end to end: the smoke preset (params/smoke.yaml) through `dvc repro` on CUDA, DeepSpeed ZeRO-2
# with bf16 where the GPU has it, first in one process, then with the policies under ZeRO-3 (partitioned loading,
# the reference as a partitioned inference engine), then in two processes under the deepspeed launcher (where
# there are two GPUs: each samples half of every on-policy batch). Checks that every stage finished and that the training stages used the GPU (peak GPU memory > 0),
# and prints per-stage times. Run it on any new GPU machine:  bash bench/gpu_smoke.sh
# Without a GPU it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_smoke: torch sees no CUDA device on this machine: nothing to check here (run it where there is a GPU)."
  exit 0
fi
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
"$PY" -c 'import torch; print("gpu_smoke:", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0),
          "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())'
export PATH="$(dirname "$PY"):$PATH" PFTLAB_MLFLOW=${PFTLAB_MLFLOW:-0} DVC_NO_ANALYTICS=1

run() {  # run <name> <launch> <policy's DeepSpeed config>: a fresh copy of the repository with the smoke preset
  local name=$1 launch=$2 policy_config=$3 work
  work=$(mktemp -d "/tmp/pftlab-gpu-smoke-$name.XXXX")
  # the repository's files (as tests/test_pipeline.py copies them); not the default run's metrics
  git ls-files -z --cached --others --exclude-standard | grep -zvE '^metrics/' | xargs -0 cp --parents -t "$work"
  git ls-files -z 'metrics/*README.md' | xargs -0 -r cp --parents -t "$work"
  cd "$work"
  "$PY" - "$launch" "$policy_config" <<'PYEOF'
import sys, yaml
p = yaml.safe_load(open("params/smoke.yaml"))
p["launch"] = sys.argv[1]
for section in ("sft", "reward_model", "policy"):
    p[section]["deepspeed"] = "configs/deepspeed/zero2.json"  # bf16 "auto": on where the GPU has it
p["policy"]["deepspeed"] = sys.argv[2]
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PYEOF
  git init -q && git add -A && git -c user.email=gpu@smoke -c user.name=gpu commit -qm smoke
  local start=$SECONDS
  if ! dvc repro > repro.log 2>&1; then
    echo "gpu_smoke[$name]: dvc repro FAILED; the last lines of $work/repro.log:"; tail -40 repro.log; exit 1
  fi
  echo "gpu_smoke[$name]: dvc repro finished in $((SECONDS - start)) s ($work)"
  "$PY" - "$name" <<'PYEOF'
import json, pathlib, sys
rows, bad = [], []
for path in sorted(pathlib.Path("metrics").rglob("*.json")):
    m = json.loads(path.read_text())
    if "seconds" not in m:
        continue
    gpu = m.get("peak_gpu_memory_gb")
    rows.append((str(path), m["seconds"], gpu))
    training = path.parts[1] in ("sft.json", "reward_model.json", "policy")
    if training and not gpu:
        bad.append(str(path))
print(f"{'stage metrics':48} {'seconds':>8} {'peak GPU GiB':>13}")
for name, seconds, gpu in rows:
    print(f"{name:48} {seconds:8.1f} {gpu if gpu is not None else '-':>13}")
if bad:
    sys.exit(f"gpu_smoke[{sys.argv[1]}]: these training stages did not use the GPU: {bad}")
print(f"gpu_smoke[{sys.argv[1]}]: OK, every training stage ran on CUDA")
PYEOF
  cd "$ROOT"
}

run one-process "python" configs/deepspeed/zero2.json
run zero3 "python" configs/deepspeed/zero3.json
if [ "$GPUS" -ge 2 ]; then
  run two-processes "deepspeed --num_gpus 2" configs/deepspeed/zero2.json
else
  echo "gpu_smoke: one GPU only: the two-process run under the deepspeed launcher needs two; skipped."
fi
