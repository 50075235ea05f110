#!/usr/bin/env bash
# The main job: set up, train the default recipe (bundled EfficientNet-Lite0 + SmolLM2-135M-Instruct
# on easy-VQA), evaluate on all 9,673 easy-VQA test questions, and answer a question about a test image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
start=$(date +%s)
vlgraft train recipes/default.yaml --overwrite "$@"
vlgraft eval runs/default --text  # also the text ability before and after training (docs/EVAL.md)
image=$(python -c "import easy_vqa; print(easy_vqa.get_test_image_paths()[0])")
echo "Q: What color is the shape? (image: $image)"
vlgraft chat --image "$image" "What color is the shape?"
echo "main job: $(( $(date +%s) - start )) s after set-up"
