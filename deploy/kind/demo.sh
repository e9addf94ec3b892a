#!/usr/bin/env bash
# The tutorial "Installing Istio Sidecar", replayed with meshbox on a kind cluster.
#
# Creates a kind cluster (deploy/kind/cluster.yaml), builds meshbox's images with docker and
# loads them into the nodes, installs the control plane with `meshctl install`, deploys the
# tutorial's apps twice (namespace tutorial-kube-inject: `meshctl kube-inject` on the client;
# namespace tutorial-webhook: server-side injection by the admission webhook), replays the
# tutorial's commands with kubectl in both, and deletes the cluster at the end.
#
# Needs docker, kind and kubectl, and network access for gcr.io's echoserver:1.4 image.
# Environment: KIND_CLUSTER (default meshbox), KEEP_CLUSTER=1 to leave the cluster running,
# MESHCTL (default .venv/bin/meshctl), HUB/TAG of the images (default localhost/meshbox, dev).
# CI does not run this script (no docker or kind there); tests only shellcheck it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=${KIND_CLUSTER:-meshbox}
meshctl=${MESHCTL:-$repo/.venv/bin/meshctl}
hub=${HUB:-localhost/meshbox}
tag=${TAG:-dev}
context="kind-$cluster"
apps="$repo/deploy/kind/apps.yaml"

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }
kc() { kubectl --context "$context" "$@"; }

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "demo.sh: needs $tool on PATH" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "demo.sh: docker is installed but its daemon is not reachable" >&2; exit 1; }
[ -x "$meshctl" ] || { echo "demo.sh: $meshctl not found (run make venv, or set MESHCTL)" >&2; exit 1; }

cleanup() {
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "demo.sh: keeping cluster $cluster (kind delete cluster --name $cluster removes it)" >&2
  else
    say "kind delete cluster --name $cluster"
    kind delete cluster --name "$cluster" || true
  fi
}

run kind create cluster --name "$cluster" --config "$repo/deploy/kind/cluster.yaml" --wait 180s
trap cleanup EXIT

run "$repo/deploy/images/build.sh" --engine docker --hub "$hub" --tag "$tag"
for component in init proxy control-plane; do
  run kind load docker-image "$hub/$component:$tag" --name "$cluster"
done

run "$meshctl" install --hub "$hub" --tag "$tag" --context "$context"
run kubectl --context "$context" -n meshbox-system rollout status deployment/meshbox-discovery --timeout 180s
run kubectl --context "$context" -n meshbox-system rollout status deployment/meshbox-webhook --timeout 180s

# Client-side injection, as in the tutorial: kubectl apply -f <(meshctl kube-inject -f apps.yaml)
ns=tutorial-kube-inject
run kubectl --context "$context" create namespace "$ns"
say "kubectl apply -n $ns -f <($meshctl kube-inject -f apps.yaml --hub $hub --tag $tag)"
kc apply -n "$ns" -f <("$meshctl" kube-inject -f "$apps" --hub "$hub" --tag "$tag")

# Server-side injection: label the namespace, apply the plain manifest, the webhook injects.
ns=tutorial-webhook
run kubectl --context "$context" create namespace "$ns"
run kubectl --context "$context" label namespace "$ns" meshbox-injection=enabled
run kubectl --context "$context" apply -n "$ns" -f "$apps"

replay() {
  local ns=$1 client server response id
  run kubectl --context "$context" -n "$ns" rollout status deployment/service-one --timeout 300s
  run kubectl --context "$context" -n "$ns" rollout status deployment/service-two --timeout 300s
  client=$(kc -n "$ns" get pod -l app=service-one -o jsonpath='{.items[0].metadata.name}')
  server=$(kc -n "$ns" get pod -l app=service-two -o jsonpath='{.items[0].metadata.name}')
  say "kubectl get pod $client -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}'"
  kc -n "$ns" get pod "$client" -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}{"\n"}'

  say "kubectl exec $client -c app -- curl -s service-two:80 | grep x-request-id"
  response=$(kc -n "$ns" exec "$client" -c app -- curl -s service-two:80)
  id=$(printf '%s\n' "$response" | grep -o 'x-request-id=[0-9a-f-]*' | head -n1 | cut -d= -f2)
  [ -n "$id" ] || { echo "demo.sh: no x-request-id in the response from service-two:" >&2; echo "$response" >&2; return 1; }
  echo "x-request-id=$id"

  run kubectl --context "$context" -n "$ns" logs "$client" -c proxy --tail 200 | grep "$id"
  run kubectl --context "$context" -n "$ns" logs "$server" -c proxy --tail 200 | grep "$id"

  say "kubectl exec $server -c app -- curl -s localhost:8080 | grep x-request-id (not intercepted: none expected)"
  if kc -n "$ns" exec "$server" -c app -- curl -s localhost:8080 | grep x-request-id; then
    echo "demo.sh: localhost traffic went through the proxy" >&2
    return 1
  fi
}

replay tutorial-kube-inject
replay tutorial-webhook
echo
echo "demo.sh: the tutorial passed with client-side and server-side injection on kind"
