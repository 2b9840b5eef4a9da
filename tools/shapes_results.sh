#!/usr/bin/env bash
# The shapes results of the method READMEs: every method run by tools/demo.py with a teacher of
# the student's architecture trained longer (<detector>_R18_long.yaml), teachers and plain students
# cached under output/results/cache and shared between methods, then one Markdown table.
#
#   bash tools/shapes_results.sh            # all of them (the README runs: 2.95 h of one-thread
#                                           # runs, two at a time on a 2-core CPU, before the four
#                                           # CrossKD/PKD GFL runs were added: about 5 min each)
#   bash tools/shapes_results.sh fcos gfl   # some detectors only
#
# The RetinaNet and FCOS shapes configs have trained with the recipe of the README since (LR
# 0.02, students 2000 iterations, teachers 1600), so those detectors' runs no longer give the
# README's one-run table, which was measured with the former solver.
# Extra arguments for every demo run go in DEMO_ARGS, e.g. DEMO_ARGS="--device cpu".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-output/results}
KD=configs/shapes/kd

declare -A RUNS=(
  [retinanet]="fgd_retinanet_R50_to_R18 pgd_retinanet_R50_to_R18 bckd_retinanet_R50_to_R18"
  [fcos]="fgd_fcos_R50_to_R18 pgd_fcos_R50_to_R18 bckd_fcos_R50_to_R18 pgd_bckd_fcos_R50_to_R18"
  [atss]="fgd_atss_R50_to_R18 pgd_atss_R50_to_R18"
  [gfl]="ld_gfl_R50_to_R18 bckd_gfl_R50_to_R18 pgd_gfl_R50_to_R18 pgd_bckd_gfl_R50_to_R18 crosskd_gfl_R50_to_R18 crosskd_gfl_R50_to_R18_posthold crosskd_pkd_gfl_R50_to_R18 pkd_gfl_R50_to_R18"
  [deformable_detr]="detrdistill_deformable_detr_R50_to_R18"
)
detectors=("$@")
[ ${#detectors[@]} -eq 0 ] && detectors=(retinanet fcos atss gfl deformable_detr)

results=()
for det in "${detectors[@]}"; do
  [ -n "${RUNS[$det]:-}" ] || { echo "unknown detector '$det' (one of: ${!RUNS[*]})" >&2; exit 2; }
  for method in ${RUNS[$det]}; do
    python tools/demo.py --method "$KD/$method.yaml" --teacher "configs/shapes/${det}_R18_long.yaml" \
      --output "$OUT/$method" --cache-dir "$OUT/cache" ${DEMO_ARGS:-}
    results+=("$OUT/$method/results.json")
  done
done
python tools/results_table.py "${results[@]}"
