#!/usr/bin/env bash
# nenya's GPU checks in one command, for a lent GPU machine (the `device` tool's `run`), or any CUDA box.
#
#   bash bench/gpu.sh                      # on the device machine: results land in $OUT
#   SIZE=small bash bench/gpu.sh           # a quick pass (minutes), e.g. to check the machine first
#
# It uses the machine's own python3 with its CUDA PyTorch (nenya from src/ via PYTHONPATH: nothing is
# installed or fetched), then runs, each logged to $OUT:
#   1. the GPU tests (pytest -m gpu: nvjpeg decoding against the CPU path, pinned batches);
#   2. bench/extract.py on cuda: the Nenya path (SupCon resnet50, 64x64 cutouts from HDF5), nenya
#      vs the in-memory ceiling vs the original-style loop, fp32 and bf16;
#   3. bench/photos.py on cuda: ResNet-50 at 224 px from a JPEG folder, CPU decoding and --decode gpu;
#   4. bench/train.py on cuda: contrastive training images/s, fp32 vs bf16, eager vs torch.compile.
# Every bench appends its table, with the machine and date, to $OUT/RESULTS.md; copy those sections
# into bench/RESULTS.md. Packages the image lacks (faiss, umap-learn, s3fs) are not needed here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/nenya-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
if [ "${SIZE:-full}" = tiny ]; then  # a dry run of the script itself (works on a CPU with DEVICE=cpu)
  N_CUT=32; N_JPEG=16; BS=16; REPEAT=1
elif [ "${SIZE:-full}" = small ]; then
  N_CUT=4096; N_JPEG=512; BS=256; REPEAT=1
else
  N_CUT=65536; N_JPEG=5000; BS=512; REPEAT=3
fi
WORKERS=${WORKERS:-$(( $(nproc) > 9 ? 8 : $(nproc) - 1 ))}
status=0
step() { echo; echo "== $*"; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} | tee "$OUT/machine.txt"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: run this on a GPU machine (or DEVICE=cpu SIZE=tiny for a dry run)"; exit 2
fi

step "GPU tests"
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_device_decode.py 2>&1 | tee "$OUT/gpu-tests.log" || status=1

step "Nenya path: bench/extract.py"
"$PY" bench/extract.py --device "$DEVICE" --n "$N_CUT" --batch-size "$BS" --repeat "$REPEAT" --precision "${PRECISION:-fp32,bf16}" \
  --warmup "$BS" --results "$OUT/RESULTS.md" 2>&1 | tee "$OUT/extract.log" || status=1

step "photo path: bench/photos.py, CPU decoding then --decode gpu"
for decode in cpu gpu; do
  "$PY" bench/photos.py --device "$DEVICE" --n "$N_JPEG" --batch-size "$((BS / 2))" --workers "$WORKERS" \
    --precision "${PRECISION:-fp32,bf16}" --bf16-n "$N_JPEG" --decode "$decode" --results "$OUT/RESULTS.md" 2>&1 | tee "$OUT/photos-$decode.log" || status=1
done

step "training speed: bench/train.py, fp32/bf16, eager/compiled"
"$PY" bench/train.py --device "$DEVICE" --batch "$BS" --batches "${TRAIN_BATCHES:-20}" \
  --results "$OUT/RESULTS.md" 2>&1 | tee "$OUT/train.log" || status=1

step "done (status $status): $OUT"
ls -l "$OUT"
exit $status
