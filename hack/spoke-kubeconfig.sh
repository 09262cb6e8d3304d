#!/usr/bin/env bash
# Prints the kubeconfig Secret a regcred hub needs to write into a spoke
# cluster (docs/fleet.md). Run it against the spoke, after the chart was
# installed there with `--set spoke.enabled=true`; apply its output in the
# hub's namespace.
#
# It reads the long-lived token the spoke's token controller wrote into the
# chart's `kubernetes.io/service-account-token` Secret, the spoke's API
# server and CA, checks that the token authenticates as the chart's
# ServiceAccount, and prints one Secret in the format asked for:
# - capi: Cluster API's `<cluster>-kubeconfig` Secret (type
#   cluster.x-k8s.io/secret, label cluster.x-k8s.io/cluster-name, key
#   `value` holding a kubeconfig), as sigs.k8s.io/cluster-api
#   util/secret and the Cluster API book ("Accessing workload clusters")
#   describe it;
# - argocd: an Argo CD cluster Secret (label argocd.argoproj.io/secret-type:
#   cluster, keys name, server and config, a JSON document with bearerToken
#   and tlsClientConfig.caData), as Argo CD's "Declarative Setup" describes.
#
# The token goes to stdout only, inside the manifest: never to stderr, and
# never on a command line (other users could read it from the process list).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: hack/spoke-kubeconfig.sh --format capi|argocd --name CLUSTER [options] > secret.yaml

Run against a spoke cluster where the regcred chart is installed with
spoke.enabled=true. Prints a Secret manifest for the hub's namespace.

The hub's Secret:
  --format capi|argocd     capi: Secret <CLUSTER>-kubeconfig (Cluster API);
                           argocd: an Argo CD cluster Secret
  --name CLUSTER           the cluster's name, which credentials select it by
                           (lowercase letters, digits, '-' and '.'; 63 at most)
  --labels K=V[,K=V...]    extra labels on the Secret (credentials select by them)
  --namespace NS           the hub's namespace, set as metadata.namespace
                           (default: none; `kubectl apply -n NS` places it)
  --secret-name NAME       argocd only: the Secret's name (default cluster-<CLUSTER>)

The spoke:
  --kubeconfig PATH        kubeconfig to reach the spoke (default: kubectl's)
  --context NAME           its context (default: the current one)
  --spoke-namespace NS     the spoke chart's release namespace (default regcred-system)
  --service-account NAME   the chart's ServiceAccount there (default regcred)
  --token-secret NAME      its token Secret (default <service-account>-token)
  --server URL             the spoke's API server as the HUB reaches it
                           (default: the kubeconfig's server)
  --ca-file PATH           PEM CA bundle of that server (default: the kubeconfig's,
                           else the ca.crt the token controller wrote)
  --wait SECONDS           how long to wait for the token controller (default 30)
  --no-verify              do not check the token against the spoke (by default
                           `kubectl auth whoami` must name the ServiceAccount)
  -h, --help               this help

Environment: KUBECTL, the kubectl to run (default: kubectl on PATH).
The output holds a token that does not expire: keep it out of logs and version
control. Revoke it by deleting the token Secret in the spoke.
EOF
}

die() {
  echo "spoke-kubeconfig.sh: $*" >&2
  exit 1
}

format="" name="" labels="" hub_namespace="" secret_name=""
kubeconfig="" context="" spoke_namespace="regcred-system" service_account="regcred" token_secret=""
server="" ca_file="" wait_seconds=30 verify=true

need_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --format) need_value "$@"; format=$2; shift 2 ;;
    --name) need_value "$@"; name=$2; shift 2 ;;
    --labels) need_value "$@"; labels=$2; shift 2 ;;
    --namespace) need_value "$@"; hub_namespace=$2; shift 2 ;;
    --secret-name) need_value "$@"; secret_name=$2; shift 2 ;;
    --kubeconfig) need_value "$@"; kubeconfig=$2; shift 2 ;;
    --context) need_value "$@"; context=$2; shift 2 ;;
    --spoke-namespace) need_value "$@"; spoke_namespace=$2; shift 2 ;;
    --service-account) need_value "$@"; service_account=$2; shift 2 ;;
    --token-secret) need_value "$@"; token_secret=$2; shift 2 ;;
    --server) need_value "$@"; server=$2; shift 2 ;;
    --ca-file) need_value "$@"; ca_file=$2; shift 2 ;;
    --wait) need_value "$@"; wait_seconds=$2; shift 2 ;;
    --no-verify) verify=false; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# --- Checking the arguments ---------------------------------------------

dns_label='^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'
dns_subdomain='^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'
# Label names and values (apimachinery validation.IsQualifiedName and
# IsValidLabelValue).
label_name='^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$'
label_value='^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$'

case $format in
  capi | argocd) ;;
  "") usage >&2; die "--format is required (capi or argocd)" ;;
  *) die "--format must be capi or argocd, not '$format'" ;;
