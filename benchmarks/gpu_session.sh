#!/usr/bin/env bash
# The checks this project runs when a session is lent a GPU: one prepared script, run from
# the repository root on the GPU machine, its results packed into $OUT/results.tgz.
#
#   benchmarks/gpu_session.sh smoke          # environment, throughput alone, a timed slice
#   EPOCHS=10 benchmarks/gpu_session.sh train SECONDS  # PGD-40, TRADES-40, Fashion TRADES
#   benchmarks/gpu_session.sh study SECONDS            # the robust models' study, full n
#   benchmarks/gpu_session.sh speed SECONDS            # issue 42: the attack loop, bf16 search
#   benchmarks/gpu_session.sh preempt SECONDS          # issue 39: the study at n = 1,000
#
# Expects (carried beside the working tree, ignored by git): .whl/ (openTSNE, ART,
# torchattacks wheels for the GPU machine's Python), .devdata/{mnist,fashion-mnist}/*.xz
# (the IDX files: `study` needs only the two t10k files of each; the tracked tree and the
# data must stay under the 64 MiB a call carries, so carry the train files only to train).
# Made here with `defpert data fetch` first, then
#   mkdir -p .devdata/mnist .devdata/fashion-mnist; echo /.devdata/ >>.git/info/exclude
#   for f in ~/.cache/defpert/data/*/t10k*; do
#       xz -9 -c "$f" >".devdata/$(basename "$(dirname "$f")")/$(basename "$f").xz"; done
# Every job has its own time limit, so one that fails or runs long costs only itself;
# jobs that share the GPU say so in their logs (their wall times are of a shared device).
# Sizes seen on an H100: `smoke` ~130 s; 10 epochs of PGD-40 on MNIST ~7.3 min alone.
set -u
MODE=${1:-smoke}
BUDGET=${2:-520}
START=$(date +%s)
OUT=${OUT:-/tmp/gpu-out}
W=/tmp/gpu-work
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 DEFPERT_DATA=/tmp/gpu-data MPLBACKEND=Agg
# Jobs run side by side: each torch process gets 2 CPU threads, not one per core (nine
# processes with 16 threads each on 16 cores stalled every job of an earlier session).
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
left() { echo $((BUDGET - ($(date +%s) - START))); }
pack() {  # logs and small results in one archive; each trained run (its checkpoint, or
    # the bookmark of an unfinished one) in its own, under the 16 MiB a returned file may hold
    (cd "$W" && find . -type f -size -3M ! -name '*.npz' ! -name '*.safetensors' ! -name '*.pt' |
        tar czf "$OUT/.results.tgz" -T -) && mv "$OUT/.results.tgz" "$OUT/results-$MODE.tgz"
    for run in "$W"/*-cnn-*/; do
        [ -d "$run" ] || continue
        local name
        name=$(basename "$run")
        local files
        files=$(cd "$run" && ls model.* metrics.json config.json train-state.pt 2>/dev/null)
        [ -n "$files" ] || continue
        (cd "$run" && tar czf "$OUT/.$name.tgz" $files) && mv "$OUT/.$name.tgz" "$OUT/run-$name.tgz"
    done
}

