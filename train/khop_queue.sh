#!/usr/bin/env bash
# Trains and evaluates the k-hop models of configs/khop.py listed in a queue file, one after another, resumably:
#   nice -n 10 bash train/khop_queue.sh runs/khop/queue.txt > runs/khop/queue.log 2>&1 &
# Each line of the file is NAME [FLAGS for eval.study --evaluate; default --nogrid]; the file is read again
# before each model, so it can be edited while the queue runs. A model whose result file exists is skipped; a
# stopped training resumes from its last checkpoint. The queue stops at the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
queue=$1
while true; do
  next=$(while read -r name flags; do
           [ -n "$name" ] && [ ! -e "docs/study/khop/$name.json" ] && { echo "$name ${flags:---nogrid}"; break; }
         done < "$queue")
  [ -z "$next" ] && { echo "$(date -Is) queue empty"; exit 0; }
  read -r name flags <<< "$next"
  echo "$(date -Is) $name: training"
  .venv/bin/python -m train.pretrain --config "configs/khop.py:$name" --workdir "runs/khop/$name" || exit 1
  echo "$(date -Is) $name: evaluating ($flags)"
  # shellcheck disable=SC2086
  .venv/bin/python -m eval.study --study khop --evaluate "$name" $flags --workdir runs/khop || exit 1
  echo "$(date -Is) $name: done"
done
