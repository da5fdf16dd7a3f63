#!/usr/bin/env bash
# Issue 39's runs, in order (each resumes when rerun with the same code): Moon et al.'s
# robust-to-robustification training on MNIST at eps = eps_def = 0.2 L-inf, on the cnn and on
# Madry et al.'s larger network, then the study on each at the issue's threat model (budget
# measured from the defended point, the defender's budget = eps). One thread per job.
#
#     bash experiments/preempt_study.sh            # from the repository root, in .venv
# The cnn's weights from the first run are shipped as shipped:mnist-cnn-preempt-0.2
# (`--checkpoint shipped:mnist-cnn-preempt-0.2` skips its 63-minute training).
set -eu
export DEFPERT_THREADS=${DEFPERT_THREADS:-1}
D="python -m defpert"
$D train --dataset mnist --model cnn --adversarial preempt --adv-eps 0.2 --defense-eps 0.2 \
    --adv-steps 10 --adv-step-size 0.05 --out runs/mnist-cnn-preempt-0.2
$D train --dataset mnist --model madry --adversarial preempt --adv-eps 0.2 --defense-eps 0.2 \
    --adv-steps 10 --adv-step-size 0.05 --out runs/mnist-madry-preempt-0.2
for model in mnist-cnn-preempt-0.2 mnist-madry-preempt-0.2; do
    $D dp --checkpoint runs/$model -p linf -e 0.2 -k 20 -a 0.01 \
        --defense ce,robustify,robustify-label-free --limit 1000 --strong-limit 200 \
        --adaptive-limit 0 --json --out runs/study-$model-linf0.2
done
