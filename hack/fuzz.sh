#!/usr/bin/env bash
# make fuzz: every native Go fuzz target, one after the other, for a set time each.
#
#   hack/fuzz.sh [--smoke] [--time DURATION] [--match REGEX] [packages...]
#
#   packages      where to look for targets (default ./...); every func FuzzX that
#                 `go test -list '^Fuzz'` reports there is run, so a new target needs no registration
#   --time D      how long each target runs (default $FUZZTIME, else 60s; 10s with --smoke)
#   --match RE    only targets whose "importpath.FuzzX" matches the extended regex RE
#   --smoke       CI's pass: a new crasher is printed (input and failure) and moved out of the clone
#                 into $TRAFFICLAB_CACHE/fuzz-crashers, and the run still exits 0. The committed
#                 corpora (testdata/fuzz) are what gates: the ordinary `go test` replays them, and a
#                 random find made after the change was written must not block its landing.
#
# Also from the environment: FUZZMINIMIZETIME (default 60s, 10s with --smoke) bounds the minimization
# of a crasher; FUZZ_FLAGS go to every go test (e.g. -parallel 1).
#
# Without --smoke a crasher stays where go test writes it (the package's testdata/fuzz/FuzzX/), ready
# to be committed as a seed with its fix, and the run exits 1 once every target has had its turn.
#
# The fuzz cache (the interesting inputs each run builds on) lives outside the clone, in
# $TRAFFICLAB_CACHE/fuzz, so a second run continues where the first stopped.
# `go test -fuzz` takes one target of one package per run, hence one go test per target.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

smoke=false
fuzztime=${FUZZTIME:-}
match=
pkgs=()
while (($#)); do
  case $1 in
    --smoke) smoke=true ;;
    --time) fuzztime=$2; shift ;;
    --time=*) fuzztime=${1#*=} ;;
    --match) match=$2; shift ;;
    --match=*) match=${1#*=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz: unknown flag $1 (see hack/fuzz.sh --help)" >&2; exit 2 ;;
    *) pkgs+=("$1") ;;
  esac
  shift
