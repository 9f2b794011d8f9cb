#!/usr/bin/env bash
# The GPU measurements of issue #15 in one run, each beside its floor or anchor (bench/RESULTS.md):
# ViT-B-32 bf16 training samples/s with the image store and DataLoader workers (our trainer and
# open_clip_train, each with its share of a step waiting for data, and both loaders alone, without a
# model); the largest global batch (GradCache + tiled loss + gradient checkpointing); issue #11's corpus
# encoding images/s; each trainer's device time per step (torch.profiler); exact top-1000 for 2,000
# queries over 1M and 10M x 512 fp16 documents. Random weights (nothing is downloaded); a synthetic shop
# of 12,000 queries x 30 results (145k training rows, 40k 96 px product images).
#
#     OUT=results/ bash bench/gpu_issue15.sh    # from the repository root, gclcore importable
#
# The numbers not yet measured on a GPU come first, the ones already measured and met last, so a run cut
# short by a device's time limit still brings back what is missing: every part writes its own file in
# $OUT as it ends, and $OUT/timeline.txt says when each part began.
set -u
OUT=${OUT:-gpu-results}
WORKERS=${WORKERS:-12}
SHOP=${SHOP:-/tmp/gpu-shop}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
part() { echo "${SECONDS} s: $1" | tee -a "$OUT/timeline.txt"; }
# the JSON that a part printed among its log lines: json_of NAME (NAME.log -> NAME.json)
json_of() { sed -n '/^{$/,/^}$/p' "$OUT/$1.log" > "$OUT/$1.json"; }
# ViT-B-32 bf16 training, batch 1,024, on the shop: train_speed SECONDS_ALLOWED [train_speed.py options]
train_speed() { timeout "$1" python3 bench/train_speed.py --device cuda --model ViT-B-32 --pretrained none \
    --precision bf16 --batch-size 1024 --workers "$WORKERS" --data "$SHOP" "${@:2}"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" | tee -a "$OUT/gpu.txt"
{ nproc; free -g | head -2; df -h /dev/shm | tail -1; } | tee -a "$OUT/gpu.txt"

# the shop is drawn on the CPU while the GPU searches 1M documents (little host work)
part "shop + search over 1M"
[ -f "$SHOP/query_0_product_id_0.csv" ] || python3 bench/large_batch.py --make-shop "$SHOP" --queries 12000 \
    --products 40000 > "$OUT/shop.log" 2>&1 &
shop=$!
timeout 150 python3 bench/eval_speed.py --device cuda --dtype float16 --docs 1000000 --retrieval-only \
    --query-chunk 256 2000 --corpus-chunk 1048576 | tee "$OUT/retrieval_1m.json"
wait $shop || { tail -20 "$OUT/shop.log"; exit 1; }

part "image store"
timeout 120 python3 -m gclcore.image_store build --data-dir "$SHOP" --model ViT-B-32 --workers "$WORKERS" 2>&1 | tail -3
part "training samples/s: open_clip_train, ours, ours with texts padded"
train_speed 300 --steps 14 --warmup 4 --runs open_clip_train ours_binary ours_binary_padded > "$OUT/train_speed.log" 2>&1
grep '^# run' "$OUT/train_speed.log"
json_of train_speed
part "largest global batch"
timeout 300 python3 bench/large_batch.py --data "$SHOP" --model ViT-B-32 --precision bf16 --micro-batch 2048 \
    --global-batch 16384 65536 --workers "$WORKERS" 2>&1 | tee "$OUT/large_batch.log" | grep -v "^train"
json_of large_batch
part "corpus encoding (issue #11)"
# ViT-B-32 fp16, 8,192 JPEGs through Encoder.encode_image_files, beside the model alone
timeout 150 python3 bench/reproduce_speed.py --device cuda --workers "$WORKERS" 2> "$OUT/reproduce_speed.log" \
    | tee "$OUT/reproduce_speed.json"
part "device time per step: open_clip_train, ours"
# torch.profiler over each whole run: the device's busy time and share of the steady steps, its top kernels
train_speed 240 --steps 10 --warmup 4 --profile --runs open_clip_train ours_binary > "$OUT/device_profile.log" 2>&1
json_of device_profile
part "training samples/s: GCL's weights, multi-field"
train_speed 150 --steps 14 --warmup 4 --runs ours_weighted ours_multi_field > "$OUT/train_speed_gcl.log" 2>&1
grep '^# run' "$OUT/train_speed_gcl.log"
json_of train_speed_gcl
# diagnostics: where a step waits for the device (CUDA's sync debug mode); the loaders alone, without a model
part "step syncs"
timeout 120 python3 bench/step_syncs.py --data "$SHOP" --model ViT-B-32 --batch-size 1024 --workers "$WORKERS" \
    2> "$OUT/step_syncs.log" | tee "$OUT/step_syncs.json"
part "loaders alone"
timeout 150 python3 bench/loader_speed.py --data "$SHOP" --model ViT-B-32 --batch-size 1024 --batches 48 \
    --workers "$WORKERS" --rounds 1 2> "$OUT/loader_speed.log" | tee "$OUT/loader_speed.json"
part "search over 10M"
timeout 200 python3 bench/eval_speed.py --device cuda --dtype float16 --docs 10000000 --retrieval-only \
    --query-chunk 2000 --corpus-chunk 1048576 | tee "$OUT/retrieval_10m.json"
nvidia-smi --query-gpu=memory.used --format=csv | tee -a "$OUT/gpu.txt"
part "done"
