#!/usr/bin/env bash
# The suite-wide leak check: every secret value the tests handed to regcred
# (recorded in DIR/secret-values.txt) is searched for in every operator log
# the suite produced (DIR/*.log, written at debug level). Any hit fails.
set -euo pipefail
dir="${1:?usage: hack/check-leaks.sh DIR}"
values="$dir/secret-values.txt"
shopt -s nullglob
logs=("$dir"/*.log)
if [[ ! -s "$values" || ${#logs[@]} -eq 0 ]]; then
  echo "check-leaks: no secret values or no operator logs in $dir: the suite did not record them" >&2
  exit 1
fi
hits=0
checked=0
while IFS= read -r value; do
  [[ -n "$value" ]] || continue
  if [[ ${#value} -lt 8 ]]; then
    echo "check-leaks: a recorded secret value is shorter than 8 characters; tests must use distinctive secrets" >&2
    exit 1
  fi
  checked=$((checked + 1))
  if grep -rlF -- "$value" "${logs[@]}" >/dev/null; then
    echo "check-leaks: a secret value appears in: $(grep -rlF -- "$value" "${logs[@]}" | tr '\n' ' ')" >&2
    hits=$((hits + 1))
  fi
done < <(sort -u "$values")
echo "check-leaks: ${#logs[@]} operator logs, $checked secret values, $hits hits"
[[ $hits -eq 0 ]]
