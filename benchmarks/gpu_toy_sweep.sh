#!/usr/bin/env bash
# Toy-world settings sweep on a GPU machine: three-object ESD-u erases (multi_concept.py) and robust
# ESD variants (robust_toy.py), each in its own process, all at once on --device cuda; results in
# $OUT/sweep.tgz (or /tmp/sweep). What it measured: benchmarks/results/gpu_toy_sweep/README.md.
#
#   bash benchmarks/gpu_toy_sweep.sh                 # LIM=400 (seconds per process), N=8 (images per prompt)
#
# On the lent machine without diffusers: carry the wheels as the device README says; this script
# installs .whl/*.whl and this tree into /tmp/site when .whl exists.
set -u
T0=$(date +%s)
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . >/tmp/pip.log 2>&1 || { tail -5 /tmp/pip.log; exit 4; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=/tmp/sweep; mkdir -p $W/logs
LIM=${LIM:-400}
N=${N:-8}
mc() { name=$1; shift; timeout $LIM python3 benchmarks/multi_concept.py --only objects-u --no-single -n $N --device cuda \
    --work $W/work/$name --out $W/mc/$name --name $name "$@" > $W/logs/$name.log 2>&1 & }
rb() { name=$1; shift; timeout $LIM python3 benchmarks/robust_toy.py -n $N --device cuda --work $W/work/$name --out $W/rb/$name "$@" > $W/logs/$name.log 2>&1 & }
mc o-s100 --set steps=100
mc o-s200 --set steps=200
mc o-s300 --set steps=300
mc o-eta2 --set steps=100 --set negative_guidance=2.0
mc o-lr4 --set steps=100 --set lr=0.0004
mc o-b8 --set steps=100 --set batch_size=8
A5="--robust-attack-steps 5"
rb r-def --only circle --preserve square $A5
rb r-s200 --only circle --preserve square --variants robust --set steps=200 $A5
rb r-w2 --only circle --preserve square --variants robust --set robust_weight=2.0 $A5
rb r-a10 --only circle --preserve square --variants robust --robust-attack-steps 10
rb r-pn --only circle --preserve-neighbours --variants robust $A5
rb r-lr4 --only circle --preserve square --variants robust --set lr=0.0004 $A5
rb rx-def --only striped --preserve dotted $A5
rb rx-s300 --only striped --preserve dotted --variants robust --set steps=300 --robust-attack-steps 10
wait
echo "all done in $(( $(date +%s) - T0 )) s"
for f in $W/logs/*.log; do echo "== $f"; grep -v "Warning\|warn" $f | tail -4; done
cd $W && tar czf ${OUT:-/tmp}/sweep.tgz --exclude='*.png' --exclude=work logs mc rb
