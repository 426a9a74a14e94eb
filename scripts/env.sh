# Shared settings of Palisade's scripts: caches live outside the clone so fresh clones reuse them.
export PALISADE_CACHE="${PALISADE_CACHE:-$HOME/.cache/palisade}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PALISADE_CACHE/target}"
export PALISADE_MODEL_DIR="${PALISADE_MODEL_DIR:-$PALISADE_CACHE/models}"
