#!/usr/bin/env bash
# On a machine with a CUDA GPU, from anywhere: the CUDA tests, then the CUDA/bf16 benchmark table. Under 5 minutes.
#   bash benchmarks/gpu_check.sh            (needs: pip install -e '.[dev]', which brings triton)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import torch, triton
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA device"
print(f"{torch.cuda.get_device_name()}: torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}")
PY
echo "== CUDA tests: the Triton kernel compiled (test_triton_ra.py) and the cuda-marked tests"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_triton_ra.py
timeout 150 python -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_fast_paths.py
echo "== CUDA benchmark (bf16, forward + backward)"
timeout 120 python benchmarks/bench_gpu_kernels.py --sizes 1024,2048,4096,8192 --lm-sizes 1024,4096 --repeats 10
