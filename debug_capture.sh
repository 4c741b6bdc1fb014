#!/usr/bin/env bash
ROOT=$(pwd); S=$(mktemp -d); mkdir -p $S/site $S/farm/nnd $S/run
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" .whl/lark-*.whl $S/site
for f in nnd/*.py; do ln -s $ROOT/$f $S/farm/nnd/$(basename $f); done
for d in compiler runtime grammar; do ln -s $ROOT/$d $S/farm/nnd/$d; done
export PYTHONPATH=$S/farm:$S/site PYTHONDONTWRITEBYTECODE=1
cd $S/run
python3 -m pytest -c $ROOT/pyproject.toml --rootdir $ROOT -p no:cacheprovider -q -rfE -m gpu $ROOT/tests/test_gpu.py -k "training_steps and not captured or captures_by_default or captured" -W error::RuntimeWarning 2>&1 | tail -8
