#!/bin/bash
# Stage 4 of the pilot (resume for 10 more minutes), then a control: the same command without
# word dropout and free bits, seeded the same way, to 680 steps.
cd /tmp/smiles_pilot
while ! grep -q "all done" pilot.log; do sleep 5; done
export PYTHONPATH=/tmp/smiles_pilot PYROVAE_DATA=/work/shared/data OMP_NUM_THREADS=1 MPLBACKEND=Agg
PY=/work/main/.venv/bin/python
TRAIN="$PY -m experiments.smiles.train --train-size 100000 --epoch-size 5000 --kl-epochs 8 --word-dropout 0.25 --free-bits 12.8 --device cpu --out runs/smiles/pilot"
evaluate() {  # name, run folder
  cp runs/smiles/$2/last.pt runs/smiles/$1.pt
  date -u +"eval $1 start %FT%TZ"
  nice -n 10 $PY -m experiments.smiles.evaluate --checkpoint runs/smiles/$1.pt --samples 10000 \
    --reconstruct 1000 --projection 2000 --device cpu --out runs/smiles/eval_$1
  cp runs/smiles/$2/train.json runs/smiles/eval_$1/train.json
  date -u +"eval $1 done %FT%TZ"
}
date -u +"stage 4 start %FT%TZ"
nice -n 10 $TRAIN --epochs 1000 --minutes 10 && evaluate long2 pilot
date -u +"control start %FT%TZ"
nice -n 10 $PY -m experiments.smiles.train --train-size 100000 --epoch-size 5000 --kl-epochs 8 \
  --device cpu --out runs/smiles/control --epochs 17 && evaluate control680 control
date -u +"all done 2 %FT%TZ"
