# Shared settings of Palisade's scripts: caches live outside the clone so fresh clones reuse them.
# (Only real configuration keys may use the PALISADE_ prefix: unknown ones are refused at start.)
palisade_cache="${XDG_CACHE_HOME:-$HOME/.cache}/palisade"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$palisade_cache/target}"
export PALISADE_MODEL_DIR="${PALISADE_MODEL_DIR:-$palisade_cache/models}"