done
((${#pkgs[@]})) || pkgs=(./...)
if [[ -z $fuzztime ]]; then
  if $smoke; then fuzztime=10s; else fuzztime=60s; fi
fi
# Minimizing a crasher is bounded too, so that a find cannot stretch the smoke pass much.
minimize=${FUZZMINIMIZETIME:-$($smoke && echo 10s || echo 60s)}

cache=${TRAFFICLAB_CACHE:-/var/cache/trafficlab}
corpus_dir=$cache/fuzz
crasher_dir=$cache/fuzz-crashers
mkdir -p "$corpus_dir" "$crasher_dir"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Discovery: packages whose test files declare a fuzz function (a cheap filter, so that only those
# test binaries are built), then go test -list for the authoritative names.
# (Listed into files first: a package that does not build must fail the run, not drop its targets.)
go list -f '{{.Dir}} {{.ImportPath}} {{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' "${pkgs[@]}" >"$logs/packages"
declare -A pkgdir
candidates=()
while read -r dir importpath files; do
  [[ -n $files ]] || continue
  # shellcheck disable=SC2086 # the file list is space separated by go list
  if (cd "$dir" && grep -qE '^func Fuzz' $files); then
    candidates+=("$importpath")
    pkgdir[$importpath]=$dir
  fi
done <"$logs/packages"

targets=()
if ((${#candidates[@]})); then
  go test -list '^Fuzz' "${candidates[@]}" >"$logs/list" || { cat "$logs/list"; exit 1; }
  names=()
  while read -r line; do
    case $line in
      Fuzz*) names+=("$line") ;;
      "ok "*)
        read -r _ importpath _ <<<"$line"
        for n in "${names[@]}"; do targets+=("$importpath $n"); done
        names=()
        ;;
    esac
  done <"$logs/list"
fi
if [[ -n $match ]]; then
  kept=()
  for t in "${targets[@]}"; do
    [[ ${t/ /.} =~ $match ]] && kept+=("$t")
  done
  targets=("${kept[@]}")
fi
if ((${#targets[@]} == 0)); then
  echo "fuzz: no fuzz targets found in ${pkgs[*]}${match:+ matching $match}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, $fuzztime each$($smoke && echo ', smoke: new crashers do not fail the run')"

# Files under testdata/fuzz/<target> that git does not know: a crasher this run wrote (or one an
# earlier run left; those are listed before the target runs and not counted).
untracked() { git ls-files --others --exclude-standard -- "$1" 2>/dev/null | sort; }

# line RESULT: one target's line, printed now and again in the summary.
line() {
  summary+=("$(printf '%-28s %-52s %5ss %12s execs  %s' "$name" "$importpath" "$took" "${execs:-?}" "$1")")
  echo "fuzz: ${summary[-1]}"
}

T0=$SECONDS
summary=()
found=0
failed=0
deadline=0
for t in "${targets[@]}"; do
  read -r importpath name <<<"$t"
  dir=${pkgdir[$importpath]}
  rel=${dir#"$ROOT"/}
  seeds=$rel/testdata/fuzz/$name
  before=$(untracked "$seeds")
  log=$logs/$name.log
  start=$SECONDS
  rc=0
  # -run '^$': the package's unit tests ran elsewhere; -parallel defaults to GOMAXPROCS workers.
  go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" \
    ${FUZZ_FLAGS:-} "$importpath" -test.fuzzcachedir="$corpus_dir/$importpath" >"$log" 2>&1 || rc=$?
  took=$((SECONDS - start))
  # The last progress line says how much work the run did: "fuzz: elapsed: 1m0s, execs: 123 (2/sec), ..."
  execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)
  if ((rc == 0)); then
    line ok
    continue
  fi
  new=$(comm -13 <(printf '%s\n' "$before") <(untracked "$seeds") | sed '/^$/d')
  # Go 1.26's fuzz coordinator can fail a target at the -fuzztime deadline with a bare "context
  # deadline exceeded" and no input, when the deadline's cancel races the workers' shutdown
  # (go.dev/issue/75804, fixed in Go 1.27 and not in 1.26.x). That is no find and no failure of
  # ours: report it, and count it apart, so that it fails neither make fuzz nor the smoke pass.
  if [[ -z $new ]] && grep -qx '    context deadline exceeded' "$log" && ! grep -q -- '--- FAIL: .*/' "$log"; then
    deadline=$((deadline + 1))
    line "deadline race (go.dev/issue/75804, no input: not a find)"
    continue
  fi
  if [[ -z $new ]]; then
    # No input written: the target did not build, or a committed seed failed. Both fail the
    # ordinary go test as well; here they are reported and counted.
    failed=$((failed + 1))
    echo "=== $importpath $name failed without a new input:"
    grep -vE '^fuzz: (elapsed|minimizing)' "$log"
    line "FAILED (no input written)"
    continue
  fi
  found=$((found + 1))
  echo "=== $importpath $name: new crasher"
  # The failure (panic or t.Error) as go test printed it, without the progress lines.
  grep -vE '^fuzz: (elapsed|minimizing)' "$log"
  for f in $new; do
    echo "--- input $f:"
    cat "$f"
    if $smoke; then
      keep=$crasher_dir/$importpath/$name
      mkdir -p "$keep"
      cp "$log" "$keep/$(basename "$f").log"
      mv "$f" "$keep/"
      rmdir -p "$seeds" 2>/dev/null || true # and testdata/fuzz if go test made them
      echo "--- saved as $keep/$(basename "$f") (with its .log); to replay it:"
      echo "    mkdir -p $seeds && cp $keep/$(basename "$f") $seeds/ && go test -run '^$name/$(basename "$f")\$' $importpath"
    else
      echo "--- left in place: commit it as a seed with the fix; replay: go test -run '^$name/$(basename "$f")\$' $importpath"
    fi
  done
  line CRASHER
done

echo
echo "fuzz: summary: $((SECONDS - T0))s for ${#targets[@]} targets ($fuzztime each); $found new crashers, $failed failures, $deadline ended by Go's deadline race"
printf '%s\n' "${summary[@]}"
# The smoke pass never gates: a target that does not build or a committed seed that fails already
# fails the ordinary go test, and a find is printed and kept above.
$smoke || ((found == 0 && failed == 0))