esac
[[ -n $name ]] || die "--name is required"
[[ ${#name} -le 63 && $name =~ $dns_subdomain ]] \
  || die "--name '$name': use lowercase letters, digits, '-' and '.' (63 at most)"
[[ -z $hub_namespace || ($hub_namespace =~ $dns_label && ${#hub_namespace} -le 63) ]] \
  || die "--namespace '$hub_namespace' is not a namespace name"
[[ $spoke_namespace =~ $dns_label && ${#spoke_namespace} -le 63 ]] \
  || die "--spoke-namespace '$spoke_namespace' is not a namespace name"
[[ $service_account =~ $dns_subdomain && ${#service_account} -le 253 ]] \
  || die "--service-account '$service_account' is not a ServiceAccount name"
token_secret=${token_secret:-$service_account-token}
[[ $token_secret =~ $dns_subdomain && ${#token_secret} -le 253 ]] \
  || die "--token-secret '$token_secret' is not a Secret name"
[[ $wait_seconds =~ ^[0-9]+$ ]] || die "--wait must be a number of seconds"
if [[ $format == capi ]]; then
  [[ -z $secret_name ]] || die "--secret-name is for argocd; a Cluster API kubeconfig Secret is always <cluster>-kubeconfig"
  secret_name=$name-kubeconfig
else
  secret_name=${secret_name:-cluster-$name}
fi
[[ $secret_name =~ $dns_subdomain && ${#secret_name} -le 253 ]] \
  || die "the Secret name '$secret_name' is not a valid name"

# The label that marks the Secret's format, and the extra ones.
if [[ $format == capi ]]; then
  marker_key=cluster.x-k8s.io/cluster-name marker_value=$name
else
  marker_key=argocd.argoproj.io/secret-type marker_value=cluster
fi
label_keys=("$marker_key") label_values=("$marker_value")
if [[ -n $labels ]]; then
  IFS=, read -r -a pairs <<<"$labels"
  for pair in "${pairs[@]}"; do
    [[ $pair == *=* ]] || die "--labels: '$pair' is not KEY=VALUE"
    key=${pair%%=*} value=${pair#*=}
    label_key_name=${key##*/}
    if [[ $key == */* ]]; then
      prefix=${key%/*}
      [[ $prefix =~ $dns_subdomain && ${#prefix} -le 253 ]] || die "--labels: '$key' has an invalid prefix"
    fi
    [[ $label_key_name =~ $label_name && ${#label_key_name} -le 63 ]] || die "--labels: '$key' is not a label name"
    [[ $value =~ $label_value && ${#value} -le 63 ]] || die "--labels: '$value' is not a label value"
    for existing in "${label_keys[@]}"; do
      [[ $existing != "$key" ]] || die "--labels: '$key' is given twice or is the format's own label"
    done
    label_keys+=("$key") label_values+=("$value")
  done
fi

# --- Reading the spoke ----------------------------------------------------

kubectl_cmd=("${KUBECTL:-kubectl}")
[[ -n $kubeconfig ]] && kubectl_cmd+=("--kubeconfig=$kubeconfig")
[[ -n $context ]] && kubectl_cmd+=("--context=$context")
command -v "${kubectl_cmd[0]}" >/dev/null || die "kubectl not found (set KUBECTL or put kubectl on PATH)"

# The spoke's cluster entry in the kubeconfig (files embedded by --flatten).
cluster_field() {
  "${kubectl_cmd[@]}" config view --minify --flatten --raw -o "jsonpath={.clusters[0].cluster.$1}" \
    || die "reading the kubeconfig's cluster failed (is --context right?)"
}
kubeconfig_server=$(cluster_field server)
kubeconfig_ca=$(cluster_field certificate-authority-data)
tls_server_name=$(cluster_field tls-server-name)
kubeconfig_insecure=$(cluster_field insecure-skip-tls-verify)
[[ -n $kubeconfig_server ]] || die "the kubeconfig names no server for this context"
server=${server:-$kubeconfig_server}
[[ $server =~ ^https://[^[:space:][:cntrl:]\"\\]+$ ]] || die "--server must be an https:// URL, not '$server'"

# The token Secret: the chart's, for the chart's ServiceAccount, filled by
# the token controller (which can take a moment after the install).
secret_field() {
  "${kubectl_cmd[@]}" --namespace "$spoke_namespace" get secret "$token_secret" -o "jsonpath={$1}"
}
secret_type=$(secret_field .type) \
  || die "cannot read Secret $spoke_namespace/$token_secret; was the chart installed there with spoke.enabled=true?"
[[ $secret_type == kubernetes.io/service-account-token ]] \
  || die "Secret $spoke_namespace/$token_secret is of type '$secret_type', not kubernetes.io/service-account-token"
owner=$(secret_field '.metadata.annotations.kubernetes\.io/service-account\.name') || die "reading the token Secret failed"
[[ $owner == "$service_account" ]] \
  || die "Secret $spoke_namespace/$token_secret is a token of ServiceAccount '$owner', not '$service_account'"
token_b64=""
deadline=$((SECONDS + wait_seconds))
while :; do
  token_b64=$(secret_field .data.token) || die "reading the token Secret failed"
  [[ -z $token_b64 && $SECONDS -lt $deadline ]] || break
  sleep 1
done
[[ -n $token_b64 ]] || die "Secret $spoke_namespace/$token_secret has no token after ${wait_seconds}s: \
is kube-controller-manager's token controller running (--service-account-private-key-file)?"
# Decoded through a pipe from a builtin: the token is never an argument.
token=$(printf '%s' "$token_b64" | base64 -d 2>/dev/null) || die "the token Secret's token is not base64"
unset token_b64
# A JWT (base64url parts and dots): nothing to escape in YAML or JSON.
[[ $token =~ ^[A-Za-z0-9_.-]+$ ]] || die "the token Secret's token is not a JWT"

b64() {
  printf '%s' "$1" | base64 | tr -d '\n'
}
if [[ -n $ca_file ]]; then
  [[ -r $ca_file ]] || die "--ca-file $ca_file cannot be read"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$ca_file" || die "--ca-file $ca_file holds no PEM certificate"
  ca_data=$(base64 <"$ca_file" | tr -d '\n')
elif [[ -n $kubeconfig_ca ]]; then
  ca_data=$kubeconfig_ca
else
  ca_data=$(secret_field '.data.ca\.crt') || die "reading the token Secret failed"
fi
[[ -n $ca_data ]] || die "no CA for the spoke's API server: the kubeconfig has none and the token Secret has no \
ca.crt; give --ca-file (the hub never skips TLS verification)"
[[ $ca_data =~ ^[A-Za-z0-9+/=]+$ ]] || die "the CA data is not base64"
[[ $tls_server_name =~ ^[^[:space:][:cntrl:]\"\\]*$ ]] || die "the kubeconfig's tls-server-name is not a host name"

# --- The kubeconfig ---------------------------------------------------------

# A YAML (and JSON) double-quoted string; the values were checked above to
# hold nothing but printable characters.
q() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# kubeconfig SERVER CA INSECURE: the hub's kubeconfig for this spoke.
kubeconfig_yaml() {
  printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: %s\n  cluster:\n    server: %s\n' "$(q "$name")" "$(q "$1")"
  if [[ -n $2 ]]; then
    printf '    certificate-authority-data: "%s"\n' "$2"
  fi
  if [[ $3 == true ]]; then
    printf '    insecure-skip-tls-verify: true\n'
  fi
  if [[ -n $tls_server_name ]]; then
    printf '    tls-server-name: %s\n' "$(q "$tls_server_name")"
  fi
  printf 'users:\n- name: regcred-hub\n  user:\n    token: "%s"\n' "$token"
  printf 'contexts:\n- name: %s\n  context:\n    cluster: %s\n    user: regcred-hub\n' "$(q "$name")" "$(q "$name")"
  printf 'current-context: %s\n' "$(q "$name")"
}

# The token must be the chart's ServiceAccount's, and work: asked through
# the kubeconfig's own server (reachable from here; --server need not be).
if [[ $verify == true ]]; then
  check=$(mktemp)
  trap 'rm -f "$check"' EXIT
  chmod 600 "$check"
  if [[ -n $kubeconfig_ca || $kubeconfig_insecure != true ]]; then
    kubeconfig_yaml "$kubeconfig_server" "${kubeconfig_ca:-$ca_data}" false >"$check"
  else
    kubeconfig_yaml "$kubeconfig_server" "" true >"$check"
  fi
  whoami=$("${KUBECTL:-kubectl}" --kubeconfig="$check" auth whoami -o 'jsonpath={.status.userInfo.username}') \
    || die "the token was refused by $kubeconfig_server (see kubectl's message above; --no-verify skips this check)"
  rm -f "$check"
  want=system:serviceaccount:$spoke_namespace:$service_account
  [[ $whoami == "$want" ]] || die "the token authenticates as '$whoami', not $want"
fi

# --- The Secret ---------------------------------------------------------------

{
  echo "# regcred fleet: cluster $name ($format format), by hack/spoke-kubeconfig.sh."
  echo "# Holds a token that does not expire; apply it in the hub's namespace."
  echo "apiVersion: v1"
  echo "kind: Secret"
  echo "metadata:"
  echo "  name: $(q "$secret_name")"
  [[ -z $hub_namespace ]] || echo "  namespace: $(q "$hub_namespace")"
  echo "  labels:"
  for i in "${!label_keys[@]}"; do
    echo "    $(q "${label_keys[$i]}"): $(q "${label_values[$i]}")"
  done
  if [[ $format == capi ]]; then
    echo "type: cluster.x-k8s.io/secret"
    echo "data:"
    echo "  value: $(b64 "$(kubeconfig_yaml "$server" "$ca_data" false)")"
  else
    config="{\"bearerToken\":\"$token\",\"tlsClientConfig\":{\"insecure\":false,\"caData\":\"$ca_data\""
    [[ -z $tls_server_name ]] || config+=",\"serverName\":$(q "$tls_server_name")"
    config+="}}"
    echo "type: Opaque"
    echo "data:"
    echo "  name: $(b64 "$name")"
    echo "  server: $(b64 "$server")"
    echo "  config: $(b64 "$config")"
  fi
}
