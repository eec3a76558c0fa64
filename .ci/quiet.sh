# Sourced by every CI stage: quiet CMD… runs CMD with pip's "Location ... is ignored" warnings dropped;
# a failing CMD still fails the stage (the stages run with pipefail, and only grep's "nothing left" is forgiven).
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