setup() {
    if [ ! -d /tmp/site ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target /tmp/site .whl/*.whl >"$W/setup.log" 2>&1 || echo "wheel install failed" >>"$W/setup.log"
    fi
    export PYTHONPATH="$PWD/src:$PWD/benchmarks:/tmp/site"
    for d in mnist fashion-mnist; do
        mkdir -p "$DEFPERT_DATA/$d"
        for f in .devdata/$d/*.xz; do
            t="$DEFPERT_DATA/$d/$(basename "$f" .xz)"
            [ -f "$t" ] || xz -dc "$f" >"$t"
        done
    done
    {
        nvidia-smi -L; nproc; python3 --version
        python3 -c 'import torch, defpert; print("torch", torch.__version__, torch.cuda.get_device_name(), "defpert", defpert.__file__)'
        git rev-parse HEAD 2>/dev/null || true
    } >>"$W/setup.log" 2>&1
}

job() {  # job NAME SECONDS COMMAND...: run with a time limit, log, exit status and wall time
    local name=$1 limit=$2
    shift 2
    [ "$limit" -ge 10 ] || limit=10
    case " ${SKIP:-} " in *" ${name%%-*} "*) echo "$name: skipped (SKIP)" | tee -a "$W/jobs.txt"; return 1 ;; esac
    local t0
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@" >>"$W/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$W/jobs.txt"
    return $rc
}

DP="python3 -m defpert dp --no-progress --device ${DEVICE:-cuda}"
TRAIN="python3 -m defpert train --no-progress --device ${DEVICE:-cuda} --dataset mnist --seed 0"

setup
PIDS=()
(while sleep 15; do pack; done) &
PACKER=$!

if [ "$MODE" = smoke ]; then
    job throughput 120 python3 benchmarks/pgd_throughput.py --json "$W/pgd_throughput_gpu.json"
    # one tenth of an epoch of each recipe, to size the main run's epochs
    job pgd40-slice 45 $TRAIN --adversarial pgd --adv-steps 40 --adv-step-size 0.01 --epochs 1 \
        --limit 6000 --out "$W/slice-pgd40"
    job trades-slice 45 $TRAIN --adversarial trades --epochs 1 --limit 6000 --out "$W/slice-trades"
    job dp-slice 60 $DP --checkpoint shipped:mnist-cnn-pgd -e 0.3 -k 40 -a 0.01 \
        --defense robustify,hedge --limit 300 --strong-limit 100 --adaptive-limit 50 \
        --adaptive-square-queries 200 --out "$W/dp-slice"
elif [ "$MODE" = speed ]; then
    # issue 42, one after another so that each has the GPU alone: PGD against the peers at
    # batch 512 and 2,048; the loop eager, under torch.compile and as a CUDA graph; the strong
    # suite searching in bf16 against fp32 on the same first 1,000 MNIST test images
    job data 60 python3 -c 'import torch; from defpert.data import load_split; from defpert.models import load_checkpoint
t = load_split("mnist", "test", progress=False); print(t.images.shape, t.images.dtype, float(t.images.min()), float(t.images.max()), t.labels[:10].tolist(), int(t.labels.min()), int(t.labels.max()))
for d in ("cpu", "cuda"):
    m, _ = load_checkpoint("shipped:mnist-cnn-pgd", map_location=d)
    with torch.no_grad(): print(d, float((m(t.images[:1000].to(d)).argmax(1).cpu() == t.labels[:1000]).float().mean()))'
    job throughput 100 python3 benchmarks/pgd_throughput.py --batch 512,2048 --steps 10 \
        --reps 3 --json "$W/pgd-throughput-h200.json"
    for v in defpert,eager,graph,torchattacks eager,compile; do
        job "loop-${v//,/-}" 100 python3 benchmarks/attack_loop.py --variants "$v" \
            --json "$W/attack-loop-h200-${v//,/-}.json"
    done
    job bf16 $(($(left) - 20)) python3 benchmarks/bf16_search.py --checkpoint shipped:mnist-cnn-pgd \
        --eps 0.2 --n 1000 --order fp32,bf16 --json "$W/bf16-search-mnist-cnn-pgd-linf0.2-n1000-h200.json"
elif [ "$MODE" = preempt ]; then
    # issue 39: the study at a reviewer's n on the shipped preempt model and on today's PGD
    # model (L-inf 0.2 from the defended point, eps_def 0.2): the weak attack on all 10,000,
    # the standard strong suite and undo-then-attack on the first 1,000; side by side
    L=$(($(left) - 15))
    for m in preempt-0.2 pgd; do
        job "study-$m" $L $DP --checkpoint "shipped:mnist-cnn-$m" -p linf -e 0.2 -k 20 -a 0.01 \
            --defense ce,robustify,robustify-label-free --strong-limit 1000 --adaptive-limit 0 \
            --json --out "$W/study-$m-linf0.2-n1000" &
        PIDS+=($!)
    done
    wait "${PIDS[@]}"
elif [ "$MODE" = train ]; then
    # issue 15: the recipes no CPU here can afford, side by side, each then measured as the
    # shipped PGD-10 model was (strong suite on the first 1,000, robustify from the defended
    # point). Rerunning on a warm machine resumes every step where it stopped.
    L=$(($(left) - 15))
    EVAL="--defense robustify --limit 1000 --strong-limit 1000 --adaptive-limit 0"
    (job train-pgd40 $L $TRAIN --adversarial pgd --adv-steps 40 --adv-step-size 0.01 \
        --epochs "${EPOCHS:-10}" --out "$W/mnist-cnn-pgd40" &&
        job strong-pgd40 $(($(left) - 10)) $DP --checkpoint "$W/mnist-cnn-pgd40" -e 0.3 -k 40 \
            -a 0.01 $EVAL --out "$W/dp-pgd40-linf0.3") &
    PIDS=($!)
    (job train-trades40 $L $TRAIN --adversarial trades --adv-steps 40 --adv-step-size 0.01 \
        --epochs "${EPOCHS:-10}" --out "$W/mnist-cnn-trades40" &&
        job strong-trades40 $(($(left) - 10)) $DP --checkpoint "$W/mnist-cnn-trades40" -e 0.3 \
            -k 40 -a 0.01 $EVAL --out "$W/dp-trades40-linf0.3") &
    PIDS+=($!)
    # the Fashion-MNIST TRADES model `reproduce --models trades` trains (10 steps of 0.025)
    (job train-fashion-trades $L ${TRAIN/mnist/fashion-mnist} --adversarial trades \
        --adv-steps 10 --adv-step-size 0.025 --epochs "${EPOCHS:-10}" \
        --out "$W/fashion-mnist-cnn-trades" &&
        job strong-fashion-trades $(($(left) - 10)) $DP --dataset fashion-mnist \
            --checkpoint "$W/fashion-mnist-cnn-trades" -e 0.1 -k 40 -a 0.0025 $EVAL \
            --out "$W/dp-fashion-trades-linf0.1") &
    PIDS+=($!)
    wait "${PIDS[@]}"
else
    # issue 15: the study of the robust models at the issue's n (weak attack on the whole test
    # set, the strong suite on the first 1,000, the adaptive attack on the first 500), one
    # dataset per job, on the shipped PGD and TRADES models (so the machine needs only the
    # test splits; the standard and FGSM-RS models' rows are measured on the CPU). Every
    # finished stage is kept, and a rerun on a warm machine resumes.
    L=$(($(left) - 15))
    STUDY="python3 -m defpert reproduce --no-progress --device ${DEVICE:-cuda} --defense ce,margin,robustify,hedge --strong-limit 1000 --adaptive-limit 500"
    job study-mnist $L $STUDY --dataset mnist --models pgd,trades --out "$W/study-mnist" &
    PIDS=($!)
    job study-fashion $L $STUDY --dataset fashion-mnist --models pgd,trades \
        --out "$W/study-fashion-mnist" &
    PIDS+=($!)
    # the first run of APGD, FAB, Square and the adaptive attack on a GPU, timed on a slice
    job dp-slice 120 $DP --checkpoint shipped:mnist-cnn-pgd -e 0.3 -k 40 -a 0.01 \
        --defense robustify,hedge --limit 300 --strong-limit 100 --adaptive-limit 50 \
        --out "$W/dp-slice" &
    PIDS+=($!)
    wait "${PIDS[@]}"
fi
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv >>"$W/setup.log" 2>&1
kill $PACKER 2>/dev/null
pack
cat "$W/jobs.txt"
