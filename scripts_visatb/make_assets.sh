#!/usr/bin/env bash
# Regenerate the README's figures from a demo run: assets/heatmap.png (contribution heatmap and weights) and
# assets/demo_table.md (the per-task table and the weights of report.md).
#   bash scripts_visatb/make_assets.sh                  # runs (or reuses) the demo in outputs/demo first
#   DEMO_DIR=outputs/demo SKIP_DEMO=1 bash scripts_visatb/make_assets.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEMO_DIR="${DEMO_DIR:-outputs/demo}"
ASSETS_DIR="${ASSETS_DIR:-assets}"
SKIP_DEMO="${SKIP_DEMO:-0}"

if [ "$SKIP_DEMO" != "1" ]; then
    OUTPUT_DIR="$DEMO_DIR" bash scripts_visatb/demo.sh
fi
for file in report.md heatmap.png; do
    [ -f "$DEMO_DIR/$file" ] || { echo "error: $DEMO_DIR/$file not found: run scripts_visatb/demo.sh first" >&2; exit 1; }
done
mkdir -p "$ASSETS_DIR"
cp "$DEMO_DIR/heatmap.png" "$ASSETS_DIR/heatmap.png"
# The report's opening table and its weights section, without the run-specific learning-check details.
# (The report's image link is relative to the report; the README shows assets/heatmap.png instead.)
awk '/^## Learning checks/ {exit} {print}' "$DEMO_DIR/report.md" \
    | sed -e 's/^# VisATB report$/# VisATB on the toy benchmark (scripts_visatb\/demo.sh)/' -e '/^!\[.*\](heatmap.png)$/d' \
    > "$ASSETS_DIR/demo_table.md"
echo "wrote $ASSETS_DIR/heatmap.png and $ASSETS_DIR/demo_table.md from $DEMO_DIR"
