# The install artifact: the tier operators and the host supervisor, one
# binary (`infra-operator`, operators/tiers/src/bin/infra-operator.rs) on
# the bookworm base, run on a host with the Docker socket and a restart
# policy (docs/operating.md, "Install a host"). Built from this checkout's
# binary: target/$INFRA_PROFILE/infra-operator (release by default; the
# tests build it from debug), so `cargo build` comes first. Not part of the
# default set of build.sh: `e2e/images/build.sh debian operators`.
TAG="infra-local/operators:${INFRA_OPERATORS_TAG:-dev}"
KIND=dockerfile
OPT_IN=1
OPERATOR_BIN="$HERE/../../target/${INFRA_PROFILE:-release}/infra-operator"
[ -x "$OPERATOR_BIN" ] || die "operators: no $OPERATOR_BIN (cargo build --bin infra-operator${INFRA_PROFILE:+ with profile $INFRA_PROFILE} first)"
# The binary is part of what the image is made of: a new build, a new image.
HASH_EXTRA="$(sha256sum < "$OPERATOR_BIN" | cut -c1-16) ${INFRA_OPERATORS_TAG:-dev}"
export OPERATOR_BIN
