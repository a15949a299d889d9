#!/bin/bash
# Ablation of the pilot at 680 steps: word dropout 0.25 alone, free bits 12.8 alone.
cd /tmp/smiles_abl  # a git archive of commit fe07486
export PYTHONPATH=/tmp/smiles_abl PYROVAE_DATA=/work/shared/data OMP_NUM_THREADS=1 MPLBACKEND=Agg
PY=/work/main/.venv/bin/python
run() {
  name=$1; shift
  date -u +"$name start %FT%TZ"
  nice -n 10 $PY -m experiments.smiles.train --train-size 100000 --epoch-size 5000 --kl-epochs 8 \
    "$@" --device cpu --out runs/smiles/$name --epochs 17
  date -u +"$name trained %FT%TZ"
  nice -n 10 $PY -m experiments.smiles.evaluate --checkpoint runs/smiles/$name/last.pt --samples 10000 \
    --reconstruct 1000 --projection 2000 --device cpu --out runs/smiles/eval_$name
  cp runs/smiles/$name/train.json runs/smiles/eval_$name/train.json
  date -u +"$name done %FT%TZ"
}
run dropout680 --word-dropout 0.25
run freebits680 --free-bits 12.8
