#!/bin/bash
# Pilot: the README's run (same data, model, seed, annealing) plus word dropout 0.25 and free bits
# 12.8 nats/molecule (0.2 per dimension, SketchRNN's default); evaluated at the old run's step
# counts (680, 880) and once more after a longer stretch.
cd /tmp/smiles_pilot
export PYTHONPATH=/tmp/smiles_pilot PYROVAE_DATA=/work/shared/data OMP_NUM_THREADS=1 MPLBACKEND=Agg
PY=/work/main/.venv/bin/python
TRAIN="$PY -m experiments.smiles.train --train-size 100000 --epoch-size 5000 --kl-epochs 8 --word-dropout 0.25 --free-bits 12.8 --device cpu --out runs/smiles/pilot"
evaluate() {
  cp runs/smiles/pilot/last.pt runs/smiles/$1.pt
  date -u +"eval $1 start %FT%TZ"
  nice -n 10 $PY -m experiments.smiles.evaluate --checkpoint runs/smiles/$1.pt --samples 10000 \
    --reconstruct 1000 --projection 2000 --device cpu --out runs/smiles/eval_$1
  cp runs/smiles/pilot/train.json runs/smiles/eval_$1/train.json
  date -u +"eval $1 done %FT%TZ"
}
date -u +"start %FT%TZ"
nice -n 10 $TRAIN --epochs 17 && evaluate steps680
nice -n 10 $TRAIN --epochs 22 && evaluate steps880
nice -n 10 $TRAIN --epochs 1000 --minutes 9 && evaluate long
date -u +"all done %FT%TZ"
